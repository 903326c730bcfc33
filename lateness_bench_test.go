package deferd

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
)

// Lateness benchmarks: deferd in this process, publishing to nsqd as its
// own process (go tool nsqd, fresh per run), with go-nsq consumers of the
// topic on one channel each, so that every consumer sees every message of
// the same run, in a third process (this test binary re-run as
// TestLatenessConsumerChild). Each reports deferd's own lateness (publish OK minus due,
// /stats: bucket upper bounds, about 12% wide), its stages where the code
// under test has them (lateness_ms.stages), and the lateness each consumer
// saw (its handler's time.Now minus the due time carried in the body;
// exact percentiles). The consumer configurations:
//
//   - default: go-nsq's NewConfig with MaxInFlight 1000 (nsqd's output
//     buffer: 16 KiB, flushed every 250 ms or when full or when RDY is
//     used up);
//   - mif1: go-nsq's NewConfig untouched (MaxInFlight 1: nsqd flushes
//     after every message, but one message per round trip);
//   - obt-1: OutputBufferTimeout -1 (no periodic flush at all) and
//     MaxInFlight 1000;
//   - obs-1: OutputBufferSize -1 (nsqd writes every message at once) and
//     MaxInFlight 1000: the tuned one.
//
// Run before/after interleaved, each side a test binary built from its
// tree (LATENESS_SECONDS sets the load's length, default 10):
//
//	git archive BASE | tar -x -C /tmp/before && cp lateness_bench_test.go /tmp/before/
//	go test -c -o /tmp/after.test . && (cd /tmp/before && go test -c -o /tmp/before.test .)
//	for i in 1 2 3; do for v in before after; do /tmp/$v.test -test.run XXX -test.bench 'Lateness' -test.benchtime 1x; done; done

// latConsumer is one go-nsq consumer recording lateness in ms; in the
// benchmark's process, a remote one stands for one in the consumer
// process (latChild), its count and quantiles as that process reports
// them.
type latConsumer struct {
	name string
	c    *nsq.Consumer
	mu   sync.Mutex
	late []float64
	seen map[uint64]bool

	remote bool
	n      atomic.Int64
	q      [3]float64 // p50, p99, max
}

// latConfigs are the consumer configurations (see above). The load runs
// default and obs-1 only, to spare the 2 cores: mif1 gets one message per
// round trip, and obt-1 is default while messages keep the buffer filling.
func latConfigs(load bool) []string {
	if load {
		return []string{"default", "obs-1"}
	}
	return []string{"default", "mif1", "obt-1", "obs-1"}
}

func latConfig(name string) *nsq.Config {
	cfg := nsq.NewConfig()
	switch name {
	case "default":
		cfg.MaxInFlight = 1000
	case "mif1":
	case "obt-1":
		cfg.MaxInFlight = 1000
		cfg.OutputBufferTimeout = -1
	case "obs-1":
		cfg.MaxInFlight = 1000
		cfg.OutputBufferSize = -1
	}
	return cfg
}

func startLatConsumers(b testing.TB, nsqdAddr, topic string, names []string) []*latConsumer {
	b.Helper()
	var cs []*latConsumer
	for _, name := range names {
		lc := &latConsumer{name: name, seen: make(map[uint64]bool)}
		c, err := nsq.NewConsumer(topic, strings.ReplaceAll(name, "-", "_"), latConfig(name))
		if err != nil {
			b.Fatal(err)
		}
		c.SetLoggerLevel(nsq.LogLevelError)
		c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
			now := time.Now()
			due := int64(binary.BigEndian.Uint64(m.Body))
			seq := binary.BigEndian.Uint64(m.Body[8:])
			lc.mu.Lock()
			if !lc.seen[seq] {
				lc.seen[seq] = true
				lc.late = append(lc.late, float64(now.Sub(time.UnixMilli(due)))/1e6)
			}
			lc.mu.Unlock()
			return nil
		}))
		if err := c.ConnectToNSQD(nsqdAddr); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(c.Stop)
		lc.c = c
		cs = append(cs, lc)
	}
	return cs
}

func (lc *latConsumer) count() int {
	if lc.remote {
		return int(lc.n.Load())
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return len(lc.late)
}

// quantiles returns the exact p50, p99 and max of lc's lateness (ms).
func (lc *latConsumer) quantiles() (p50, p99, mx float64) {
	if lc.remote {
		return lc.q[0], lc.q[1], lc.q[2]
	}
	lc.mu.Lock()
	l := slices.Clone(lc.late)
	lc.mu.Unlock()
	if len(l) == 0 {
		return 0, 0, 0
	}
	slices.Sort(l)
	q := func(p float64) float64 { return l[min(len(l)-1, int(p*float64(len(l))))] }
	return q(0.5), q(0.99), l[len(l)-1]
}

// latScheduler starts a Scheduler with the deployed options publishing to
// nsqdAddr, closed when the benchmark ends.
func latScheduler(b *testing.B, nsqdAddr string) *Scheduler {
	b.Helper()
	o := NewOptions()
	o.DataPath = b.TempDir()
	o.NSQDTCPAddresses = []string{nsqdAddr}
	o.Logf = func(string, ...any) {}
	s, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(10 * time.Second) })
	// Connect every egress connection first (go-nsq connects on first
	// use), on another topic and around deferd's counts.
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 4 {
				if _, err := s.eg.Publish("lateness_warm", [][]byte{[]byte("warm")}); err != nil {
					b.Error(err)
				}
			}
		})
	}
	wg.Wait()
	return s
}

// latBody is a size-byte body carrying dueMs and seq.
func latBody(dueMs int64, seq uint64, size int) []byte {
	body := make([]byte, size)
	binary.BigEndian.PutUint64(body, uint64(dueMs))
	binary.BigEndian.PutUint64(body[8:], seq)
	for i := 16; i < size; i++ {
		body[i] = 'x'
	}
	return body
}

// latReport reports deferd's lateness, its stages (if the Scheduler has
// them) and each consumer's, as metrics and one log line each.
func latReport(b *testing.B, s *Scheduler, cs []*latConsumer, want int) {
	b.Helper()
	st := s.Stats()
	l := st.Lateness
	b.ReportMetric(l.P50, "deferd-p50-ms")
	b.ReportMetric(l.P99, "deferd-p99-ms")
	b.ReportMetric(l.Max, "deferd-max-ms")
	var out strings.Builder
	fmt.Fprintf(&out, "\n%s %s published %d of %d\n", time.Now().UTC().Format(time.RFC3339), b.Name(), st.Published, want)
	fmt.Fprintf(&out, "  %-14s p50 %6.2f  p90 %6.2f  p99 %6.2f  p99.9 %6.2f  max %7.2f ms (bucket bounds)\n", "deferd total", l.P50, l.P90, l.P99, l.P999, l.Max)
	// The stages by JSON, so this file also builds against a tree without
	// them (the before side of a comparison).
	raw, _ := json.Marshal(st)
	var m struct {
		Lateness struct {
			Stages map[string]map[string]float64 `json:"stages"`
		} `json:"lateness_ms"`
	}
	json.Unmarshal(raw, &m)
	for _, k := range []string{"wheel_to_task", "task_to_mpub", "mpub_to_ok"} {
		if v, ok := m.Lateness.Stages[k]; ok {
			fmt.Fprintf(&out, "  %-14s p50 %6.2f  p90 %6.2f  p99 %6.2f  p99.9 %6.2f  max %7.2f ms (n %.0f)\n", k, v["p50"], v["p90"], v["p99"], v["p999"], v["max"], v["count"])
			b.ReportMetric(v["p99"], k+"-p99-ms")
		}
	}
	for _, c := range cs {
		p50, p99, mx := c.quantiles()
		fmt.Fprintf(&out, "  %-14s p50 %6.2f            p99 %6.2f                max %7.2f ms (n %d, exact)\n", "consumer "+c.name, p50, p99, mx, c.count())
		b.ReportMetric(p99, c.name+"-p99-ms")
	}
	b.Log(out.String())
}

func latSeconds() time.Duration {
	if v, err := strconv.Atoi(os.Getenv("LATENESS_SECONDS")); err == nil && v > 0 {
		return time.Duration(v) * time.Second
	}
	return 10 * time.Second
}

// BenchmarkLatenessLoad: 20k msg/s of 500 B for LATENESS_SECONDS, each
// due after a delay uniform in 0-2000 ms (absolute due times in whole
// ms, At), published from 8 goroutines, one Publish per message; then
// waits for every consumer to have every message (at most 30 s).
func BenchmarkLatenessLoad(b *testing.B) {
	const rate, size, workers = 20000, 500, 8
	n := startExtNSQD(b, 10_000_000)
	s := latScheduler(b, n.TCPAddr)
	topic := "lateness_load"
	child := startLatChild(b, n.TCPAddr, topic, latConfigs(true))
	cs := child.cs
	total := int(latSeconds().Seconds()) * rate
	b.ResetTimer()
	work := make(chan Pub, 4096)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for p := range work {
				if err := s.Publish(p); err != nil {
					b.Error(err)
				}
			}
		})
	}
	start := time.Now()
	seq := uint64(0)
	for i := 0; i < total; {
		// Pace by the clock: what is due by now goes now.
		for target := int(time.Since(start).Seconds() * rate); i < total && i < target; i++ {
			due := ceilMs(time.Now().Add(time.Duration(rand.IntN(2001)) * time.Millisecond).UnixNano())
			work <- Pub{Topic: topic, Bodies: [][]byte{latBody(due, seq, size)}, At: time.UnixMilli(due)}
			seq++
		}
		time.Sleep(200 * time.Microsecond)
	}
	close(work)
	wg.Wait()
	waitConsumers(b, cs, total, 30*time.Second)
	b.StopTimer()
	child.finish(b)
	latReport(b, s, cs, total)
}

// BenchmarkLatenessIdle: one message at a time, nothing else pending: 500
// B due after 20-60 ms (whole ms), the next published once every consumer
// has it (but obt-1); LATENESS_SECONDS*20 messages.
func BenchmarkLatenessIdle(b *testing.B) {
	n := startExtNSQD(b, 10_000_000)
	s := latScheduler(b, n.TCPAddr)
	topic := "lateness_idle"
	child := startLatChild(b, n.TCPAddr, topic, latConfigs(false))
	cs := child.cs
	total := int(latSeconds().Seconds()) * 20
	b.ResetTimer()
	for i := range total {
		due := ceilMs(time.Now().Add(time.Duration(20+rand.IntN(41)) * time.Millisecond).UnixNano())
		if err := s.Publish(Pub{Topic: topic, Bodies: [][]byte{latBody(due, uint64(i), 500)}, At: time.UnixMilli(due)}); err != nil {
			b.Fatal(err)
		}
		// obt-1 is not waited for: nsqd flushes its buffer only when full,
		// when RDY is used up or at a heartbeat (30 s).
		waitConsumers(b, slices.DeleteFunc(slices.Clone(cs), func(c *latConsumer) bool { return c.name == "obt-1" }), i+1, 10*time.Second)
	}
	b.StopTimer()
	child.finish(b)
	latReport(b, s, cs, total)
}

// waitConsumers waits until each consumer has want messages.
func waitConsumers(b *testing.B, cs []*latConsumer, want int, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for _, c := range cs {
		for c.count() < want {
			if time.Now().After(deadline) {
				b.Errorf("consumer %s has %d of %d messages", c.name, c.count(), want)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// latChild is the consumer process: this test binary running
// TestLatenessConsumerChild, so that the consumers' CPU is not deferd's
// process's (nsqd, deferd and the consumers are three processes, as
// deployed). It reports its counts on stdout as they change (at most
// every ms) and, when its stdin closes, each consumer's quantiles.
type latChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	cs    []*latConsumer
	done  chan struct{} // its stdout ended
}

func startLatChild(b *testing.B, nsqdAddr, topic string, names []string) *latChild {
	b.Helper()
	c := &latChild{done: make(chan struct{})}
	c.cmd = exec.Command(os.Args[0], "-test.run", "^TestLatenessConsumerChild$", "-test.count", "1")
	c.cmd.Env = append(os.Environ(), "LATENESS_CHILD_NSQD="+nsqdAddr, "LATENESS_CHILD_TOPIC="+topic, "LATENESS_CHILD_CONFIGS="+strings.Join(names, ","))
	c.cmd.Stderr = os.Stderr
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	for _, name := range names {
		c.cs = append(c.cs, &latConsumer{name: name, remote: true})
	}
	if err := c.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.cmd.Process.Kill(); c.cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 1 && f[0] == "ready":
				close(ready)
			case len(f) == len(c.cs)+1 && f[0] == "n":
				for i, v := range f[1:] {
					n, _ := strconv.ParseInt(v, 10, 64)
					c.cs[i].n.Store(n)
				}
			case len(f) == 5 && f[0] == "q":
				for _, lc := range c.cs {
					if lc.name == f[1] {
						for j := range lc.q {
							lc.q[j], _ = strconv.ParseFloat(f[2+j], 64)
						}
					}
				}
			}
		}
	}()
	select {
	case <-ready:
	case <-c.done:
		b.Fatal("the consumer process ended before it was ready")
	case <-time.After(30 * time.Second):
		b.Fatal("the consumer process not ready within 30 s")
	}
	return c
}

// finish asks the consumer process for its quantiles and waits for them.
func (c *latChild) finish(b *testing.B) {
	c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		b.Error("no quantiles from the consumer process within 30 s")
	}
}

// TestLatenessConsumerChild is the consumer process of the lateness
// benchmarks (latChild); skipped unless started as one.
func TestLatenessConsumerChild(t *testing.T) {
	addr := os.Getenv("LATENESS_CHILD_NSQD")
	if addr == "" {
		t.Skip("the consumer process of BenchmarkLateness*; started by them")
	}
	cs := startLatConsumers(t, addr, os.Getenv("LATENESS_CHILD_TOPIC"), strings.Split(os.Getenv("LATENESS_CHILD_CONFIGS"), ","))
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(w, "ready")
	w.Flush()
	eof := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	last := ""
	report := func() {
		line := "n"
		for _, c := range cs {
			line += " " + strconv.Itoa(c.count())
		}
		if line != last {
			fmt.Fprintln(w, line)
			w.Flush()
			last = line
		}
	}
	for done := false; !done; {
		select {
		case <-tick.C:
		case <-eof:
			done = true
		}
		report()
	}
	for _, c := range cs {
		p50, p99, mx := c.quantiles()
		fmt.Fprintf(w, "q %s %g %g %g\n", c.name, p50, p99, mx)
	}
	w.Flush()
}
