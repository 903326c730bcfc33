package main

import (
	"bytes"
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
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// buildDeferd builds this command into a temporary directory.
func buildDeferd(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "deferd")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// proc is a running deferd. done is closed when it has exited; err is its
// exit status then.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	log  *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for the process's output copier and
// the test reading it at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startProc(t *testing.T, dir, bin string, args ...string) *proc {
	t.Helper()
	logBuf := &syncBuffer{}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logBuf
	cmd.Stderr = logBuf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), log: logBuf}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("deferd log:\n%s", logBuf.String())
		}
	})
	return p
}

// terminate sends SIGTERM and asserts a clean exit within 20s.
func (p *proc) terminate(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", p.err, p.log.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("deferd did not exit within 20s of SIGTERM")
	}
}

// startDeferd starts bin with args and, unless they name one, a free TCP
// protocol port (tests run side by side; the default 4190 is one port).
func startDeferd(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	if !slices.Contains(args, "--tcp-address") {
		args = append(args, "--tcp-address", "127.0.0.1:0")
	}
	return startProc(t, "", bin, args...)
}

func waitPing(t *testing.T, base string, p *proc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(base + "/ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("deferd exited before serving: %v\n%s", p.err, p.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("deferd did not answer /ping within 20s\n%s", p.log.String())
}

// SIGKILL deferd while messages are pending and being ingested, restart it
// on the same data path: every message it acknowledged is delivered.
// Duplicates are allowed (at-least-once) and counted; losses are not.
func TestCrashLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildDeferd(t)
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	data := t.TempDir()
	addr := freeAddr(t)
	base := "http://" + addr
	args := []string{"--http-address", addr, "--data-path", data, "--nsqd-tcp-address", node.TCPAddr, "--segment-size", "262144"}

	var (
		mu       sync.Mutex
		received = map[string]int{}
	)
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 1000
	c, err := nsq.NewConsumer("crash", "test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		mu.Lock()
		received[string(m.Body)]++
		mu.Unlock()
		return nil
	}))
	if err := c.ConnectToNSQD(node.TCPAddr); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()

	p1 := startDeferd(t, bin, args...)
	waitPing(t, base, p1)

	// Producers publish until the kill; what got a 200 must arrive.
	var (
		ackMu  sync.Mutex
		acked  []string
		seq    atomic.Int64
		stop   = make(chan struct{})
		wg     sync.WaitGroup
		client = &http.Client{Timeout: 5 * time.Second}
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Every fourth request is due at once: it goes straight to
				// nsqd (--direct-publish) and its 200 means nsqd has it.
				delay := "&defer=" + strconv.Itoa(i*37%2500)
				if i%4 < 2 && (i/4)%2 == 0 {
					delay = ""
				}
				var body []byte
				var bodies []string
				path := "/pub?topic=crash" + delay
				if i%2 == 0 {
					path = "/mpub?topic=crash" + delay
					for k := 0; k < 20; k++ {
						bodies = append(bodies, fmt.Sprintf("w%d-%d", w, seq.Add(1)))
					}
					body = []byte(joinLines(bodies))
				} else {
					bodies = []string{fmt.Sprintf("w%d-%d", w, seq.Add(1))}
					body = []byte(bodies[0])
				}
				resp, err := client.Post(base+path, "application/octet-stream", bytes.NewReader(body))
				if err != nil {
					continue // killed mid-request: not acknowledged
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 && string(b) == "OK" {
					ackMu.Lock()
					acked = append(acked, bodies...)
					ackMu.Unlock()
				}
			}
		}(w)
	}
	time.Sleep(1500 * time.Millisecond)
	var st struct {
		Direct uint64 `json:"published_direct"`
	}
	if resp, err := client.Get(base + "/stats"); err != nil {
		t.Fatal(err)
	} else {
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || st.Direct == 0 {
			t.Fatalf("/stats: published_direct %d, err %v; the test needs messages published directly", st.Direct, err)
		}
	}
	if err := p1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p1.done
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	ackMu.Lock()
	nAcked := len(acked)
	ackMu.Unlock()
	if nAcked < 500 {
		t.Fatalf("only %d messages acknowledged before the kill; the test needs more load", nAcked)
	}
	mu.Lock()
	before := len(received)
	mu.Unlock()
	t.Logf("killed with %d acknowledged (%d of them published directly by then), %d delivered so far", nAcked, st.Direct, before)

	p2 := startDeferd(t, bin, args...)
	waitPing(t, base, p2)
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for _, b := range acked {
			if received[b] == 0 {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages lost across kill -9", missing, nAcked)
		}
		time.Sleep(100 * time.Millisecond)
	}
	mu.Lock()
	dups := 0
	for _, n := range received {
		if n > 1 {
			dups += n - 1
		}
	}
	mu.Unlock()
	t.Logf("all %d acknowledged messages delivered after restart; %d duplicates (at-least-once)", nAcked, dups)

	// Graceful stop: SIGTERM exits 0.
	p2.terminate(t)
}

func joinLines(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(x)
	}
	return b.String()
}
