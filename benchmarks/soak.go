package benchmarks

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// SoakConfig is one soak run: a steady open-loop load through the deferd
// binary into an nsqd process of its own and out to a consumer, for a long
// time, sampled every Sample.
type SoakConfig struct {
	DeferdBin, NSQDBin string
	DeferdArgs         []string
	Rate               float64       // msg/s offered
	Duration           time.Duration // how long the load is offered
	Delay              time.Duration // every message's delay
	Size               int           // body bytes
	Sample             time.Duration // sampling and progress interval
	Grace              time.Duration // wait after the last due time before counting the rest lost
	Senders            int
	BufferedConsumer   bool
	NSQDMemQueue       int64
	TempDir            string
	Logf               func(format string, args ...any)
}

// SoakSample is one reading, T seconds after the load started. Counters
// are cumulative; CPU in seconds.
type SoakSample struct {
	T                                     float64
	Offered, Accepted, Refused, Delivered uint64
	Dup, Early                            uint64
	Pending                               int64
	DiskBytes                             int64 // allocated blocks under deferd's --data-path
	DiskFree                              int64 // free on its file system
	RSS, HeapInuse, GoSys                 int64 // deferd's
	NSQDRSS                               int64
	DeferdCPU, NSQDCPU, SelfCPU           float64
	Load1                                 float64
	DeferdLate                            []uint64 // cumulative counts per DeferdLe bucket of deferd's own histogram
}

// SoakReport is what a soak run leaves: enough to write the table and the
// chart again (soak.json).
type SoakReport struct {
	Header                       string
	Rate                         float64
	Duration, Delay              time.Duration
	Size                         int
	Offered, Accepted, Refused   uint64
	Delivered, Lost, Dup, Early  uint64
	RefusedBy                    map[string]uint64 // error text -> messages
	Samples                      []SoakSample
	DeferdLe                     []float64 // seconds: upper bounds of deferd's lateness buckets
	Minutes                      []LatHist // consumer lateness by minute of receive time
	Notes                        []string
	DeferdCPUTotal, NSQDCPUTotal float64 // seconds over the run
	SelfCPUTotal                 float64
	Load1Start, Load1End         float64
}

// RunSoak runs c and returns its report (also when the run was cut short:
// then Notes say why).
func RunSoak(c SoakConfig) (*SoakReport, error) {
	logf := c.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if c.Size <= 0 {
		c.Size = 500
	}
	if c.Sample <= 0 {
		c.Sample = 10 * time.Second
	}
	if c.Grace <= 0 {
		c.Grace = 15 * time.Second
	}
	if c.Senders <= 0 {
		c.Senders = 4
	}
	n := int(c.Rate * c.Duration.Seconds())
	rep := &SoakReport{Rate: c.Rate, Duration: c.Duration, Delay: c.Delay, Size: c.Size, RefusedBy: map[string]uint64{}}
	rep.Load1Start = load1()

	nq, err := startNSQDProc(c.NSQDBin, filepath.Join(c.TempDir, "nsqd"), c.NSQDMemQueue, filepath.Join(c.TempDir, "nsqd.log"))
	if err != nil {
		return nil, err
	}
	defer nq.stop()
	logf("nsqd (pid %d) at %s, http %s", nq.cmd.Process.Pid, nq.tcp, nq.http)

	topic := fmt.Sprintf("soak_%d", time.Now().Unix()%1e6)
	// No nsqd TCP listener for producers: its default port (4190) may be
	// another deferd's on a shared machine; the soak publishes over HTTP.
	d := NewDeferd(c.DeferdBin, append([]string{"--tcp-address="}, c.DeferdArgs...)...)
	if err := d.Start(Env{NSQDTCPAddr: nq.tcp, NSQDHTTPAddr: nq.http, Topic: topic, TempDir: c.TempDir, Logf: logf}); err != nil {
		return nil, fmt.Errorf("deferd: %w", err)
	}
	dStopped := false
	defer func() {
		if !dStopped {
			d.Stop()
		}
	}()
	dpid := d.cmd.Process.Pid
	logf("deferd (pid %d) at %s, data %s", dpid, d.addr, d.dataDir)
	if info, err := httpGet(d.client, "http://"+d.addr+"/info"); err == nil {
		logf("deferd /info: %s", strings.TrimSpace(info))
	}

	start := time.Now()
	cons, err := NewSoakConsumer(nq.tcp, topic, n, c.BufferedConsumer, start)
	if err != nil {
		return nil, err
	}
	defer cons.Stop()

	var offered, accepted, refused atomic.Uint64
	accBits := make([]uint64, (n+63)/64)
	var refMu sync.Mutex
	var maxDue atomic.Int64

	// Sampler: every c.Sample, one SoakSample and a progress line.
	self0, d0, nq0 := SelfCPU(), cpuSec(dpid), cpuSec(nq.cmd.Process.Pid)
	var smu sync.Mutex
	sample := func() SoakSample {
		s := SoakSample{T: time.Since(start).Seconds(), Offered: offered.Load(), Accepted: accepted.Load(), Refused: refused.Load()}
		s.Delivered, s.Dup, s.Early = cons.Counts()
		s.DiskBytes = duBytes(d.dataDir)
		s.DiskFree, _ = statfsFree(d.dataDir)
		s.RSS, _ = PIDRSS(dpid)
		s.NSQDRSS, _ = PIDRSS(nq.cmd.Process.Pid)
		s.DeferdCPU, s.NSQDCPU, s.SelfCPU = cpuSec(dpid)-d0, cpuSec(nq.cmd.Process.Pid)-nq0, SelfCPU().Seconds()-self0.Seconds()
		s.Load1 = load1()
		if m, err := httpGet(d.client, "http://"+d.addr+"/metrics"); err == nil {
			vals, le, cum := parseMetrics(m)
			s.Pending, s.HeapInuse, s.GoSys = int64(vals["deferd_pending_messages"]), int64(vals["go_memstats_heap_inuse_bytes"]), int64(vals["go_memstats_sys_bytes"])
			smu.Lock()
			if rep.DeferdLe == nil {
				rep.DeferdLe = le
			}
			if len(le) == len(rep.DeferdLe) {
				s.DeferdLate = cum
			}
			smu.Unlock()
		}
		return s
	}
	progress := func(s SoakSample) {
		var prev SoakSample
		smu.Lock()
		if k := len(rep.Samples); k > 1 {
			prev = rep.Samples[k-2]
		}
		smu.Unlock()
		dt := s.T - prev.T
		mins := cons.Minutes()
		p99 := "-"
		if k := len(mins); k > 0 {
			p99 = fmtDur(time.Duration(mins[k-1].Quantile(0.99)) * time.Microsecond)
		}
		logf("t=%4.0fs offered %d accepted %d refused %d delivered %d (%.0f/s) early %d dup %d | pending %d | disk %.2f GB | rss %d MiB heap %d MiB | deferd %.2f nsqd %.2f cores | p99 this minute %s | load %.2f",
			s.T, s.Offered, s.Accepted, s.Refused, s.Delivered, float64(s.Delivered-prev.Delivered)/dt, s.Early, s.Dup,
			s.Pending, float64(s.DiskBytes)/1e9, s.RSS>>20, s.HeapInuse>>20,
			(s.DeferdCPU-prev.DeferdCPU)/dt, (s.NSQDCPU-prev.NSQDCPU)/dt, p99, s.Load1)
	}
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(c.Sample)
		defer t.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-t.C:
				s := sample()
				smu.Lock()
				rep.Samples = append(rep.Samples, s)
				smu.Unlock()
				progress(s)
			}
		}
	}()

	// Open-loop producer: every 5 ms, what the rate owes, in batches of
	// what 5 ms of it makes (at most 500), to Senders goroutines.
	batch := max(1, min(500, int(c.Rate*0.005)))
	batches := make(chan []Msg, 256)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var swg sync.WaitGroup
	for range c.Senders {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for b := range batches {
				k, err := d.Submit(ctx, b)
				for _, m := range b[:k] {
					atomic.OrUint64(&accBits[m.Seq/64], 1<<(m.Seq%64))
				}
				if k > 0 {
					for {
						cur := maxDue.Load()
						if b[k-1].Due <= cur || maxDue.CompareAndSwap(cur, b[k-1].Due) {
							break
						}
					}
				}
				accepted.Add(uint64(k))
				if err != nil {
					refused.Add(uint64(len(b) - k))
					key := err.Error()
					if len(key) > 120 {
						key = key[:120]
					}
					refMu.Lock()
					rep.RefusedBy[key] += uint64(len(b) - k)
					refMu.Unlock()
				}
			}
		}()
	}
	sent := 0
	for sent < n {
		target := min(n, int(c.Rate*time.Since(start).Seconds())+1)
		for sent < target {
			k := min(batch, target-sent)
			b := make([]Msg, k)
			due := time.Now().Add(c.Delay)
			for i := range b {
				b[i] = NewMsg(uint64(sent+i), due, c.Size)
			}
			batches <- b
			sent += k
			offered.Add(uint64(k))
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(batches)
	swg.Wait()
	offerEnd := time.Since(start)
	logf("offer done after %s: offered %d, accepted %d, refused %d", offerEnd.Round(time.Millisecond), offered.Load(), accepted.Load(), refused.Load())

	deadline := time.Unix(0, maxDue.Load()).Add(c.Grace)
	for {
		del, _, _ := cons.Counts()
		if del >= accepted.Load() || time.Now().After(deadline) {
			break
		}
		if err := cons.Err(); err != nil {
			rep.Notes = append(rep.Notes, "measuring consumer disconnected: "+err.Error())
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // duplicates right behind
	close(stopSampling)
	<-sampled
	last := sample()
	rep.Samples = append(rep.Samples, last)
	progress(last)

	rep.Offered, rep.Accepted, rep.Refused = offered.Load(), accepted.Load(), refused.Load()
	rep.Delivered, rep.Dup, rep.Early = cons.Counts()
	rep.Lost = cons.Missing(accBits)
	rep.Minutes = cons.Minutes()
	rep.DeferdCPUTotal, rep.NSQDCPUTotal, rep.SelfCPUTotal = last.DeferdCPU, last.NSQDCPU, last.SelfCPU
	rep.Load1End = load1()
	dStopped = true
	if err := d.Stop(); err != nil {
		rep.Notes = append(rep.Notes, err.Error())
	}
	if err := nq.exitErr(); err != nil {
		rep.Notes = append(rep.Notes, "nsqd: "+err.Error())
	}
	return rep, nil
}

func cpuSec(pid int) float64 {
	c, _ := PIDCPU(pid)
	return c.Seconds()
}

func load1() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func httpGet(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return string(b), err
}

// parseMetrics reads the unlabeled samples of Prometheus text, and the
// buckets of deferd's lateness histogram (upper bounds in seconds, the
// last, +Inf, as math.MaxFloat64; with their cumulative counts).
func parseMetrics(text string) (vals map[string]float64, le []float64, cum []uint64) {
	vals = map[string]float64{}
	const bucket = `deferd_delivery_lateness_le_seconds_bucket{le="`
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if rest, ok := strings.CutPrefix(line, bucket); ok {
			q := strings.IndexByte(rest, '"')
			sp := strings.LastIndexByte(rest, ' ')
			if q < 0 || sp < 0 {
				continue
			}
			b, err1 := strconv.ParseFloat(rest[:q], 64)
			if math.IsInf(b, 1) {
				b = math.MaxFloat64 // +Inf: JSON has no infinity
			}
			v, err2 := strconv.ParseFloat(rest[sp+1:], 64)
			if err1 == nil && err2 == nil {
				le = append(le, b)
				cum = append(cum, uint64(v))
			}
			continue
		}
		name, v, ok := strings.Cut(line, " ")
		if !ok || strings.ContainsRune(name, '{') {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			vals[name] = f
		}
	}
	return vals, le, cum
}

// duBytes is the space allocated to the files under dir (st_blocks).
func duBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return nil
		}
		if fi, err := e.Info(); err == nil {
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

func statfsFree(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// BuildNSQD builds nsqd (github.com/nsqio/nsq/apps/nsqd, a tool of the
// deferd module: `go tool nsqd`) from the module at repoDir into dir.
func BuildNSQD(repoDir, dir string) (string, error) {
	bin := filepath.Join(dir, "nsqd")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/nsqio/nsq/apps/nsqd")
	cmd.Dir = repoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build nsqd: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return bin, nil
}

// nsqdProc is nsqd as a process of its own on 127.0.0.1.
type nsqdProc struct {
	cmd       *exec.Cmd
	tcp, http string
	exited    chan struct{}
	err       error
	stopping  atomic.Bool
}

func startNSQDProc(bin, dataDir string, memQueue int64, logPath string) (*nsqdProc, error) {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	tp, err := FreePort()
	if err != nil {
		return nil, err
	}
	hp, err := FreePort()
	if err != nil {
		return nil, err
	}
	p := &nsqdProc{tcp: net.JoinHostPort("127.0.0.1", strconv.Itoa(tp)), http: net.JoinHostPort("127.0.0.1", strconv.Itoa(hp)), exited: make(chan struct{})}
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := []string{"--tcp-address", p.tcp, "--http-address", p.http, "--data-path", dataDir,
		"--broadcast-address", "127.0.0.1", "--log-level", "warn"}
	if memQueue > 0 {
		args = append(args, "--mem-queue-size", strconv.FormatInt(memQueue, 10))
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	if err := p.cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start nsqd: %w", err)
	}
	trackChild(p.cmd.Process)
	go func() {
		p.err = p.cmd.Wait()
		lf.Close()
		close(p.exited)
	}()
	cl := &http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(20 * time.Second); ; {
		if body, err := httpGet(cl, "http://"+p.http+"/ping"); err == nil && strings.HasPrefix(body, "OK") {
			return p, nil
		}
		select {
		case <-p.exited:
			return nil, fmt.Errorf("nsqd exited at start: %v (log: %s)", p.err, tail(logPath))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, errors.New("nsqd /ping did not answer OK within 20 s")
		}
	}
}

// exitErr is non-nil if nsqd exited before stop.
func (p *nsqdProc) exitErr() error {
	select {
	case <-p.exited:
		if !p.stopping.Load() {
			return fmt.Errorf("exited during the run: %v", p.err)
		}
	default:
	}
	return nil
}

func (p *nsqdProc) stop() {
	if p.stopping.Swap(true) {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	untrackChild(p.cmd.Process)
}
