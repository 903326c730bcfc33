package deferd

import (
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// BenchmarkPendingMemory holds the reference load's pending set, N
// messages of 500 B due an hour ahead (default 12M: 100k msg/s with a 120 s
// delay), and reports Go heap per pending message, GC pause percentiles
// while filling, and then the journal recovery time for all of them on a
// restart. It needs ~7 GB of disk for 12M, so it runs only with
// DEFERD_BENCH_PENDING=N set:
//
//	DEFERD_BENCH_PENDING=12000000 go test -run XXX -bench PendingMemory -benchtime 1x -timeout 30m ./internal/engine/
func BenchmarkPendingMemory(b *testing.B) {
	n, _ := strconv.Atoi(os.Getenv("DEFERD_BENCH_PENDING"))
	if n <= 0 {
		b.Skip("set DEFERD_BENCH_PENDING=N (e.g. 12000000) to run")
	}
	node := nsqdnodetest.Start(b, nsqdnode.Config{})
	dir := b.TempDir()
	o := NewOptions()
	o.DataPath, o.NSQDTCPAddresses = dir, []string{node.TCPAddr}
	o.Logf = b.Logf
	e, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), benchBody)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	pausesBefore := gcPauses()

	start := time.Now()
	const perReq, workers = 100, 4
	var wg sync.WaitGroup
	due := time.Now().Add(time.Hour).UnixMilli()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			bodies := make([][]byte, perReq)
			for i := range bodies {
				bodies[i] = body
			}
			req := &ingest.PubRequest{Topic: "ref", Bodies: bodies, Due: due}
			for i := w * perReq; i < n; i += workers * perReq {
				if err := pubReq(e, req); err != nil {
					b.Error(err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	fill := time.Since(start)
	pending := e.Pending()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	p50, p99, pmax := pauseQuantiles(pausesBefore, gcPauses())
	heap := float64(after.HeapInuse) - float64(before.HeapInuse)
	b.ReportMetric(float64(pending), "pending")
	b.ReportMetric(float64(pending)/fill.Seconds(), "fill-msg/s")
	b.ReportMetric(heap/float64(pending), "heap-B/msg")
	b.ReportMetric(float64(after.HeapInuse)/(1<<20), "heap-MiB")
	b.ReportMetric(float64(after.Sys)/(1<<20), "sys-MiB")
	b.ReportMetric(p50*1e3, "gc-pause-p50-ms")
	b.ReportMetric(p99*1e3, "gc-pause-p99-ms")
	b.ReportMetric(pmax*1e3, "gc-pause-max-ms")
	b.ReportMetric(float64(after.NumGC-before.NumGC), "gcs")

	if err := e.Close(10 * time.Second); err != nil {
		b.Fatal(err)
	}
	e = nil
	runtime.GC()
	debug.FreeOSMemory()
	e2, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	r := e2.Recovery()
	b.ReportMetric(r.Duration.Seconds(), "recovery-s")
	b.ReportMetric(float64(r.Records)/r.Duration.Seconds(), "recovery-rec/s")
	if int64(r.Live) != pending {
		b.Errorf("recovered %d live, want %d", r.Live, pending)
	}
	e2.Close(10 * time.Second)
}

// gcPauses reads the runtime's stop-the-world GC pause histogram.
func gcPauses() *metrics.Float64Histogram {
	s := []metrics.Sample{{Name: "/sched/pauses/total/gc:seconds"}}
	metrics.Read(s)
	return s[0].Value.Float64Histogram()
}

// pauseQuantiles returns p50, p99 and max of the pauses between two
// histogram snapshots (bucket upper bounds).
func pauseQuantiles(a, b *metrics.Float64Histogram) (p50, p99, max float64) {
	counts := make([]uint64, len(b.Counts))
	var total uint64
	for i := range b.Counts {
		counts[i] = b.Counts[i] - a.Counts[i]
		total += counts[i]
	}
	if total == 0 {
		return
	}
	q := func(f float64) float64 {
		want := uint64(f*float64(total) + 0.5)
		if want < 1 {
			want = 1
		}
		var seen uint64
		for i, c := range counts {
			seen += c
			if seen >= want {
				return b.Buckets[i+1]
			}
		}
		return b.Buckets[len(b.Buckets)-1]
	}
	return q(0.5), q(0.99), q(1)
}

// A publish repeating a pending id answers OK and schedules nothing, even
// when deferd is full (it got 503 OVER_CAPACITY: the capacity check came
// before the id's).
func TestPendingIDAtCapacity(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.MaxPending = 1
	h := startHarness(t, o)
	h.mustPost("/pub?topic=dc&defer=60000&id=order-1", []byte("first"))
	h.mustPost("/pub?topic=dc&defer=60000&id=order-1", []byte("first"))
	if code, body := h.post("/pub?topic=dc&defer=60000&id=order-2", []byte("second")); code != 503 {
		t.Fatalf("a new id at capacity: %d %s, want 503", code, body)
	}
	if s := h.stats(); s.Pending != 1 {
		t.Fatalf("pending %d, want 1", s.Pending)
	}
}
