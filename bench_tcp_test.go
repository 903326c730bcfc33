package deferd

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
)

// TCP listener benchmarks: go-nsq producers into deferd's nsqd-protocol
// listener against the same producers into nsqd itself, side by side in
// one run. nsqd runs as its own process (go tool nsqd, v1.3.0), fresh for
// every run, as users run it (/work/shared/MEASURING.md); deferd runs in
// the benchmark process, with the producers (and the consumer). Each run
// reports msg/s, the benchmark process's CPU per message (producers,
// consumer and, on deferd's side, deferd) and nsqd's. Interleave repeats
// (-count repeats each sub-benchmark back to back):
//
//	for i in 1 2 3; do go test -run XXX -bench 'TCPDueNow|TCPDelayedMPUB' -benchtime 200000x .; done
//	for i in 1 2 3; do go test -run XXX -bench 'TCPDPUB' -benchtime 20000x .; done

// extNSQD is an nsqd process on free loopback ports with a temporary data
// path, killed when the benchmark ends.
type extNSQD struct {
	cmd      *exec.Cmd
	TCPAddr  string
	HTTPAddr string
}

// startExtNSQD starts `go tool nsqd` (built once by the go command's
// cache) with --mem-queue-size memQueue, so a run's messages stay in its
// memory, and waits for its /ping.
func startExtNSQD(b *testing.B, memQueue int) *extNSQD {
	b.Helper()
	out, err := exec.Command("go", "tool", "-n", "nsqd").Output()
	if err != nil {
		b.Fatalf("go tool -n nsqd: %v", err)
	}
	bin := strings.TrimSpace(string(out))
	n := &extNSQD{TCPAddr: freeLoopback(b), HTTPAddr: freeLoopback(b)}
	n.cmd = exec.Command(bin,
		"--tcp-address", n.TCPAddr, "--http-address", n.HTTPAddr,
		"--data-path", b.TempDir(), "--mem-queue-size", strconv.Itoa(memQueue),
		"--log-level", "warn")
	n.cmd.Stderr = os.Stderr
	if err := n.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.cmd.Process.Kill(); n.cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if resp, err := http.Get("http://" + n.HTTPAddr + "/ping"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return n
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("nsqd did not answer /ping within 10 s")
		}
	}
}

func freeLoopback(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// cpu is the process's user+system CPU time in seconds (/proc/PID/stat).
func (n *extNSQD) cpu() float64 { return procCPU(n.cmd.Process.Pid) }

func procCPU(pid int) float64 {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64) // field 14, utime
	st, _ := strconv.ParseFloat(f[12], 64) // field 15, stime
	return (ut + st) / 100                 // USER_HZ
}

// topicCount is nsqd's message_count for topic.
func (n *extNSQD) topicCount(b *testing.B, topic string) uint64 {
	resp, err := http.Get("http://" + n.HTTPAddr + "/stats?format=json&topic=" + topic)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Topics []struct {
			MessageCount uint64 `json:"message_count"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		b.Fatal(err)
	}
	if len(st.Topics) == 0 {
		return 0
	}
	return st.Topics[0].MessageCount
}

func (n *extNSQD) waitTopic(b *testing.B, topic string, want int) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for n.topicCount(b, topic) < uint64(want) {
		if time.Now().After(deadline) {
			b.Fatalf("nsqd has %d of %d for %s", n.topicCount(b, topic), want, topic)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// tcpScheduler starts a Scheduler publishing to nsqdAddr as the due-now
// benchmarks run it (the deployed pool, 4 connections to nsqd, direct
// publish), with its TCP listener on a free port; both stop when the
// benchmark ends.
func tcpScheduler(b *testing.B, nsqdAddr string) (*Scheduler, string) {
	b.Helper()
	o := testOptions(b.TempDir(), nsqdAddr)
	o.SegmentSize = 64 << 20
	o.ConnsPerNSQD = 4
	o.PoolSize = NewOptions().PoolSize
	o.TCPAddress = "127.0.0.1:0"
	o.Logf = func(string, ...any) {}
	s, err := New(o)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := s.ListenTCP()
	if err != nil {
		s.Close(time.Second)
		b.Fatal(err)
	}
	go srv.Serve()
	b.Cleanup(func() {
		srv.Shutdown()
		s.Close(10 * time.Second)
	})
	return s, srv.Addr()
}

// producers are n go-nsq Producers to addr, stopped when the benchmark
// ends.
func producers(b *testing.B, addr string, n int) []*nsq.Producer {
	b.Helper()
	var ps []*nsq.Producer
	for range n {
		p, err := nsq.NewProducer(addr, nsq.NewConfig())
		if err != nil {
			b.Fatal(err)
		}
		p.SetLoggerLevel(nsq.LogLevelError)
		if err := p.Ping(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(p.Stop)
		ps = append(ps, p)
	}
	return ps
}

// BenchmarkTCPDueNow: go-nsq MultiPublish of 100 x 500 B, due now, from
// 16 goroutines on 4 (and on 16) Producers, one connection each, into
// nsqd's own TCP port and into deferd's (which publishes each MPUB
// straight to nsqd before its OK), each with a fresh nsqd process; the
// clock stops when nsqd has counted every message.
func BenchmarkTCPDueNow(b *testing.B) {
	for _, conns := range []int{4, 16} {
		for _, target := range []string{"nsqd-tcp-mpub", "deferd-tcp-mpub"} {
			b.Run(fmt.Sprintf("conns=%d/%s", conns, target), func(b *testing.B) { benchTCPDueNow(b, target, conns) })
		}
	}
}

func benchTCPDueNow(b *testing.B, target string, conns int) {
	node := startExtNSQD(b, max(b.N, 100_000))
	addr := node.TCPAddr
	if target == "deferd-tcp-mpub" {
		_, addr = tcpScheduler(b, node.TCPAddr)
	}
	ps := producers(b, addr, conns)
	batch := bytes.Split(benchLines(100), []byte("\n"))
	var left atomic.Int64
	left.Store(int64(b.N))
	b.ResetTimer()
	start, cpu0, ncpu0 := time.Now(), cpuTime(), node.cpu()
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-100) > -100 {
				if err := ps[g%len(ps)].MultiPublish("t", batch); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	node.waitTopic(b, "t", b.N)
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
	b.ReportMetric(cpuSince(cpu0)/float64(b.N)*1e6, "cpu-µs/msg")
	b.ReportMetric((node.cpu()-ncpu0)/float64(b.N)*1e6, "nsqd-cpu-µs/msg")
}

// BenchmarkTCPDelayedMPUB: 100 x 500 B due in an hour, from 16 connections
// each sending its next batch after the last one's answer, as deferd's
// TCP extension `MPUB <topic> <defer_ms>` (a raw V2 client: go-nsq has no
// deferred MPUB) and as HTTP /mpub?defer=, each with a fresh deferd (and
// nsqd process, which receives nothing); the clock stops at the last OK,
// when every message is journaled.
func BenchmarkTCPDelayedMPUB(b *testing.B) {
	const conc = 16
	body := benchLines(100)
	b.Run("deferd-tcp-mpub-delayed", func(b *testing.B) {
		node := startExtNSQD(b, 10_000)
		s, addr := tcpScheduler(b, node.TCPAddr)
		cmd := rawMPUB("t", 3_600_000, bytes.Split(body, []byte("\n")))
		var left atomic.Int64
		left.Store(int64(b.N))
		b.ResetTimer()
		start, cpu0 := time.Now(), cpuTime()
		var wg sync.WaitGroup
		for range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				if _, err := c.Write([]byte("  V2")); err != nil {
					b.Error(err)
					return
				}
				r := bufio.NewReader(c)
				for left.Add(-100) > -100 {
					if err := rawRoundTrip(c, r, cmd); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
		b.ReportMetric(cpuSince(cpu0)/float64(b.N)*1e6, "cpu-µs/msg")
		if p := s.Pending(); p < int64(b.N) {
			b.Fatalf("pending %d, want >= %d", p, b.N)
		}
	})
	b.Run("deferd-http-mpub-delayed", func(b *testing.B) {
		node := startExtNSQD(b, 10_000)
		o := testOptions(b.TempDir(), node.TCPAddr)
		o.SegmentSize = 64 << 20
		o.ConnsPerNSQD = 4
		o.PoolSize = NewOptions().PoolSize
		h := benchHarness(b, o)
		b.ResetTimer()
		cpu0 := cpuTime()
		el := hammer(b, h.srv.Addr(), "/mpub?topic=t&defer=3600000", body, 100, b.N, conc)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
		b.ReportMetric(cpuSince(cpu0)/float64(b.N)*1e6, "cpu-µs/msg")
		if p := h.e.Pending(); p < int64(b.N) {
			b.Fatalf("pending %d, want >= %d", p, b.N)
		}
	})
}

// rawMPUB is the bytes of `MPUB topic deferMs` with bodies, nsqd's V2
// framing.
func rawMPUB(topic string, deferMs int, bodies [][]byte) []byte {
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "MPUB %s %d\n", topic, deferMs)
	size := 4
	for _, m := range bodies {
		size += 4 + len(m)
	}
	buf.Write(binary.BigEndian.AppendUint32(nil, uint32(size)))
	buf.Write(binary.BigEndian.AppendUint32(nil, uint32(len(bodies))))
	for _, m := range bodies {
		buf.Write(binary.BigEndian.AppendUint32(nil, uint32(len(m))))
		buf.Write(m)
	}
	return buf.Bytes()
}

// rawRoundTrip writes cmd and reads the answer: nil for OK, an error for
// an error frame; heartbeats are answered with NOP.
func rawRoundTrip(c net.Conn, r *bufio.Reader, cmd []byte) error {
	if _, err := c.Write(cmd); err != nil {
		return err
	}
	for {
		var hdr [8]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return err
		}
		data := make([]byte, binary.BigEndian.Uint32(hdr[:4])-4)
		if _, err := io.ReadFull(r, data); err != nil {
			return err
		}
		switch {
		case binary.BigEndian.Uint32(hdr[4:]) != 0:
			return fmt.Errorf("error frame %q", data)
		case string(data) == "_heartbeat_":
			if _, err := c.Write([]byte("NOP\n")); err != nil {
				return err
			}
		case string(data) == "OK":
			return nil
		default:
			return fmt.Errorf("answer %q", data)
		}
	}
}

// BenchmarkTCPDPUB: go-nsq DeferredPublish of one 500 B message with a 100
// ms delay, from 1 synchronous Producer and from 8 concurrent ones (each
// its own connection, each sending after the last OK), into nsqd itself
// and into deferd's TCP listener, each with a fresh nsqd process and a
// consumer on it. msg/s is the publishing rate (b.N messages over the time
// to the last OK); recv-p50/p99/max-ms is how late the consumer received
// them (its receive time minus the send time plus 100 ms, stamped into
// each body before its DPUB; on nsqd's side after a 5.5 s wait for its
// queue scan to know the consumer's channel); deferd-p99-ms is deferd's
// own lateness (nsqd's OK minus due time) over the same run. "early"
// counts messages received before their due time.
func BenchmarkTCPDPUB(b *testing.B) {
	const delay = 100 * time.Millisecond
	for _, np := range []int{1, 8} {
		for _, target := range []string{"nsqd-dpub", "deferd-tcp-dpub"} {
			b.Run(fmt.Sprintf("producers=%d/%s", np, target), func(b *testing.B) {
				node := startExtNSQD(b, max(b.N, 100_000))
				var s *Scheduler
				addr := node.TCPAddr
				if target == "deferd-tcp-dpub" {
					s, addr = tcpScheduler(b, node.TCPAddr)
				}
				var (
					latMu sync.Mutex
					lats  = make([]time.Duration, 0, b.N)
					early atomic.Int64
					got   = make(chan struct{}, 1)
				)
				cfg := nsq.NewConfig()
				cfg.MaxInFlight = 2500
				cons, err := nsq.NewConsumer("d", "c", cfg)
				if err != nil {
					b.Fatal(err)
				}
				cons.SetLoggerLevel(nsq.LogLevelError)
				cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
					now := time.Now().UnixNano()
					due, _ := strconv.ParseInt(string(m.Body[:19]), 10, 64)
					if now < due {
						early.Add(1)
					}
					latMu.Lock()
					lats = append(lats, time.Duration(now-due))
					n := len(lats)
					latMu.Unlock()
					if n == b.N {
						got <- struct{}{}
					}
					return nil
				}))
				if err := cons.ConnectToNSQD(node.TCPAddr); err != nil {
					b.Fatal(err)
				}
				defer func() { cons.Stop(); <-cons.StopChan }()
				if s == nil {
					// nsqd delivers deferred messages from the channels
					// its queue scan knows, a list it refreshes every 5 s
					// (--queue-scan-refresh-interval): a channel made
					// since is not scanned until then. On a long-running
					// nsqd the channel is long known, so wait for it.
					time.Sleep(5500 * time.Millisecond)
				}
				ps := producers(b, addr, np)

				var left atomic.Int64
				left.Store(int64(b.N))
				b.ResetTimer()
				start, cpu0, ncpu0 := time.Now(), cpuTime(), node.cpu()
				var wg sync.WaitGroup
				for _, p := range ps {
					wg.Add(1)
					go func() {
						defer wg.Done()
						body := bytes.Repeat([]byte("x"), benchBody)
						for left.Add(-1) >= 0 {
							// A lower bound of the due time deferd (or
							// nsqd) computes.
							strconv.AppendInt(body[:0], time.Now().Add(delay).UnixNano(), 10)
							if err := p.DeferredPublish("d", delay, body); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				pubEl := time.Since(start)
				select {
				case <-got:
				case <-time.After(time.Minute):
					latMu.Lock()
					n := len(lats)
					latMu.Unlock()
					b.Fatalf("the consumer got %d of %d in a minute", n, b.N)
				}
				b.StopTimer()
				cpu, ncpu := cpuSince(cpu0), node.cpu()-ncpu0
				latMu.Lock()
				slices.Sort(lats)
				q := func(f float64) float64 { return float64(lats[int(f*float64(len(lats)-1))]) / 1e6 }
				b.ReportMetric(float64(b.N)/pubEl.Seconds(), "msg/s")
				b.ReportMetric(q(0.5), "recv-p50-ms")
				b.ReportMetric(q(0.99), "recv-p99-ms")
				b.ReportMetric(q(1), "recv-max-ms")
				latMu.Unlock()
				b.ReportMetric(float64(early.Load()), "early")
				b.ReportMetric(cpu/float64(b.N)*1e6, "cpu-µs/msg")
				b.ReportMetric(ncpu/float64(b.N)*1e6, "nsqd-cpu-µs/msg")
				if s != nil {
					st := s.Stats()
					b.ReportMetric(st.Lateness.P99, "deferd-p99-ms")
					b.ReportMetric(float64(st.Early), "deferd-early")
				}
			})
		}
	}
}
