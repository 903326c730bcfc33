package deferd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
)

// harness is one deferd (engine + HTTP server) publishing to a real nsqd.
type harness struct {
	t    testing.TB
	e    *Scheduler
	srv  *ingest.Server
	base string
	dir  string
	opts Options
}

// testOptions are small, quick options for tests: data under dir,
// publishing to addrs, the HTTP API on a free port.
func testOptions(dir string, addrs ...string) Options {
	o := NewOptions()
	o.DataPath = dir
	o.NSQDTCPAddresses = addrs
	o.HTTPAddress = "127.0.0.1:0"
	o.SegmentSize = 1 << 20
	o.PoolSize = 8
	o.RetryBackoff = 200 * time.Millisecond
	o.PublishBackoff = 20 * time.Millisecond
	o.ConnsPerNSQD = 2
	o.CompactInterval = 0
	o.IDRetention = 0 // the tests of id retention (operator_test.go) set it
	return o
}

func startHarness(t testing.TB, opts Options) *harness {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	e, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv, err := e.ListenHTTP()
	if err != nil {
		e.Close(time.Second)
		t.Fatalf("ListenHTTP: %v", err)
	}
	go srv.Serve()
	h := &harness{t: t, e: e, srv: srv, base: "http://" + srv.Addr(), dir: opts.DataPath, opts: opts}
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.srv.Shutdown()
	h.e.Close(5 * time.Second)
}

// post sends a POST and returns status and body.
func (h *harness) post(path string, body []byte) (int, string) {
	h.t.Helper()
	resp, err := http.Post(h.base+path, "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		h.t.Fatalf("POST %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (h *harness) mustPost(path string, body []byte) {
	h.t.Helper()
	if code, b := h.post(path, body); code != 200 || b != "OK" {
		h.t.Fatalf("POST %s: %d %q", path, code, b)
	}
}

func (h *harness) stats() Stats {
	h.t.Helper()
	resp, err := http.Get(h.base + "/stats")
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var s Stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		h.t.Fatalf("decode /stats: %v", err)
	}
	return s
}

// received is one message seen by the consumer.
type received struct {
	body []byte
	at   time.Time
}

// collector consumes a topic from nsqd and records every message.
type collector struct {
	mu   sync.Mutex
	msgs []received
	c    *nsq.Consumer
}

func consume(t testing.TB, addr, topic string) *collector {
	t.Helper()
	col := &collector{}
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 1000
	cfg.LookupdPollInterval = time.Second
	c, err := nsq.NewConsumer(topic, "test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		now := time.Now()
		col.mu.Lock()
		col.msgs = append(col.msgs, received{append([]byte(nil), m.Body...), now})
		col.mu.Unlock()
		return nil
	}))
	if err := c.ConnectToNSQD(addr); err != nil {
		t.Fatal(err)
	}
	col.c = c
	t.Cleanup(c.Stop)
	return col
}

func (c *collector) snapshot() []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]received(nil), c.msgs...)
}

// bodies returns the bodies received so far, in order, as strings.
func (c *collector) bodies() []string {
	var out []string
	for _, r := range c.snapshot() {
		out = append(out, string(r.body))
	}
	return out
}

// waitCount waits until the collector has at least n messages.
func (c *collector) waitCount(t testing.TB, n int, timeout time.Duration) []received {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := c.snapshot()
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d messages, want %d, within %v", len(got), n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testBody makes a recognisable binary-safe body: seq, the earliest time
// it may arrive (unix ns) and padding that includes '\n' and 0 bytes only
// for binary mode.
func testBody(seq int, notBefore time.Time, size int, binarySafe bool) []byte {
	b := make([]byte, 16, size)
	binary.BigEndian.PutUint64(b[0:], uint64(seq))
	binary.BigEndian.PutUint64(b[8:], uint64(notBefore.UnixNano()))
	for len(b) < size {
		c := byte('a' + len(b)%26)
		if binarySafe && len(b)%7 == 0 {
			c = byte(len(b) % 3 * 5) // 0, 5 ('\x05'), 10 ('\n')
		}
		b = append(b, c)
	}
	if !binarySafe {
		// text mode: no '\n' anywhere, including in the binary header
		for i := 0; i < 16; i++ {
			if b[i] == '\n' || b[i] == 0 {
				b[i] |= 0x80
			}
		}
	}
	return b
}

func mpubBinary(bodies [][]byte) []byte {
	var buf bytes.Buffer
	binary.Write(&buf, binary.BigEndian, uint32(len(bodies)))
	for _, b := range bodies {
		binary.Write(&buf, binary.BigEndian, uint32(len(b)))
		buf.Write(b)
	}
	return buf.Bytes()
}

// restartableNSQD starts an nsqd with a data path of its own, for tests that
// stop it (node.Exit) mid-run; restart starts it again on the same addresses
// and data, stopped at cleanup.
func restartableNSQD(t *testing.T) (node *nsqdnode.Node, restart func() *nsqdnode.Node) {
	t.Helper()
	dataDir := t.TempDir()
	node, err := nsqdnode.Start(nsqdnode.Config{DataPath: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	addr, httpAddr := node.TCPAddr, node.HTTPAddr
	return node, func() *nsqdnode.Node {
		t.Helper()
		n, err := nsqdnode.Start(nsqdnode.Config{DataPath: dataDir, TCPAddress: addr, HTTPAddress: httpAddr})
		if err != nil {
			t.Fatalf("restart nsqd on %s: %v", addr, err)
		}
		t.Cleanup(n.Exit)
		return n
	}
}

// pubReq publishes req as ingest hands it over (validated, due in unix
// ms), through the path HTTP requests take.
func pubReq(s *Scheduler, req *ingest.PubRequest) error {
	return s.publish(protoHTTP, req.Topic, req.Bodies, req.Due, req.ID)
}

// topicCount is how many messages nsqd has taken for topic.
func topicCount(node *nsqdnode.Node, topic string) uint64 {
	for _, t := range node.NSQD.GetStats(topic, "", false).Topics {
		return t.MessageCount
	}
	return 0
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
