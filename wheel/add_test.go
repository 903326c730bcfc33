package wheel

import (
	"math"
	"sync/atomic"
	"testing"
	"time"
)

// pausingClock is the real monotonic clock, except that while pause is set
// each Now sleeps p before and after its reading: a pause between the
// reads of any conversion that reads this clock and the wall clock.
type pausingClock struct {
	base  time.Time
	p     time.Duration
	pause atomic.Bool
}

func (c *pausingClock) Now() int64 {
	if !c.pause.Load() {
		return int64(time.Since(c.base))
	}
	time.Sleep(c.p)
	now := int64(time.Since(c.base))
	time.Sleep(c.p)
	return now
}

// TestAddAtNeverEarly: an entry added with AddAt is handed out only once
// time.Now() has reached its time, even with a pause between AddAt's reads
// of the wall clock and the wheel clock, on a Wheel and on a Sharded wheel.
func TestAddAtNeverEarly(t *testing.T) {
	type adder interface {
		AddAt(t time.Time, v int) Handle
		Now() int64
		Poll(now int64, fn func(*Batch[int]))
	}
	for _, sharded := range []bool{false, true} {
		c := &pausingClock{base: time.Now(), p: 20 * time.Millisecond}
		var w adder = New[int](Options{Clock: c})
		if sharded {
			w = NewSharded[int](Options{Clock: c}, 2)
		}
		var ats []time.Time
		for i, d := range []time.Duration{0, time.Millisecond, 150 * time.Millisecond, 250 * time.Millisecond} {
			at := time.Now().Add(d)
			ats = append(ats, at, at.Round(0)) // with and without a monotonic reading
			c.pause.Store(i%2 == 1)
			w.AddAt(at, 2*i)
			w.AddAt(at.Round(0), 2*i+1)
			c.pause.Store(false)
		}
		deadline := time.Now().Add(5 * time.Second)
		for got := 0; got < len(ats); {
			w.Poll(w.Now(), func(b *Batch[int]) {
				now := time.Now()
				for _, it := range b.Items {
					if at := ats[it.Value]; now.Before(at) {
						t.Errorf("sharded=%v: entry %d handed out %v early", sharded, it.Value, at.Sub(now))
					}
					got++
				}
				b.Release()
			})
			if time.Now().After(deadline) {
				t.Fatalf("sharded=%v: %d of %d handed out after 5 s", sharded, got, len(ats))
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// TestAddAtSaturates: a time.Time beyond the wheel clock's range (and one
// beyond time.Duration's) saturates at math.MaxInt64 instead of wrapping
// into the past; a time in the past is due at once.
func TestAddAtSaturates(t *testing.T) {
	c := &fakeClock{}
	c.ns.Store(math.MaxInt64 - int64(10*time.Second))
	for _, at := range []time.Time{
		time.Now().Add(time.Minute),
		time.Now().Add(100 * 365 * 24 * time.Hour),
		time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
	} {
		w := New[int](Options{Clock: c})
		sw := NewSharded[int](Options{Clock: c}, 2)
		hw, hs := w.AddAt(at, 1), sw.AddAt(at, 1)
		poll := func(p interface {
			Poll(int64, func(*Batch[int]))
		}, h Handle, now int64) int {
			n := 0
			p.Poll(now, func(b *Batch[int]) {
				for _, it := range b.Items {
					if it.Handle != h || it.Due != math.MaxInt64 {
						t.Fatalf("AddAt(%v): got %+v, want handle %#x due MaxInt64", at, it, h)
					}
					n++
				}
				b.Release()
			})
			return n
		}
		if poll(w, hw, c.Now()) != 0 || poll(sw, hs, c.Now()) != 0 {
			t.Fatalf("AddAt(%v) wrapped: handed out at once", at)
		}
		if poll(w, hw, math.MaxInt64) != 1 || poll(sw, hs, math.MaxInt64) != 1 {
			t.Fatalf("AddAt(%v) not handed out at math.MaxInt64", at)
		}
	}

	c.ns.Store(0)
	w := New[int](Options{Clock: c})
	sw := NewSharded[int](Options{Clock: c}, 2)
	for _, at := range []time.Time{time.Now().Add(-time.Hour), time.Now().Round(0).Add(-time.Second), {}} {
		w.AddAt(at, 1)
		sw.AddAt(at, 1)
	}
	n := 0
	count := func(b *Batch[int]) { n += len(b.Items); b.Release() }
	w.Poll(c.Now(), count)
	sw.Poll(c.Now(), count)
	if n != 6 || w.Len() != 0 || sw.Len() != 0 {
		t.Fatalf("past times: %d of 6 handed out at once", n)
	}
}

func TestCancelStale(t *testing.T) {
	c := &fakeClock{}
	w := New[int](Options{Clock: c})
	if w.Cancel(0) {
		t.Fatal("Cancel(0) = true")
	}
	h := w.Add(int64(time.Second), 1)
	if !w.Cancel(h) {
		t.Fatal("Cancel of a pending entry = false")
	}
	if w.Cancel(h) {
		t.Fatal("second Cancel = true")
	}
	h2 := w.Add(int64(time.Second), 2) // reuses the slot with a new generation
	if uint32(h2) != uint32(h) || h2 == h {
		t.Fatalf("expected slot reuse with a new generation: %#x vs %#x", h2, h)
	}
	if w.Cancel(h) {
		t.Fatal("stale handle cancelled a newer entry")
	}
	var got []Item[int]
	w.Poll(int64(time.Second), func(b *Batch[int]) { got = append(got, b.Items...); b.Release() })
	if len(got) != 1 || got[0].Handle != h2 || got[0].Value != 2 {
		t.Fatalf("got %+v", got)
	}
	if w.Cancel(h2) {
		t.Fatal("Cancel after firing = true")
	}
	if w.Cancel(Handle(1<<40 | 12345)) {
		t.Fatal("Cancel of an index never used = true")
	}
}

func TestAddAfterClamps(t *testing.T) {
	c := &fakeClock{}
	c.ns.Store(math.MaxInt64 - int64(10*time.Second))
	w := New[int](Options{Clock: c})
	h := w.AddAfter(time.Duration(math.MaxInt64), 1)
	n := 0
	w.Poll(math.MaxInt64, func(b *Batch[int]) {
		for _, it := range b.Items {
			if it.Due != math.MaxInt64 || it.Handle != h {
				t.Fatalf("got %+v", it)
			}
			n++
		}
		b.Release()
	})
	if n != 1 {
		t.Fatalf("clamped entry fired %d times", n)
	}
}

func TestAddCancelZeroAlloc(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates: allocations are counted without -race")
	}
	w := New[uint64](Options{Clock: &fakeClock{}})
	// Steady state: the slab already holds enough entries.
	hs := make([]Handle, 1000)
	for i := range hs {
		hs[i] = w.Add(int64(i)*int64(time.Second), uint64(i))
	}
	i := 0
	allocs := testing.AllocsPerRun(10000, func() {
		h := w.Add(int64(i%5000)*int64(time.Minute), uint64(i))
		if !w.Cancel(h) {
			t.Fatal("Cancel = false")
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("Add+Cancel: %v allocs/op, want 0", allocs)
	}
	vals := make([]uint64, 100)
	bhs := make([]Handle, 100)
	allocs = testing.AllocsPerRun(1000, func() {
		w.AddBatch(int64(i%5000)*int64(time.Minute), vals, bhs)
		for _, h := range bhs {
			if !w.Cancel(h) {
				t.Fatal("Cancel after AddBatch = false")
			}
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("AddBatch+Cancel: %v allocs/op, want 0", allocs)
	}
	// Expiry with recycled batches does not allocate per entry either.
	c := w.clock.(*fakeClock)
	now := int64(0)
	allocs = testing.AllocsPerRun(1000, func() {
		for j := range 10 {
			w.Add(now+int64(j)*int64(time.Millisecond), 1)
		}
		now += int64(10 * time.Millisecond)
		c.ns.Store(now)
		w.Poll(now, releaseBatch)
	})
	if allocs > 1 {
		t.Fatalf("Add+Poll: %v allocs per 10 entries", allocs)
	}
}

func releaseBatch(b *Batch[uint64]) { b.Release() }
