package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
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

// TestAttack drives the deferd binary with hostile clients, from a
// process of their own (TestAttackerChild): slowloris connections (a
// request head one byte per second) and half-sent 5 MB /mpub bodies,
// while a well-behaved producer publishes from the test process. It checks
// that deferd's RSS stays bounded, that the timeouts close the slowloris
// connections and that the producer keeps its keep-alive connections; it
// reports the producer's rate under attack against its rate before it,
// measured in the same run, what the producer was answered, and the CPU of
// deferd, the attacker and the producer.
//
// By default a light version (200 slowloris, 20 half bodies, 1 s/2 s
// timeouts) runs. DEFERD_ATTACK=1 runs the heavy one: 2,000 slowloris and
// 200 half bodies, reopened as deferd closes them, with deferd's default
// limits, for ATTACK_SECONDS (default 30) of attack, once with the
// attacker at normal priority and once at nice 19 (ATTACK_NICE, a comma
// list of nice values, default "0,19"; the light one "0"); ATTACK_PERF=file
// records deferd with perf(1) while the first attack is measured:
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
	nices := "0"
	if heavy {
		slow, half, maxRSS = 2000, 200, 400<<20
		attackFor = time.Duration(envInt("ATTACK_SECONDS", 30)) * time.Second
		measure = 10 * time.Second
		args = nil // the defaults
		headerTimeout = 10 * time.Second
		nices = "0,19"
	}
	if v := os.Getenv("ATTACK_NICE"); v != "" {
		nices = v
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
	t.Logf("deferd RSS idle: %.0f MiB", float64(vmRSS(pid))/(1<<20))
	for i, nice := range strings.Split(nices, ",") {
		perf := ""
		if i == 0 {
			perf = os.Getenv("ATTACK_PERF")
		}
		attackPhase(t, attackRun{base: base, addr: httpAddr, pid: pid, workers: workers, slow: slow, half: half,
			heavy: heavy, nice: nice == "19", attackFor: attackFor, measure: measure, perf: perf,
			maxRSS: maxRSS, headerTimeout: headerTimeout})
	}
	metrics := get(t, base+"/metrics")
	for _, l := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(l, "deferd_ingest_http_") || strings.HasPrefix(l, "deferd_ingest_body_budget") ||
			strings.HasPrefix(l, "deferd_ingest_client_errors") || strings.HasPrefix(l, "deferd_ingest_log_lines") {
			t.Logf("  %s", l)
		}
	}
	if n := strings.Count(p.log.String(), "\n"); n > 100 {
		t.Errorf("deferd logged %d lines under attack", n)
	}
}

// attackRun is one phase of TestAttack.
type attackRun struct {
	base, addr               string
	pid, workers, slow, half int
	heavy, nice              bool
	attackFor, measure       time.Duration
	perf                     string // perf record's output file, or ""
	maxRSS                   int64
	headerTimeout            time.Duration
}

// attackPhase measures the producer alone, then under an attack from a
// process of its own, and checks the bounds.
func attackPhase(t *testing.T, r attackRun) {
	self := os.Getpid()
	cpu := newCPUMeter(r.pid, self)
	before := produce(t, r.base, r.workers, r.measure)
	beforeCPU := cpu.cores()

	var peak atomic.Int64
	stopSampling, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak.Store(max(peak.Load(), vmRSS(r.pid)))
			select {
			case <-stopSampling:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	ap := startAttacker(t, r.addr, r.slow, r.half, r.heavy, r.nice)
	time.Sleep(min(r.attackFor/3, 3*time.Second)) // the attack is in place
	var perfCmd *exec.Cmd
	if r.perf != "" {
		perfCmd = exec.Command("perf", "record", "-F", "499", "-g", "-p", strconv.Itoa(r.pid), "-o", r.perf,
			"--", "sleep", strconv.Itoa(int(r.measure.Seconds())))
		if err := perfCmd.Start(); err != nil {
			t.Fatalf("perf: %v", err)
		}
	}
	cpu = newCPUMeter(r.pid, ap.cmd.Process.Pid, self)
	during := produce(t, r.base, r.workers, r.measure)
	duringCPU := cpu.cores()
	if perfCmd != nil {
		perfCmd.Wait()
	}
	if rest := r.attackFor - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	as := ap.stop(t)
	close(stopSampling)
	<-sampled

	t.Logf("attacker at nice %d: %d slowloris, %d half bodies", map[bool]int{true: 19}[r.nice], r.slow, r.half)
	t.Logf("  deferd RSS peak under attack %.0f MiB (bound %d MiB)", float64(peak.Load())/(1<<20), r.maxRSS>>20)
	t.Logf("  slowloris: %d opened, %d closed by deferd, longest life %v (header timeout %v)", as.SlowOpen, as.SlowClosed, as.SlowLongest.Round(time.Millisecond), r.headerTimeout)
	t.Logf("  half bodies: %d opened, %d closed by deferd, first answers %v", as.HalfOpen, as.HalfClosed, as.Answers)
	t.Logf("  producer alone: %v", before)
	t.Logf("  producer under attack: %v", during)
	t.Logf("  CPU alone (cores): deferd %.2f, producer %.2f; under attack: deferd %.2f, attacker %.2f, producer %.2f",
		beforeCPU[0], beforeCPU[1], duringCPU[0], duringCPU[1], duringCPU[2])
	t.Logf("  producer ratio under attack / alone: %.2f", during.rate/before.rate)
	if peak.Load() > r.maxRSS {
		t.Errorf("deferd RSS peaked at %d MiB under attack, bound %d MiB", peak.Load()>>20, r.maxRSS>>20)
	}
	if !r.heavy && as.SlowClosed < int64(r.slow) {
		t.Errorf("%d of %d slowloris connections closed by deferd within %v (header timeout %v)", as.SlowClosed, r.slow, r.attackFor, r.headerTimeout)
	}
	if as.SlowLongest > r.headerTimeout+3*time.Second {
		t.Errorf("a slowloris connection lived %v, header timeout %v", as.SlowLongest, r.headerTimeout)
	}
	// Go's Transport may dial one more connection for a request that
	// starts while the last response's connection is on its way back to
	// the idle pool, and then keeps both: up to one extra per worker is
	// not a close by deferd; more is.
	if during.dials > int64(2*r.workers) {
		t.Errorf("the producer's %d workers opened %d connections under attack: keep-alive connections were closed", r.workers, during.dials)
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
