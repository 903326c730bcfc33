package wheel

import (
	"cmp"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"
)

// scanAll is what Scan(from) passes, in order.
func scanAll(w *Wheel[int64], from int64) (dues, vs []int64) {
	w.Scan(from, func(due int64, v int64) bool {
		dues = append(dues, due)
		vs = append(vs, v)
		return true
	})
	return dues, vs
}

// TestScanModel checks Scan against a model under random adds (due from
// the past to beyond the top level), cancels and polls: it passes exactly
// the pending entries due at or after from, in due order, each with its
// Item.Due.
func TestScanModel(t *testing.T) {
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 7))
		c := &fakeClock{}
		w := New[int64](Options{Clock: c, Tick: time.Millisecond})
		type ent struct {
			h   Handle
			due int64 // tick time
		}
		live := map[int64]ent{}
		next := int64(0)
		spans := []int64{10, 1 << 10, 1 << 16, 1 << 22, 1 << 30, 1 << 40, 1 << 43}
		for step := range 400 {
			switch k := rng.IntN(10); {
			case k < 6:
				span := spans[rng.IntN(len(spans))]
				due := c.Now() + rng.Int64N(span*int64(time.Millisecond)) - int64(5*time.Millisecond)
				h := w.Add(due, next)
				tick := (max(due, 0) + int64(time.Millisecond) - 1) / int64(time.Millisecond) * int64(time.Millisecond)
				live[next] = ent{h, tick}
				next++
			case k < 7:
				for v, e := range live {
					if w.Cancel(e.h) {
						delete(live, v)
					}
					break
				}
			default:
				c.ns.Add(rng.Int64N(int64(50 * time.Millisecond)))
				if rng.IntN(3) == 0 {
					continue // time passes without a Poll: due entries stay
				}
				w.Poll(c.Now(), func(b *Batch[int64]) {
					for _, it := range b.Items {
						delete(live, it.Value)
					}
					b.Release()
				})
			}
			from := int64(0)
			if rng.IntN(2) == 0 {
				from = c.Now() + rng.Int64N(int64(time.Hour))
			}
			dues, vs := scanAll(w, from)
			var want []int64
			for v, e := range live {
				if e.due >= from {
					want = append(want, v)
				}
			}
			if len(vs) != len(want) {
				t.Fatalf("seed %d step %d: Scan(%d) passed %d entries, want %d", seed, step, from, len(vs), len(want))
			}
			for i, v := range vs {
				e, ok := live[v]
				if !ok {
					t.Fatalf("seed %d step %d: Scan passed %d, not pending", seed, step, v)
				}
				if dues[i] != e.due {
					t.Fatalf("seed %d step %d: Scan passed %d due %d, Item.Due would be %d", seed, step, v, dues[i], e.due)
				}
				if i > 0 && dues[i] < dues[i-1] {
					t.Fatalf("seed %d step %d: Scan out of order: %d after %d", seed, step, dues[i], dues[i-1])
				}
			}
			if !slices.Equal(sorted(vs), sorted(want)) {
				t.Fatalf("seed %d step %d: Scan passed another set", seed, step)
			}
		}
	}
}

func sorted(v []int64) []int64 {
	v = slices.Clone(v)
	slices.SortFunc(v, cmp.Compare)
	return v
}

// TestScanStops checks that fn's false ends the scan at once.
func TestScanStops(t *testing.T) {
	w := New[int64](Options{Clock: &fakeClock{}})
	for i := range 1000 {
		w.Add(int64(i)*int64(time.Second), int64(i))
	}
	var got []int64
	w.Scan(0, func(_ int64, v int64) bool {
		got = append(got, v)
		return len(got) < 10
	})
	if !slices.Equal(got, []int64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}) {
		t.Fatalf("got %v", got)
	}
}

// TestScanConcurrent runs Scan beside Adds, Cancels and a Poll driver
// (with -race): entries that stay pending throughout come once each, in
// order.
func TestScanConcurrent(t *testing.T) {
	w := New[int64](Options{})
	far := w.Now() + int64(time.Hour)
	const n = 20000 // several coarse slots of more than scanChunk entries
	for i := range n {
		w.Add(far+int64(i)*int64(time.Millisecond), int64(i))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			d := time.Duration(i%50) * time.Millisecond
			if i%2 == 0 {
				d += time.Hour + time.Duration(i%20000)*time.Millisecond // into the crowded slots
			}
			h := w.AddAfter(d, -1)
			if i%3 == 0 || i > 200_000 {
				w.Cancel(h) // keep the wheel from growing without end
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			w.Poll(w.Now(), func(b *Batch[int64]) { b.Release() })
			time.Sleep(100 * time.Microsecond)
		}
	}()
	for range 20 {
		var got []int64
		last := int64(-1 << 63)
		w.Scan(0, func(due int64, v int64) bool {
			if due < last {
				t.Errorf("out of order")
			}
			last = due
			if v >= 0 {
				got = append(got, v)
			}
			return true
		})
		if len(got) != n || !slices.IsSorted(got) {
			t.Fatalf("got %d long-pending entries (sorted %v), want %d", len(got), slices.IsSorted(got), n)
		}
	}
	close(stop)
	wg.Wait()
}

func TestGetAndSample(t *testing.T) {
	w := New[int64](Options{Clock: &fakeClock{}})
	var hs []Handle
	for i := range 100 {
		hs = append(hs, w.Add(int64(i+1)*int64(time.Second), int64(i)))
	}
	if v, ok := w.Get(hs[7]); !ok || v != 7 {
		t.Fatalf("Get: %v %v", v, ok)
	}
	w.Cancel(hs[7])
	if _, ok := w.Get(hs[7]); ok {
		t.Fatal("Get of a cancelled entry")
	}
	if _, ok := w.Get(0); ok {
		t.Fatal("Get(0)")
	}
	n := 0
	w.Sample(1000, rand.Uint64, func(int64) { n++ })
	if n != 99 {
		t.Fatalf("Sample(n >= Len) visited %d, want 99", n)
	}
	seen := map[int64]bool{}
	w.Sample(20, rand.Uint64, func(v int64) { seen[v] = true })
	if len(seen) == 0 || len(seen) > 20 || seen[7] {
		t.Fatalf("Sample(20): %v", seen)
	}
}

// TestScanCrowdedSlot checks that a scan of a crowded coarse slot stops
// early: a page of 100 from 200k entries in one level-3 slot (due 600 s to
// 720 s ahead at 1 ms) looks at the entries of the first 64th of the slot
// it reaches (4096 ticks, about 6.8k entries here) at most twice, not at
// the slot's 200k, and passes the earliest 100 in order, from the slot's
// start and from a time within it.
func TestScanCrowdedSlot(t *testing.T) {
	const n = 200_000
	w := New[int64](Options{Clock: &fakeClock{}})
	due := func(i int) int64 { return int64(600*time.Second) + int64(i)*int64(120*time.Second)/n }
	for i := range n {
		w.Add(due(i), int64(i))
	}
	for _, first := range []int{0, n / 2} {
		before := w.scanVisits()
		var got, dues []int64
		w.Scan(due(first), func(d int64, v int64) bool {
			got, dues = append(got, v), append(dues, d)
			return len(got) < 100
		})
		visits := w.scanVisits() - before
		if len(got) != 100 {
			t.Fatalf("from entry %d: passed %d, want 100", first, len(got))
		}
		// Entry i is due in tick ceil(due(i)/1ms): entries just before
		// first may share first's tick.
		for i, v := range got {
			if dues[i] < due(first) || i > 0 && dues[i] < dues[i-1] || v < int64(first-2) || v > int64(first+200) {
				t.Fatalf("from entry %d: passed %d (due %d) at %d: not among the earliest, in order", first, v, dues[i], i)
			}
		}
		if perSub := 4096 * n / 120_000; visits > uint64(2*perSub+100) {
			t.Fatalf("from entry %d: Scan looked at %d entries for a page of 100; the first 64th of the slot holds about %d", first, visits, perSub)
		}
	}
}

// BenchmarkScanFirst100 is a page of 100 from the start of a wheel of
// DEFERD_BENCH_SCAN entries (default 1M) spread over 120 s: from now on
// (layout=ref, the reference load's: levels 0 to 2) and from 10 min ahead
// on (layout=crowded, all in one 4.4-minute level-3 slot).
func BenchmarkScanFirst100(b *testing.B) {
	n := 1 << 20
	if os.Getenv("DEFERD_BENCH_SCAN") != "" {
		n = 12_000_000
	}
	for _, layout := range []struct {
		name string
		at   int64
	}{{"ref", 0}, {"crowded", int64(600 * time.Second)}} {
		b.Run("layout="+layout.name, func(b *testing.B) {
			w := New[uint64](Options{Clock: &fakeClock{}})
			for i := range n {
				w.Add(layout.at+int64(i)*int64(120*time.Second)/int64(n), uint64(i))
			}
			b.ResetTimer()
			for range b.N {
				k := 0
				w.Scan(layout.at+int64(b.N%1000)*int64(time.Millisecond), func(int64, uint64) bool { k++; return k < 100 })
			}
		})
	}
}
