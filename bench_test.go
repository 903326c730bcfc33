package deferd

import (
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/valyala/fasthttp"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// Service benchmarks (issue 3). Each reports msg/s with b.ReportMetric;
// compare the ones measured side by side in one run. Run:
//
//	go test -run XXX -bench 'Service' -benchtime 200000x .

const benchBody = 500

// benchLines is an /mpub text body of n lines of benchBody bytes.
func benchLines(n int) []byte {
	line := bytes.Repeat([]byte("x"), benchBody)
	lines := make([][]byte, n)
	for i := range lines {
		lines[i] = line
	}
	return bytes.Join(lines, []byte("\n"))
}

func benchHarness(b *testing.B, o Options) *harness {
	b.Helper()
	if n, _ := strconv.Atoi(os.Getenv("DEFERD_BENCH_POOL")); n > 0 {
		o.PoolSize = n
	}
	if n, _ := strconv.Atoi(os.Getenv("DEFERD_BENCH_BATCH")); n > 0 {
		o.BatchSize = n
	}
	if n, _ := strconv.Atoi(os.Getenv("DEFERD_BENCH_CONNS")); n > 0 {
		o.ConnsPerNSQD = n
	}
	h := startHarness(b, o)
	h.e.logf = func(string, ...any) {}
	return h
}

// hammer sends requests from conc goroutines until total messages went in;
// each request carries perReq messages. It returns the elapsed time.
func hammer(b *testing.B, addr, path string, body []byte, perReq, total, conc int) time.Duration {
	b.Helper()
	c := &fasthttp.HostClient{Addr: addr, MaxConns: conc}
	var left atomic.Int64
	left.Store(int64(total))
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for g := 0; g < conc; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := fasthttp.AcquireRequest()
			resp := fasthttp.AcquireResponse()
			defer fasthttp.ReleaseRequest(req)
			defer fasthttp.ReleaseResponse(resp)
			req.SetRequestURI("http://" + addr + path)
			req.Header.SetMethod("POST")
			req.SetBody(body)
			for left.Add(-int64(perReq)) > -int64(perReq) {
				if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d requests failed", f)
	}
	return el
}

// BenchmarkServiceIngest measures deferred messages going in: /mpub of 100
// x 500 B and single /pub, due an hour ahead, per fsync mode, side by side.
func BenchmarkServiceIngest(b *testing.B) {
	node := nsqdnodetest.Start(b, nsqdnode.Config{})
	for _, mode := range []string{"interval", "always", "never"} {
		for _, kind := range []string{"mpub", "pub"} {
			b.Run(kind+"/journal="+mode, func(b *testing.B) {
				o := testOptions(b.TempDir(), node.TCPAddr)
				o.SegmentSize = 64 << 20
				o.Fsync = mode
				h := benchHarness(b, o)
				addr := h.srv.Addr()
				b.ResetTimer()
				var el time.Duration
				cpu0 := cpuTime()
				conc := map[string]int{"mpub": 32, "pub": 64}[kind]
				if c, _ := strconv.Atoi(os.Getenv("DEFERD_BENCH_CONC")); c > 0 {
					conc = c
				}
				if kind == "mpub" {
					el = hammer(b, addr, "/mpub?topic=bench&defer=3600000", benchLines(100), 100, b.N, conc)
				} else {
					el = hammer(b, addr, "/pub?topic=bench&defer=3600000", bytes.Repeat([]byte("x"), benchBody), 1, b.N, conc)
				}
				b.StopTimer()
				cpu := cpuSince(cpu0)
				b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
				b.ReportMetric(cpu/float64(b.N)*1e6, "cpu-µs/msg")
				b.ReportMetric(cpu/el.Seconds(), "cores")
				if p := h.e.Pending(); p != int64(b.N) && kind == "pub" {
					b.Fatalf("pending %d, want %d", p, b.N)
				}
			})
		}
	}
}

// BenchmarkServiceDueNow compares messages due at once flowing from
// deferd's /mpub into nsqd against go-nsq MPUB straight into nsqd, side by
// side. Each run gets a fresh nsqd whose memory queue holds the whole run
// (no disk spill, no leftovers from the run before); the clock stops when
// nsqd has counted every message.
func BenchmarkServiceDueNow(b *testing.B) {
	freshNSQD := func(b *testing.B) (*nsqdnode.Node, func(b *testing.B, n int)) {
		node := nsqdnodetest.Start(b, nsqdnode.Config{MemQueueSize: int64(max(b.N, 100_000))})
		return node, func(b *testing.B, n int) { waitTopic(b, node, "t", n) }
	}
	b.Run("direct-go-nsq-mpub", func(b *testing.B) {
		node, waitFor := freshNSQD(b)
		const conns = 4
		var ps []*nsq.Producer
		for i := 0; i < conns; i++ {
			p, err := nsq.NewProducer(node.TCPAddr, nsq.NewConfig())
			if err != nil {
				b.Fatal(err)
			}
			p.SetLoggerLevel(nsq.LogLevelError)
			defer p.Stop()
			ps = append(ps, p)
		}
		batch := bytes.Split(benchLines(100), []byte("\n"))
		var left atomic.Int64
		left.Store(int64(b.N))
		b.ResetTimer()
		start, cpu0 := time.Now(), cpuTime()
		var wg sync.WaitGroup
		for g := 0; g < 16; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for left.Add(-100) > -100 {
					if err := ps[g%conns].MultiPublish("t", batch); err != nil {
						b.Error(err)
						return
					}
				}
			}(g)
		}
		wg.Wait()
		waitFor(b, b.N)
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
		b.ReportMetric(cpuSince(cpu0)/float64(b.N)*1e6, "cpu-µs/msg")
	})
	// deferd's default sends messages already due straight to nsqd
	// (DirectPublish); "journaled" takes them through the journal and the
	// wheel, the path of every delayed message and of due messages while
	// nsqd is unreachable.
	for _, direct := range []bool{true, false} {
		b.Run(dueNowName("deferd-http-mpub", direct), func(b *testing.B) { benchDeferdDueNow(b, freshNSQD, direct) })
	}
}

// BenchmarkServiceDueNowPub is the drop-in case: single-message /pub
// requests without a delay, sent to nsqd's own HTTP /pub and to deferd's,
// side by side, each with a fresh nsqd; the clock stops when nsqd has
// counted every message. deferd publishes each request's message straight
// to nsqd (DirectPublish) or, for -journaled, through the journal and the
// wheel.
func BenchmarkServiceDueNowPub(b *testing.B) {
	body := bytes.Repeat([]byte("x"), benchBody)
	conc := 64
	if c, _ := strconv.Atoi(os.Getenv("DEFERD_BENCH_CONC")); c > 0 {
		conc = c
	}
	run := func(b *testing.B, node *nsqdnode.Node, addr string) {
		b.ResetTimer()
		start, cpu0 := time.Now(), cpuTime()
		hammer(b, addr, "/pub?topic=t", body, 1, b.N, conc)
		waitTopic(b, node, "t", b.N)
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
		b.ReportMetric(cpuSince(cpu0)/float64(b.N)*1e6, "cpu-µs/msg")
	}
	newNode := func(b *testing.B) *nsqdnode.Node {
		return nsqdnodetest.Start(b, nsqdnode.Config{MemQueueSize: int64(max(b.N, 100_000))})
	}
	b.Run("nsqd-http-pub", func(b *testing.B) {
		node := newNode(b)
		run(b, node, node.HTTPAddr)
	})
	for _, direct := range []bool{true, false} {
		b.Run(dueNowName("deferd-http-pub", direct), func(b *testing.B) {
			node := newNode(b)
			h := dueNowHarness(b, node, direct)
			run(b, node, h.srv.Addr())
		})
	}
}

// dueNowName names a deferd side of the due-now benchmarks.
func dueNowName(base string, direct bool) string {
	if direct {
		return base
	}
	return base + "-journaled"
}

// dueNowHarness starts deferd as the due-now benchmarks run it: the
// deployed pool and connections per nsqd, DirectPublish as given.
func dueNowHarness(b *testing.B, node *nsqdnode.Node, direct bool) *harness {
	o := testOptions(b.TempDir(), node.TCPAddr)
	o.SegmentSize = 64 << 20
	o.ConnsPerNSQD = 4
	o.PoolSize = NewOptions().PoolSize
	o.DirectPublish = direct
	return benchHarness(b, o)
}

// benchDeferdDueNow is the deferd side of BenchmarkServiceDueNow.
func benchDeferdDueNow(b *testing.B, freshNSQD func(*testing.B) (*nsqdnode.Node, func(*testing.B, int)), direct bool) {
	node, waitFor := freshNSQD(b)
	h := dueNowHarness(b, node, direct)
	b.ResetTimer()
	if f := os.Getenv("DEFERD_BENCH_PROFILE"); f != "" {
		pf, _ := os.Create(f)
		pprof.StartCPUProfile(pf)
		defer pprof.StopCPUProfile()
	}
	start, cpu0 := time.Now(), cpuTime()
	conc := 16
	if c, _ := strconv.Atoi(os.Getenv("DEFERD_BENCH_CONC")); c > 0 {
		conc = c
	}
	hammer(b, h.srv.Addr(), "/mpub?topic=t", benchLines(100), 100, b.N, conc)
	waitFor(b, b.N)
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	b.ReportMetric(cpuSince(cpu0)/float64(b.N)*1e6, "cpu-µs/msg")
	pprof.StopCPUProfile()
}

// cpuTime is the process's user+system CPU time in seconds.
func cpuTime() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

func cpuSince(t0 float64) float64 { return cpuTime() - t0 }

// BenchmarkServiceLateness offers messages at a fixed rate, each due one
// second after it is sent, and reports how late deferd published them
// (publish acknowledged by nsqd minus due time) and whether any was early.
// b.N is ignored: each run offers -rate for a fixed time.
func BenchmarkServiceLateness(b *testing.B) {
	for _, rate := range []int{10_000, 50_000} {
		b.Run(strconv.Itoa(rate)+"msg/s", func(b *testing.B) {
			// nsqd as embedded (100k in memory per topic and channel): the
			// consumer keeps up, and a bigger queue only makes the GC scan
			// nsqd's huge channel buffers.
			node := nsqdnodetest.Start(b, nsqdnode.Config{})
			o := testOptions(b.TempDir(), node.TCPAddr)
			o.SegmentSize = 64 << 20
			o.ConnsPerNSQD = 4
			if m := os.Getenv("DEFERD_BENCH_FSYNC"); m != "" {
				o.Fsync = m
			}
			h := benchHarness(b, o)
			c := &fasthttp.HostClient{Addr: h.srv.Addr(), MaxConns: 64}
			const perReq = 100
			dur := 10 * time.Second
			reqs := int(dur.Seconds()) * rate / perReq
			interval := time.Second / time.Duration(rate/perReq)
			body := benchLines(perReq)
			// consumer-side check: receive time versus due time in the body
			var early, got atomic.Int64
			var latMu sync.Mutex
			var lats []time.Duration
			cfg := nsq.NewConfig()
			cfg.MaxInFlight = 5000
			cons, _ := nsq.NewConsumer("late", "c", cfg)
			cons.SetLoggerLevel(nsq.LogLevelError)
			cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
				now := time.Now().UnixNano()
				due, _ := strconv.ParseInt(string(m.Body[:19]), 10, 64)
				if now < due {
					early.Add(1)
				}
				latMu.Lock()
				lats = append(lats, time.Duration(now-due))
				latMu.Unlock()
				got.Add(1)
				return nil
			}))
			if err := cons.ConnectToNSQD(node.TCPAddr); err != nil {
				b.Fatal(err)
			}
			defer cons.Stop()
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			sem := make(chan struct{}, 64)
			for i := 0; i < reqs; i++ {
				next := start.Add(time.Duration(i) * interval)
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() { <-sem }()
					req := fasthttp.AcquireRequest()
					resp := fasthttp.AcquireResponse()
					defer fasthttp.ReleaseRequest(req)
					defer fasthttp.ReleaseResponse(resp)
					// The due time deferd computes is ceil(now ms)+defer;
					// stamp a lower bound of it into each body.
					due := time.Now().Add(time.Second).UnixNano()
					bb := append([]byte(nil), body...)
					stamp := strconv.AppendInt(nil, due, 10) // 19 digits
					for off := 0; off < len(bb); off += benchBody + 1 {
						copy(bb[off:], stamp)
					}
					req.SetRequestURI("http://" + h.srv.Addr() + "/mpub?topic=late&defer=1000")
					req.Header.SetMethod("POST")
					req.SetBody(bb)
					if err := c.Do(req, resp); err != nil || resp.StatusCode() != 200 {
						b.Errorf("mpub: %v %d", err, resp.StatusCode())
					}
				}()
			}
			wg.Wait()
			offered := float64(reqs*perReq) / time.Since(start).Seconds()
			deadline := time.Now().Add(time.Minute)
			for got.Load() < int64(reqs*perReq) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			b.StopTimer()
			s := h.e.Stats()
			latMu.Lock()
			sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
			q := func(f float64) float64 {
				if len(lats) == 0 {
					return 0
				}
				return float64(lats[int(f*float64(len(lats)-1))]) / 1e6
			}
			b.ReportMetric(offered, "offered-msg/s")
			b.ReportMetric(float64(got.Load()), "delivered")
			b.ReportMetric(s.Lateness.P50, "pub-p50-ms")
			b.ReportMetric(s.Lateness.P99, "pub-p99-ms")
			b.ReportMetric(s.Lateness.Max, "pub-max-ms")
			b.ReportMetric(q(0.5), "recv-p50-ms")
			b.ReportMetric(q(0.99), "recv-p99-ms")
			b.ReportMetric(float64(early.Load()+int64(s.Early)), "early")
			b.ReportMetric(float64(s.Retried), "retried")
			b.ReportMetric(float64(s.Journal.Fsyncs), "fsyncs")
			latMu.Unlock()
			runtime.GC()
		})
	}
}

// BenchmarkServiceBurst: N messages (-benchtime Nx) all due at the same
// instant, 3 s after the first is sent; reports how long after the due
// time nsqd has counted all of them, next to how long nsqd itself needs
// to take N messages by MPUB (direct, measured in the same run).
func BenchmarkServiceBurst(b *testing.B) {
	node := nsqdnodetest.Start(b, nsqdnode.Config{MemQueueSize: int64(max(2*b.N, 100_000))})
	o := testOptions(b.TempDir(), node.TCPAddr)
	o.SegmentSize = 64 << 20
	o.ConnsPerNSQD = 4
	h := benchHarness(b, o)
	due := time.Now().Add(3 * time.Second).UnixMilli()
	b.ResetTimer()
	hammer(b, h.srv.Addr(), "/mpub?topic=burst&at="+strconv.FormatInt(due, 10), benchLines(100), 100, b.N, 16)
	waitTopic(b, node, "burst", b.N)
	after := time.Since(time.UnixMilli(due))
	b.StopTimer()
	h.stop()

	// nsqd alone taking the same number of messages.
	p, err := nsq.NewProducer(node.TCPAddr, nsq.NewConfig())
	if err != nil {
		b.Fatal(err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	defer p.Stop()
	batch := bytes.Split(benchLines(500), []byte("\n"))
	start := time.Now()
	for sent := 0; sent < b.N; sent += len(batch) {
		if err := p.MultiPublish("direct", batch); err != nil {
			b.Fatal(err)
		}
	}
	waitTopic(b, node, "direct", b.N)
	direct := time.Since(start)
	b.ReportMetric(after.Seconds(), "all-out-after-due-s")
	b.ReportMetric(direct.Seconds(), "nsqd-takes-s")
	b.ReportMetric(float64(b.N)/after.Seconds(), "drain-msg/s")
}

// waitTopic waits until nsqd has taken n messages for topic; it fails the
// benchmark after 5 minutes.
func waitTopic(b *testing.B, node *nsqdnode.Node, topic string, n int) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for topicCount(node, topic) < uint64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("nsqd has %d of %d for %s", topicCount(node, topic), n, topic)
		}
		time.Sleep(time.Millisecond)
	}
}

// BenchmarkPendingMemory holds the reference load's pending set, N
// messages of 500 B due an hour ahead (default 12M: 100k msg/s with a 120 s
// delay), and reports Go heap per pending message, GC pause percentiles
// while filling, and then the journal recovery time for all of them on a
// restart. It needs ~7 GB of disk for 12M, so it runs only with
// DEFERD_BENCH_PENDING=N set:
//
//	DEFERD_BENCH_PENDING=12000000 go test -run XXX -bench PendingMemory -benchtime 1x -timeout 30m .
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
