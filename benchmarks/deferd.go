package benchmarks

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// BuildDeferd builds ./cmd/deferd from the module at repoDir into dir and
// returns the binary's path.
func BuildDeferd(repoDir, dir string) (string, error) {
	bin := filepath.Join(dir, "deferd")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/deferd")
	cmd.Dir = repoDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", &ErrNotRunnable{Reason: fmt.Sprintf("go build ./cmd/deferd: %v: %s", err, bytes.TrimSpace(out))}
	}
	return bin, nil
}

// Deferd runs the deferd binary as a subprocess that publishes to the
// harness's nsqd (--nsqd-tcp-address), and submits through its HTTP API:
// /mpub?topic=T&at=UNIX_MS for messages sharing a due millisecond, /pub
// otherwise. Each run gets a fresh --data-path.
type Deferd struct {
	Bin string
	// Args are extra command-line flags for deferd.
	Args []string

	env     Env
	addr    string
	dataDir string
	cmd     *exec.Cmd
	client  *http.Client
	logFile *os.File

	mu sync.RWMutex // guards cmd: held for writing while the process restarts

	exitMu  sync.Mutex
	exitErr error // set when the process exits by itself
	gen     int   // counts started processes
	killed  int   // gen of the last process this design killed
}

func NewDeferd(bin string, args ...string) *Deferd { return &Deferd{Bin: bin, Args: args} }

func (d *Deferd) Name() string { return "deferd" }

func (d *Deferd) Start(env Env) error {
	if d.Bin == "" {
		return &ErrNotRunnable{Reason: "no deferd binary"}
	}
	port, err := FreePort()
	if err != nil {
		return err
	}
	d.env = env
	d.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d.dataDir = filepath.Join(env.TempDir, "deferd-data")
	d.client = &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64},
	}
	f, err := os.Create(filepath.Join(env.TempDir, "deferd.log"))
	if err != nil {
		return err
	}
	d.logFile = f
	return d.start()
}

func (d *Deferd) start() error {
	args := append([]string{
		"--http-address", d.addr,
		"--data-path", d.dataDir,
		"--nsqd-tcp-address", d.env.NSQDTCPAddr,
	}, d.Args...)
	d.cmd = exec.Command(d.Bin, args...)
	d.cmd.Stdout, d.cmd.Stderr = d.logFile, d.logFile
	if err := d.cmd.Start(); err != nil {
		return &ErrNotRunnable{Reason: fmt.Sprintf("start deferd: %v", err)}
	}
	trackChild(d.cmd.Process)
	d.exitMu.Lock()
	d.gen++
	gen := d.gen
	d.exitMu.Unlock()
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := d.client.Get("http://" + d.addr + "/ping")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 && bytes.HasPrefix(body, []byte("OK")) {
				go d.watch(exited, gen)
				return nil
			}
		}
		select {
		case err := <-exited:
			return &ErrNotRunnable{Reason: fmt.Sprintf("deferd exited before /ping answered: %v (log: %s)", err, tail(d.logFile.Name()))}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.kill()
			return &ErrNotRunnable{Reason: "deferd /ping did not answer OK within 20 s"}
		}
	}
}

// watch records an exit this design did not cause, with the log's tail.
// gen identifies the process, so a kill is never taken for an exit of its
// own, however late this runs.
func (d *Deferd) watch(exited <-chan error, gen int) {
	err := <-exited
	d.exitMu.Lock()
	defer d.exitMu.Unlock()
	if d.killed != gen {
		d.exitErr = fmt.Errorf("deferd exited during the run: %v; log: %s", err, tail(d.logFile.Name()))
		d.env.logf("  %v", d.exitErr)
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 400 {
		b = b[len(b)-400:]
	}
	return string(bytes.TrimSpace(b))
}

func (d *Deferd) kill() {
	d.exitMu.Lock()
	d.killed = d.gen
	d.exitMu.Unlock()
	if d.cmd != nil && d.cmd.Process != nil {
		_ = d.cmd.Process.Signal(syscall.SIGKILL)
		untrackChild(d.cmd.Process)
		for i := 0; i < 200; i++ { // the Wait goroutine reaps it
			if err := d.cmd.Process.Signal(syscall.Signal(0)); err != nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// Submit posts each run of messages with the same due millisecond as one
// /mpub&binary=true (bodies are binary and may hold newlines) and a lone
// message as /pub, both with at=UNIX_MS.
//
// It does not wait for a crash and restart (Crash): requests in flight when
// deferd is killed fail, and so do those sent before it is back, as they do
// for every design (the harness counts them rejected).
func (d *Deferd) Submit(ctx context.Context, msgs []Msg) (int, error) {
	done := 0
	for done < len(msgs) {
		j := done + 1
		for j < len(msgs) && msgs[j].Due == msgs[done].Due {
			j++
		}
		if err := d.post(ctx, msgs[done:j]); err != nil {
			return done, err
		}
		done = j
	}
	return done, nil
}

func (d *Deferd) post(ctx context.Context, msgs []Msg) error {
	q := url.Values{"topic": {d.env.Topic}, "at": {strconv.FormatInt(msgs[0].Due/1e6, 10)}}
	var body []byte
	path := "/pub"
	if len(msgs) == 1 {
		body = msgs[0].Body
	} else {
		// nsqd's binary MPUB body: 4-byte count, then 4-byte size + body each.
		path = "/mpub"
		q.Set("binary", "true")
		n := 4
		for _, m := range msgs {
			n += 4 + len(m.Body)
		}
		body = make([]byte, 0, n)
		body = be32(body, uint32(len(msgs)))
		for _, m := range msgs {
			body = be32(body, uint32(len(m.Body)))
			body = append(body, m.Body...)
		}
	}
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+d.addr+path+"?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	rb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("deferd %s: %d %s", path, resp.StatusCode, bytes.TrimSpace(rb))
	}
	return nil
}

func be32(b []byte, v uint32) []byte {
	return append(b, byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// Stop kills deferd; it returns an error if deferd had exited by itself.
func (d *Deferd) Stop() error {
	d.kill()
	d.client.CloseIdleConnections()
	d.logFile.Close()
	d.exitMu.Lock()
	defer d.exitMu.Unlock()
	return d.exitErr
}

// Crash SIGKILLs deferd, with whatever requests are in flight, and restarts
// it on the same data path and port.
func (d *Deferd) Crash() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.kill()
	d.client.CloseIdleConnections()
	return d.start()
}

func (d *Deferd) CrashNote() string {
	return "deferd SIGKILLed and restarted on the same --data-path"
}

func (d *Deferd) External() []int {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if d.cmd == nil || d.cmd.Process == nil {
		return nil
	}
	return []int{d.cmd.Process.Pid}
}

// Memory is the deferd process's RSS (VmRSS in /proc/PID/status). Its GC
// cannot be forced from here, so the number includes garbage that process
// has not yet collected.
func (d *Deferd) Memory() (int64, string) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	n, _ := PIDRSS(d.cmd.Process.Pid)
	return n, "RSS of the deferd process (/proc VmRSS; its GC not forced)"
}

var _ Crasher = (*Deferd)(nil)
