package deferd

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestOperatorAt12M measures the operator API with 12M messages pending
// (opt-in: DEFERD_BENCH_OPERATOR=1; DEFERD_BENCH_OPERATOR_N overrides the
// count): ListPending pages (first, topic-filtered, deep cursor), Lookup,
// Due, and the publish rate of 8 producers with and without a client
// paging through /pending meanwhile. The messages are due from 10 min to
// 10 min + 120 s ahead (200 B bodies, 10 topics). It prints a markdown
// table (and writes it to DEFERD_BENCH_OPERATOR_OUT if set).
func TestOperatorAt12M(t *testing.T) {
	if os.Getenv("DEFERD_BENCH_OPERATOR") == "" {
		t.Skip("DEFERD_BENCH_OPERATOR=1 to run (12M messages, minutes, ~3 GB of journal)")
	}
	n := 12_000_000
	if v := os.Getenv("DEFERD_BENCH_OPERATOR_N"); v != "" {
		fmt.Sscan(v, &n)
	}
	o := NewOptions()
	o.DataPath = t.TempDir()
	o.Sink = SinkFunc(func(_ string, b [][]byte) (int, error) { return len(b), nil })
	o.Logf = func(string, ...any) {}
	o.Fsync = "never"
	o.MaxPending = int64(n) + 60_000_000
	o.MaxPendingBytes = 1 << 40
	o.CompactInterval = 0
	o.DirectPublish = false
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(10 * time.Second)
	body := make([]byte, 200)
	base := time.Now().Add(10 * time.Minute)
	publishN := func(total, workers, batch int, stop *atomic.Bool) (int, time.Duration) {
		var done atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				bodies := make([][]byte, batch)
				for i := range bodies {
					bodies[i] = body
				}
				for i := w; ; i += workers {
					if stop != nil && stop.Load() || stop == nil && int(done.Load()) >= total {
						return
					}
					at := base.Add(time.Duration(i%120_000) * time.Millisecond)
					if err := s.Publish(Pub{Topic: fmt.Sprintf("topic%d", i%10), Bodies: bodies, At: at}); err != nil {
						t.Error(err)
						return
					}
					done.Add(int64(batch))
				}
			}()
		}
		wg.Wait()
		return int(done.Load()), time.Since(start)
	}
	got, d := publishN(n, 8, 100, nil)
	t.Logf("filled %d in %v (%.0f msg/s)", got, d, float64(got)/d.Seconds())
	var out []string
	row := func(what string, ds []time.Duration, note string) {
		slices.Sort(ds)
		line := fmt.Sprintf("| %s | %v | %v | %s |", what, ds[len(ds)/2], ds[len(ds)-1], note)
		out = append(out, line)
		t.Log(line)
	}
	timeIt := func(k int, f func()) []time.Duration {
		var ds []time.Duration
		for range k {
			st := time.Now()
			f()
			ds = append(ds, time.Since(st))
		}
		return ds
	}
	var page PendingPage
	row("ListPending first page, limit 100", timeIt(20, func() { page, _ = s.ListPending(PendingQuery{Limit: 100}) }), fmt.Sprintf("%d returned", len(page.Messages)))
	row("ListPending first page, limit 1000", timeIt(20, func() { page, _ = s.ListPending(PendingQuery{Limit: 1000}) }), fmt.Sprintf("%d returned", len(page.Messages)))
	row("ListPending topic=topic3, limit 100", timeIt(20, func() { page, _ = s.ListPending(PendingQuery{Topic: "topic3", Limit: 100}) }), fmt.Sprintf("%d returned (1 in 10 topics)", len(page.Messages)))
	// A cursor deep into the listing: walk 50 pages of 1000 first.
	cur := ""
	for range 50 {
		p, _ := s.ListPending(PendingQuery{Limit: 1000, Cursor: cur})
		cur = p.Cursor
	}
	row("ListPending limit 100 after 50k listed", timeIt(20, func() { page, _ = s.ListPending(PendingQuery{Limit: 100, Cursor: cur}) }), "")
	key, _ := ParseKey(page.Messages[0].Key)
	li, err := s.Lookup(Ref{Key: key}, false)
	if err != nil || li.State != StatePending || li.Size != len(body) {
		t.Fatalf("lookup %+v %v", li, err)
	}
	row("Lookup by key", timeIt(1000, func() { s.Lookup(Ref{Key: key}, false) }), "one record read")
	row("Lookup by key with body", timeIt(1000, func() { s.Lookup(Ref{Key: key}, true) }), "")
	row("Due() (computed, not cached)", timeIt(10, func() { s.op.mu.Lock(); s.op.at = time.Time{}; s.op.mu.Unlock(); s.Due() }), "4096 sampled")
	// Ingest with and without a client paging through /pending.
	rate := func(list bool) float64 {
		var stop atomic.Bool
		var lists atomic.Int64
		var wg sync.WaitGroup
		if list {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					s.ListPending(PendingQuery{Limit: 100})
					lists.Add(1)
				}
			}()
		}
		go func() { time.Sleep(3 * time.Second); stop.Store(true) }()
		got, d := publishN(0, 8, 100, &stop)
		wg.Wait()
		if list {
			out = append(out, fmt.Sprintf("| (listing client: %d first pages in %v) | | | |", lists.Load(), d.Round(time.Millisecond)))
		}
		return float64(got) / d.Seconds()
	}
	r0 := rate(false)
	r1 := rate(true)
	out = append(out, fmt.Sprintf("| publish rate, 8 producers x /mpub of 100 (Publish), alone | %.0f msg/s | | |", r0))
	out = append(out, fmt.Sprintf("| publish rate, same, with a client listing first pages back to back | %.0f msg/s | | %.2fx |", r1, r1/r0))
	t.Logf("ingest alone %.0f msg/s, with listing %.0f msg/s (%.2fx)", r0, r1, r1/r0)
	text := fmt.Sprintf("pending: %d\n\n| what | median | max | note |\n| --- | --- | --- | --- |\n", s.Pending())
	for _, l := range out {
		text += l + "\n"
	}
	fmt.Println(text)
	if p := os.Getenv("DEFERD_BENCH_OPERATOR_OUT"); p != "" {
		os.WriteFile(p, []byte(text), 0o644)
	}
}
