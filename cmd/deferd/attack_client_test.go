package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// attack is a set of hostile HTTP clients against addr until stop closes.
type attack struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	slowOpen, slowClosed atomic.Int64 // slowloris connections opened; closed by deferd
	slowLongest          atomic.Int64 // ns, open to closed-by-deferd
	halfOpen, halfClosed atomic.Int64
	answers              sync.Map // first status line seen by half bodies -> *atomic.Int64
}

// attackStats is what an attacker process reports when it stops.
type attackStats struct {
	SlowOpen, SlowClosed int64
	SlowLongest          time.Duration
	HalfOpen, HalfClosed int64
	Answers              map[string]int64
}

func (a *attack) stats() attackStats {
	s := attackStats{SlowOpen: a.slowOpen.Load(), SlowClosed: a.slowClosed.Load(),
		SlowLongest: time.Duration(a.slowLongest.Load()), HalfOpen: a.halfOpen.Load(),
		HalfClosed: a.halfClosed.Load(), Answers: map[string]int64{}}
	a.answers.Range(func(k, v any) bool { s.Answers[k.(string)] = v.(*atomic.Int64).Load(); return true })
	return s
}

// keep runs n clients, each dialling addr and handing the connection to
// use, which returns false once stop closed; a client whose connection
// ended is dialled again if reopen, else waits for stop. A failed dial is
// retried 100 ms later.
func (a *attack) keep(n int, reopen bool, use func(c net.Conn) bool) {
	for range n {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for {
				c, err := net.Dial("tcp", a.addr)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
				} else {
					more := use(c)
					c.Close()
					if !more {
						return
					}
				}
				if !reopen {
					<-a.stop
					return
				}
			}
		}()
	}
}

// slowloris keeps n connections sending a request head one header byte
// per second, never ending it; each closed by deferd is opened again if
// reopen.
func (a *attack) slowloris(n int, reopen bool) {
	a.keep(n, reopen, func(c net.Conn) bool {
		a.slowOpen.Add(1)
		opened := time.Now()
		closed := make(chan struct{})
		go func() { io.Copy(io.Discard, c); close(closed) }()
		io.WriteString(c, "POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nX-Slow: ")
		for {
			select {
			case <-a.stop:
				return false
			case <-closed:
				a.slowClosed.Add(1)
				life := int64(time.Since(opened))
				for l := a.slowLongest.Load(); life > l && !a.slowLongest.CompareAndSwap(l, life); l = a.slowLongest.Load() {
				}
				return true
			case <-time.After(time.Second):
				c.Write([]byte("a"))
			}
		}
	})
}

// halfBodies keeps n connections that declare a size-byte /mpub body,
// send all but 100 KB of it and stall.
func (a *attack) halfBodies(n, size int, reopen bool) {
	line := bytes.Repeat([]byte("x"), 999)
	line = append(line, '\n')
	part := bytes.Repeat(line, (size-100_000)/len(line))
	a.keep(n, reopen, func(c net.Conn) bool {
		a.halfOpen.Add(1)
		closed := make(chan struct{})
		go func() {
			buf := make([]byte, 64)
			n, _ := io.ReadAtLeast(c, buf, 12)
			if n >= 12 {
				v, _ := a.answers.LoadOrStore(string(buf[9:12]), new(atomic.Int64))
				v.(*atomic.Int64).Add(1)
			}
			io.Copy(io.Discard, c)
			close(closed)
		}()
		fmt.Fprintf(c, "POST /mpub?topic=t&defer=60000 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", size)
		c.Write(part)
		select {
		case <-a.stop:
			return false
		case <-closed:
			a.halfClosed.Add(1)
			return true
		}
	})
}

// TestAttackerChild is the attacker process of TestAttack: with
// DEFERD_ATTACKER=addr it runs ATTACKER_SLOW slowloris connections and
// ATTACKER_HALF half bodies (reopened if ATTACKER_REOPEN=1) against addr
// until its stdin closes, then prints its attackStats as one JSON line.
// Without it, it is skipped.
func TestAttackerChild(t *testing.T) {
	addr := os.Getenv("DEFERD_ATTACKER")
	if addr == "" {
		t.Skip("the attacker process of TestAttack")
	}
	a := &attack{addr: addr, stop: make(chan struct{})}
	reopen := os.Getenv("ATTACKER_REOPEN") == "1"
	a.slowloris(int(envInt("ATTACKER_SLOW", 0)), reopen)
	a.halfBodies(int(envInt("ATTACKER_HALF", 0)), 5_000_000, reopen)
	io.Copy(io.Discard, os.Stdin)
	close(a.stop)
	a.wg.Wait()
	b, _ := json.Marshal(a.stats())
	fmt.Printf("ATTACK-STATS %s\n", b)
}

// attackProc is a running TestAttackerChild.
type attackProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *bufio.Reader
}

// startAttacker starts the attacker process against addr, at nice 19 if
// nice.
func startAttacker(t *testing.T, addr string, slow, half int, reopen, nice bool) *attackProc {
	t.Helper()
	args := []string{os.Args[0], "-test.run=^TestAttackerChild$", "-test.count=1"}
	if nice {
		args = append([]string{"nice", "-n", "19"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "DEFERD_ATTACKER="+addr, "ATTACKER_SLOW="+strconv.Itoa(slow),
		"ATTACKER_HALF="+strconv.Itoa(half), "ATTACKER_REOPEN="+map[bool]string{true: "1"}[reopen])
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &attackProc{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return p
}

// stop ends the attack and returns the attacker's report.
func (p *attackProc) stop(t *testing.T) attackStats {
	t.Helper()
	p.stdin.Close()
	var s attackStats
	for {
		l, err := p.out.ReadString('\n')
		if rest, ok := strings.CutPrefix(l, "ATTACK-STATS "); ok {
			if err := json.Unmarshal([]byte(rest), &s); err != nil {
				t.Fatal(err)
			}
			break
		}
		if err != nil {
			t.Fatalf("attacker: no report: %v", err)
		}
	}
	io.Copy(io.Discard, p.out)
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("attacker: %v", err)
	}
	return s
}

// cpuSeconds is the user+system CPU time process pid has used
// (/proc/PID/stat fields 14 and 15, in clock ticks of 10 ms); with
// children, that of its waited-for children too (fields 16, 17).
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name, in parentheses, may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	var ticks int64
	for _, i := range []int{11, 12} { // fields 14 and 15, counted from field 3
		n, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += n
	}
	return float64(ticks) / 100
}

// cpuMeter reads the CPU used by some processes over a window.
type cpuMeter struct {
	pids  []int
	start []float64
	t0    time.Time
}

func newCPUMeter(pids ...int) *cpuMeter {
	m := &cpuMeter{pids: pids, t0: time.Now()}
	for _, p := range pids {
		m.start = append(m.start, cpuSeconds(p))
	}
	return m
}

// cores is each process's CPU since newCPUMeter, in cores (CPU seconds
// per second).
func (m *cpuMeter) cores() []float64 {
	d := time.Since(m.t0).Seconds()
	var c []float64
	for i, p := range m.pids {
		c = append(c, (cpuSeconds(p)-m.start[i])/d)
	}
	return c
}

// produced is what the well-behaved producer saw in one window.
type produced struct {
	rate     float64          // messages accepted per second
	answers  map[string]int64 // "200", "503 BODY_BUDGET_EXCEEDED", "error: connection refused", ...
	dials    int64            // connections opened (8 workers keep theirs alive)
	p50, p99 time.Duration    // request latency
}

func (p produced) String() string {
	keys := make([]string, 0, len(p.answers))
	for k := range p.answers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " [%s]=%d", k, p.answers[k])
	}
	return fmt.Sprintf("%.0f msg/s, %d dials, latency p50 %v p99 %v, answers%s", p.rate, p.dials,
		p.p50.Round(10*time.Microsecond), p.p99.Round(10*time.Microsecond), b.String())
}

// produce runs a well-behaved producer (workers keep-alive connections,
// /mpub of 100 x 500 B, due now: straight to the embedded nsqd, whose
// disk queue takes them, so neither deferd's pending messages nor nsqd's
// memory grow with the load and RSS shows the attack) for d.
func produce(t *testing.T, base string, workers int, d time.Duration) produced {
	msg := bytes.Repeat([]byte("m"), 499)
	body := bytes.Repeat(append(msg, '\n'), 100)
	var dials atomic.Int64
	dialer := &net.Dialer{}
	tr := &http.Transport{MaxIdleConnsPerHost: workers,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return dialer.DialContext(ctx, network, addr)
		}}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var mu sync.Mutex
	answers := map[string]int64{}
	var lat []time.Duration
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			seen := map[string]int64{}
			for time.Now().Before(end) {
				t0 := time.Now()
				resp, err := cl.Post(base+"/mpub?topic=load", "text/plain", bytes.NewReader(body))
				if err != nil {
					seen[errorClass(err)]++
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				mine = append(mine, time.Since(t0))
				if resp.StatusCode == 200 {
					seen["200"]++
				} else {
					var m struct{ Message string }
					json.Unmarshal(b, &m)
					seen[strconv.Itoa(resp.StatusCode)+" "+m.Message]++
				}
			}
			mu.Lock()
			defer mu.Unlock()
			lat = append(lat, mine...)
			for k, v := range seen {
				answers[k] += v
			}
		}()
	}
	wg.Wait()
	p := produced{rate: float64(answers["200"]*100) / d.Seconds(), answers: answers, dials: dials.Load()}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		p.p50, p.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return p
}

// errorClass names a failed request's error by its kind.
func errorClass(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "error: connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "error: connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "error: broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "error: EOF"
	case errors.As(err, &ne) && ne.Timeout():
		return "error: timeout"
	}
	return "error: " + err.Error()
}
