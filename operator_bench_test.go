package deferd

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
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
// listing first pages of /pending meanwhile (see ingestWhileListing). The
// messages are due from 10 min (DEFERD_BENCH_OPERATOR_AHEAD) to 10 min +
// 120 s ahead (200 B bodies, 10 topics). It prints a markdown table (and
// writes it to DEFERD_BENCH_OPERATOR_OUT if set).
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
	o.MaxPending = int64(n) + 120_000_000
	o.MaxPendingBytes = 1 << 40
	o.CompactInterval = 0
	o.DirectPublish = false
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(10 * time.Second)
	body := make([]byte, 200)
	ahead := 10 * time.Minute
	if v := os.Getenv("DEFERD_BENCH_OPERATOR_AHEAD"); v != "" {
		if ahead, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	base := time.Now().Add(ahead)
	publishN := func(base time.Time, total, workers, batch int, stop *atomic.Bool) (int, time.Duration) {
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
	got, d := publishN(base, n, 8, 100, nil)
	t.Logf("filled %d in %v (%.0f msg/s), due %v ahead", got, d, float64(got)/d.Seconds(), ahead)
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
	// The producers measured add after the 120 s listed, so every page
	// finds the same 12M layout.
	layout := settleCache(o.DataPath, nil) // the 12M listed stay cached
	out = append(out, ingestWhileListing(t, s, func() { settleCache(o.DataPath, layout) }, func(total, workers, batch int, stop *atomic.Bool) (int, time.Duration) {
		return publishN(base.Add(130*time.Second), total, workers, batch, stop)
	})...)
	text := fmt.Sprintf("pending: %d\n\n| what | median | max | note |\n| --- | --- | --- | --- |\n", s.Pending())
	for _, l := range out {
		text += l + "\n"
	}
	fmt.Println(text)
	if p := os.Getenv("DEFERD_BENCH_OPERATOR_OUT"); p != "" {
		os.WriteFile(p, []byte(text), 0o644)
	}
}

// publishFunc is TestOperatorAt12M's producers: total messages (or until
// stop) from workers goroutines in Publishes of batch; it returns how many
// and in what time.
type publishFunc func(total, workers, batch int, stop *atomic.Bool) (int, time.Duration)

// ingestWhileListing measures the publish rate of 8 producers for 1 s
// alone, and with one client listing first pages (limit 100) back to back,
// one every 100 ms and one every second; 3 rounds (DEFERD_BENCH_OPERATOR_ROUNDS),
// each case's rate as a ratio to the round's alone, after an uncounted
// warm-up phase alone. Each phase starts after settle (settleCache: no
// dirty pages, and the journal written by the phases before dropped from
// the page cache): the journal's writes then go to the page cache at
// memory speed (on this box, with the free memory used up they go at a
// fifth of it, whatever the listing does), so ingest is CPU-bound, the
// case where a listing costs it most. With
// DEFERD_BENCH_OPERATOR_PROF set to a directory it writes the CPU, mutex
// and block profiles of the first back-to-back phase there (or of
// DEFERD_BENCH_OPERATOR_PROF_AT, "round/case").
func ingestWhileListing(t *testing.T, s *Scheduler, settle func(), publishN publishFunc) (out []string) {
	rounds := 3
	if v := os.Getenv("DEFERD_BENCH_OPERATOR_ROUNDS"); v != "" {
		fmt.Sscan(v, &rounds)
	}
	prof, profAt := os.Getenv("DEFERD_BENCH_OPERATOR_PROF"), "1/1"
	if v := os.Getenv("DEFERD_BENCH_OPERATOR_PROF_AT"); v != "" {
		profAt = v // round/case, case 0 alone, 1 back to back, 2 100 ms, 3 1 s
	}
	cases := []struct {
		name  string
		every time.Duration // -1: no lister; 0: back to back
	}{{"alone", -1}, {"back to back", 0}, {"1 page / 100 ms", 100 * time.Millisecond}, {"1 page / 1 s", time.Second}}
	type result struct {
		ratios []float64
		rates  []float64
		pages  []time.Duration
		n      []int
	}
	res := make([]result, len(cases))
	// The first GB the journal writes go to the page cache at 4-7M msg/s,
	// the rest at about 1.3M (its writer's pwrite, on this box): a phase
	// alone first, uncounted, so every phase measured runs after it.
	warm, _ := ingestRate(s, settle, publishN, -1)
	t.Logf("warm-up alone: %.0f msg/s", warm)
	for r := range rounds {
		var alone float64
		for ci, c := range cases {
			var stopProf func()
			if prof != "" && fmt.Sprintf("%d/%d", r+1, ci) == profAt {
				stopProf = startProfiles(t, prof)
			}
			rate, pages := ingestRate(s, settle, publishN, c.every)
			if stopProf != nil {
				stopProf()
			}
			if c.every < 0 {
				alone = rate
			}
			res[ci].rates = append(res[ci].rates, rate)
			res[ci].ratios = append(res[ci].ratios, rate/alone)
			res[ci].pages = append(res[ci].pages, pages...)
			res[ci].n = append(res[ci].n, len(pages))
			t.Logf("round %d %s: %.0f msg/s (%.2fx), %d pages", r+1, c.name, rate, rate/alone, len(pages))
		}
	}
	for ci, c := range cases {
		rs := res[ci]
		lat := ""
		if len(rs.pages) > 0 {
			slices.Sort(rs.pages)
			lat = fmt.Sprintf("page median %v, p99 %v, max %v; pages per 1 s %v", rs.pages[len(rs.pages)/2].Round(10*time.Microsecond),
				rs.pages[len(rs.pages)*99/100].Round(10*time.Microsecond), rs.pages[len(rs.pages)-1].Round(10*time.Microsecond), rs.n)
		}
		out = append(out, fmt.Sprintf("| ingest, 8 producers x Publish of 100, %s | %.0f-%.0f msg/s | %s | %s |", c.name,
			slices.Min(rs.rates), slices.Max(rs.rates), fmtRatios(rs.ratios), lat))
	}
	return out
}

func fmtRatios(rs []float64) string {
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%.2fx", r)
	}
	return s
}

// ingestRate is the publish rate of 8 producers over 1 s, with a client
// listing first pages every every (back to back if 0; none if < 0), and
// the latency of each of its pages.
func ingestRate(s *Scheduler, settle func(), publishN publishFunc, every time.Duration) (float64, []time.Duration) {
	settle()
	var stop atomic.Bool
	var pages []time.Duration
	var wg sync.WaitGroup
	if every >= 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next := time.Now(); !stop.Load(); {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
					continue
				}
				st := time.Now()
				s.ListPending(PendingQuery{Limit: 100})
				pages = append(pages, time.Since(st))
				next = st.Add(every)
			}
		}()
	}
	go func() { time.Sleep(time.Second); stop.Store(true) }()
	got, d := publishN(0, 8, 100, &stop)
	wg.Wait()
	return float64(got) / d.Seconds(), pages
}

// startProfiles starts a CPU profile and mutex and block profiling (every
// event) into dir; the func it returns writes them and turns them off.
func startProfiles(t *testing.T, dir string) func() {
	cpu, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	pprof.StartCPUProfile(cpu)
	runtime.SetMutexProfileFraction(1)
	runtime.SetBlockProfileRate(1)
	return func() {
		pprof.StopCPUProfile()
		cpu.Close()
		for _, name := range []string{"mutex", "block"} {
			f, err := os.Create(filepath.Join(dir, name+".pprof"))
			if err != nil {
				t.Fatal(err)
			}
			pprof.Lookup(name).WriteTo(f, 0)
			f.Close()
		}
		runtime.SetMutexProfileFraction(0)
		runtime.SetBlockProfileRate(0)
	}
}
