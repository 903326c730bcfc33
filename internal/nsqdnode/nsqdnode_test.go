package nsqdnode_test

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqio/nsq/nsqd"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A message published over nsqd's HTTP API reaches a go-nsq consumer: the
// node is a real, working nsqd.
func TestStartPublishConsume(t *testing.T) {
	n := nsqdnodetest.Start(t, nsqdnode.Config{})
	resp, err := http.Post("http://"+n.HTTPAddr+"/pub?topic=t", "application/octet-stream", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("pub: status %d", resp.StatusCode)
	}
	got := make(chan string, 1)
	c, err := nsq.NewConsumer("t", "c", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error { got <- string(m.Body); return nil }))
	if err := c.ConnectToNSQD(n.TCPAddr); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	select {
	case b := <-got:
		if b != "hello" {
			t.Fatalf("body %q, want hello", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
}

// nsqdnode.MemQueueNone is nsqd's --mem-queue-size=0: published messages go to the
// disk queue; the default keeps them in memory.
func TestMemQueueNone(t *testing.T) {
	for _, c := range []struct {
		size        int64
		wantBackend int64
	}{{0, 0}, {nsqdnode.MemQueueNone, 3}} {
		n := nsqdnodetest.Start(t, nsqdnode.Config{MemQueueSize: c.size})
		for range 3 {
			resp, err := http.Post("http://"+n.HTTPAddr+"/pub?topic=t", "application/octet-stream", strings.NewReader("m"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		var st struct {
			Topics []struct {
				Depth        int64 `json:"depth"`
				BackendDepth int64 `json:"backend_depth"`
			} `json:"topics"`
		}
		resp, err := http.Get("http://" + n.HTTPAddr + "/stats?format=json&topic=t")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || len(st.Topics) != 1 {
			t.Fatalf("stats: %v, %+v", err, st)
		}
		if got := st.Topics[0]; got.Depth != 3 || got.BackendDepth != c.wantBackend {
			t.Fatalf("MemQueueSize %d: depth %d, on disk %d; want 3, %d", c.size, got.Depth, got.BackendDepth, c.wantBackend)
		}
	}
}

// lockedBuffer is a bytes.Buffer nsqd's goroutines may write while the
// test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// dialV2 connects to nsqd's TCP protocol and IDENTIFYs: the OK that comes
// back proves nsqd registered the client (it is one of the connections
// Exit closes) and is reading its next command.
func dialV2(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "  V2IDENTIFY\n\x00\x00\x00\x02{}"); err != nil {
		t.Fatal(err)
	}
	var hdr [8]byte // size, frame type
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:4])-4)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	if typ := binary.BigEndian.Uint32(hdr[4:]); typ != 0 || string(body) != "OK" {
		t.Fatalf("IDENTIFY: frame type %d %q, want the response OK", typ, body)
	}
	c.SetDeadline(time.Time{})
	return c.(*net.TCPConn)
}

func waitLog(t *testing.T, buf *lockedBuffer, substr string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(buf.String(), substr); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in nsqd's log:\n%s", substr, buf.String())
		}
	}
}

const closedConn = "use of closed network connection"

// Exit closes every client connection under nsqd's reader, and nsqd v1.3.0
// logs an ERROR "client(...) - failed to read command - read tcp ...: use of
// closed network connection" for each: expected, and not in a Node's log.
// The other lines of Exit still are. The first half runs a bare nsqd to
// show that the line is real (if a new nsqd words it differently, this
// fails and the filter in nsqdnode.go needs the new wording).
func TestExitDropsClosedConnectionError(t *testing.T) {
	t.Run("bare nsqd logs it", func(t *testing.T) {
		buf := &lockedBuffer{}
		o := nsqd.NewOptions()
		o.TCPAddress, o.HTTPAddress, o.HTTPSAddress = "127.0.0.1:0", "127.0.0.1:0", ""
		o.BroadcastAddress = "127.0.0.1"
		o.DataPath = t.TempDir()
		o.Logger = log.New(buf, "[nsqd] ", 0)
		if err := o.LogLevel.Set("warn"); err != nil {
			t.Fatal(err)
		}
		n, err := nsqd.New(o)
		if err != nil {
			t.Fatal(err)
		}
		go n.Main()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			// Main must be serving before Exit (see nsqdnode's waitServing).
			if resp, err := http.Get("http://" + n.RealHTTPAddr().String() + "/ping"); err == nil {
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("nsqd not serving")
			}
		}
		dialV2(t, n.RealTCPAddr().String())
		n.Exit()
		waitLog(t, buf, "ERROR: client(")
		if s := buf.String(); !strings.Contains(s, ") - failed to read command - read tcp ") || !strings.Contains(s, closedConn) {
			t.Fatalf("nsqd's Exit did not log the closed-connection ERROR:\n%s", s)
		}
	})
	t.Run("Node drops it", func(t *testing.T) {
		buf := &lockedBuffer{}
		n := nsqdnodetest.Start(t, nsqdnode.Config{Logger: buf, LogLevel: "info"})
		c := dialV2(t, n.TCPAddr)
		client := c.LocalAddr().String()
		n.Exit()
		s := buf.String()
		// The client's loop ended inside Exit, and Exit's own lines are there.
		for _, want := range []string{"[" + client + "] exiting ioloop", "NSQ: bye"} {
			if !strings.Contains(s, want) {
				t.Fatalf("no %q in the log:\n%s", want, s)
			}
		}
		if strings.Contains(s, closedConn) {
			t.Fatalf("the closed-connection ERROR of Exit is in the log:\n%s", s)
		}
	})
}

// Outside Exit nsqd's error lines pass, that of a client's failed read
// among them.
func TestLogErrorsOutsideExitPass(t *testing.T) {
	buf := &lockedBuffer{}
	n := nsqdnodetest.Start(t, nsqdnode.Config{Logger: buf})
	c := dialV2(t, n.TCPAddr)
	client := c.LocalAddr().String()
	c.SetLinger(0) // a reset: nsqd's read fails, and it logs that
	c.Close()
	waitLog(t, buf, "ERROR: client("+client+") - failed to read command - read tcp ")
	if !strings.Contains(buf.String(), "connection reset by peer") {
		t.Fatalf("no reset in the log:\n%s", buf.String())
	}
}
