package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// vmRSS is the resident set of process pid in bytes (/proc/PID/status).
func vmRSS(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return -1
}

// attack is a set of hostile HTTP clients against addr until stop closes.
type attack struct {
	addr string
	stop chan struct{}
	wg   sync.WaitGroup

	slowOpen, slowClosed atomic.Int64 // slowloris connections opened; closed by deferd
	slowLife             sync.Mutex
	slowLives            []time.Duration // open to closed-by-deferd
	halfOpen, halfClosed atomic.Int64
	answers              sync.Map // first status line seen by half bodies -> *atomic.Int64
}

// slowloris keeps n connections sending a request head one header byte
// per second, never ending it; each closed by deferd is opened again if
// reopen.
func (a *attack) slowloris(n int, reopen bool) {
	for range n {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for {
				c, err := net.Dial("tcp", a.addr)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
				} else {
					a.slowOpen.Add(1)
					opened := time.Now()
					closed := make(chan struct{})
					go func() { io.Copy(io.Discard, c); close(closed) }()
					io.WriteString(c, "POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nX-Slow: ")
				loop:
					for {
						select {
						case <-a.stop:
							c.Close()
							return
						case <-closed:
							a.slowClosed.Add(1)
							a.slowLife.Lock()
							a.slowLives = append(a.slowLives, time.Since(opened))
							a.slowLife.Unlock()
							break loop
						case <-time.After(time.Second):
							c.Write([]byte("a"))
						}
					}
					c.Close()
				}
				if !reopen {
					<-a.stop
					return
				}
			}
		}()
	}
}

// halfBodies keeps n connections that declare a size-byte /mpub body,
// send all but 100 KB of it and stall.
func (a *attack) halfBodies(n, size int, reopen bool) {
	line := bytes.Repeat([]byte("x"), 999)
	line = append(line, '\n')
	part := bytes.Repeat(line, (size-100_000)/len(line))
	for range n {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for {
				c, err := net.Dial("tcp", a.addr)
				if err != nil {
					time.Sleep(100 * time.Millisecond)
				} else {
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
						c.Close()
						return
					case <-closed:
						a.halfClosed.Add(1)
					}
					c.Close()
				}
				if !reopen {
					<-a.stop
					return
				}
			}
		}()
	}
}

// produce runs a well-behaved producer (workers keep-alive connections,
// /mpub of 100 x 500 B, due now: straight to the embedded nsqd, whose
// disk queue takes them, so neither deferd's pending messages nor nsqd's
// memory grow with the load and RSS shows the attack) for d; it returns
// messages per second and the share of requests not answered 200.
func produce(t *testing.T, base string, workers int, d time.Duration) (float64, float64) {
	msg := bytes.Repeat([]byte("m"), 499)
	body := bytes.Repeat(append(msg, '\n'), 100)
	tr := &http.Transport{MaxIdleConnsPerHost: workers}
	defer tr.CloseIdleConnections()
	cl := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var ok, bad atomic.Int64
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) {
				resp, err := cl.Post(base+"/mpub?topic=load", "text/plain", bytes.NewReader(body))
				if err != nil {
					bad.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					ok.Add(1)
				} else {
					bad.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	total := ok.Load() + bad.Load()
	if total == 0 {
		return 0, 1
	}
	return float64(ok.Load()*100) / d.Seconds(), float64(bad.Load()) / float64(total)
}

// TestAttack drives the deferd binary with hostile clients: slowloris
// connections (a request head one byte per second) and half-sent 5 MB
// /mpub bodies, while a well-behaved producer publishes. It checks that
// deferd's RSS stays bounded and that the timeouts close the slowloris
// connections; it reports the producer's rate under attack against its
// rate before it, measured in the same run.
//
// By default a light version (200 slowloris, 20 half bodies, 1 s/2 s
// timeouts) runs. DEFERD_ATTACK=1 runs the heavy one: 2,000 slowloris and
// 200 half bodies, reopened as deferd closes them, with deferd's default
// limits, for ATTACK_SECONDS (default 30) of attack:
//
//	DEFERD_ATTACK=1 go test -run 'TestAttack$' -count=1 -timeout 10m -v ./cmd/deferd
func TestAttack(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	heavy := os.Getenv("DEFERD_ATTACK") == "1"
	slow, half, maxRSS := 200, 20, int64(300<<20)
	attackFor := 5 * time.Second
	measure := 3 * time.Second
	args := []string{"--http-header-timeout", "1s", "--http-body-timeout", "2s"}
	headerTimeout := time.Second
	if heavy {
		slow, half, maxRSS = 2000, 200, 400<<20
		attackFor = time.Duration(envInt("ATTACK_SECONDS", 30)) * time.Second
		measure = 10 * time.Second
		args = nil // the defaults
		headerTimeout = 10 * time.Second
	}
	bin := buildDeferd(t)
	httpAddr := freeAddr(t)
	base := "http://" + httpAddr
	p := startDeferd(t, bin, append([]string{"--http-address", httpAddr, "--data-path", t.TempDir(),
		"--embedded-nsqd-tcp-address", freeAddr(t), "--embedded-nsqd-http-address", freeAddr(t),
		"--embedded-nsqd-mem-queue-size", "0"}, args...)...)
	waitPing(t, base, p)
	pid := p.cmd.Process.Pid
	const workers = 8

	produce(t, base, workers, time.Second) // warm up
	idleRSS := vmRSS(pid)
	before, beforeBad := produce(t, base, workers, measure)

	a := &attack{addr: httpAddr, stop: make(chan struct{})}
	var peak atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak.Store(max(peak.Load(), vmRSS(pid)))
			select {
			case <-a.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	a.slowloris(slow, heavy)
	a.halfBodies(half, 5_000_000, heavy)
	time.Sleep(min(attackFor/3, 3*time.Second)) // the attack is in place
	during, duringBad := produce(t, base, workers, measure)
	if rest := attackFor - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	metrics := get(t, base+"/metrics")
	close(a.stop)
	a.wg.Wait()
	<-sampled

	a.slowLife.Lock()
	var longest time.Duration
	for _, l := range a.slowLives {
		longest = max(longest, l)
	}
	closedBy := len(a.slowLives)
	a.slowLife.Unlock()
	answers := map[string]int64{}
	a.answers.Range(func(k, v any) bool { answers[k.(string)] = v.(*atomic.Int64).Load(); return true })
	ratio := during / before
	t.Logf("deferd RSS: %.0f MB idle, %.0f MB peak under attack (bound %d MB)", float64(idleRSS)/1e6, float64(peak.Load())/1e6, maxRSS>>20)
	t.Logf("slowloris: %d opened, %d closed by deferd, longest life %v (header timeout %v)", a.slowOpen.Load(), closedBy, longest.Round(time.Millisecond), headerTimeout)
	t.Logf("half bodies: %d opened, %d closed by deferd, first answers %v", a.halfOpen.Load(), a.halfClosed.Load(), answers)
	t.Logf("producer (%d workers, /mpub 100 x 500 B): %.0f msg/s before (%.1f%% not 200), %.0f msg/s under attack (%.1f%% not 200): ratio %.2f",
		workers, before, 100*beforeBad, during, 100*duringBad, ratio)
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "deferd_ingest_http_") || strings.HasPrefix(l, "deferd_ingest_body_budget") ||
			strings.HasPrefix(l, "deferd_ingest_client_errors") || strings.HasPrefix(l, "deferd_ingest_log_lines") {
			t.Logf("  %s", l)
		}
	}
	if n := strings.Count(p.log.String(), "\n"); n > 100 {
		t.Errorf("deferd logged %d lines under attack", n)
	}
	if peak.Load() > maxRSS {
		t.Errorf("deferd RSS peaked at %d MB under attack, bound %d MB", peak.Load()>>20, maxRSS>>20)
	}
	if !heavy && closedBy < slow {
		t.Errorf("%d of %d slowloris connections closed by deferd within %v (header timeout %v)", closedBy, slow, attackFor, headerTimeout)
	}
	if longest > headerTimeout+3*time.Second {
		t.Errorf("a slowloris connection lived %v, header timeout %v", longest, headerTimeout)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}
