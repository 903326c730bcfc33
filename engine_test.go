package deferd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/deferd/deferd/egress"
	"github.com/deferd/deferd/wheel"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
	"github.com/deferd/deferd/journal"
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

// Thousands of messages through /pub and /mpub (text and binary) with
// mixed delays arrive at an nsqd consumer exactly once, unchanged, and
// never before their due time.
func TestEndToEndMixedDelays(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	colA := consume(t, node.TCPAddr, "a")
	colB := consume(t, node.TCPAddr, "b#ephemeral")

	rng := rand.New(rand.NewSource(1))
	want := map[string]time.Time{} // body → not before
	var wantA, wantB int
	seq := 0
	for round := 0; round < 30; round++ {
		delay := time.Duration(rng.Intn(1500)) * time.Millisecond
		if round%5 == 4 {
			delay = 0 // due at once: straight to nsqd
		}
		ms := delay.Milliseconds()
		sent := time.Now()
		notBefore := sent.Add(delay)
		switch round % 3 {
		case 0: // single /pub
			for i := 0; i < 20; i++ {
				b := testBody(seq, notBefore, 200+rng.Intn(600), true)
				seq++
				h.mustPost(fmt.Sprintf("/pub?topic=a&defer=%d", ms), b)
				want[string(b)] = notBefore
				wantA++
			}
		case 1: // text /mpub
			var lines [][]byte
			for i := 0; i < 100; i++ {
				b := testBody(seq, notBefore, 100+rng.Intn(400), false)
				seq++
				lines = append(lines, b)
				want[string(b)] = notBefore
			}
			h.mustPost(fmt.Sprintf("/mpub?topic=b%%23ephemeral&defer=%d", ms), bytes.Join(lines, []byte("\n")))
			wantB += len(lines)
		case 2: // binary /mpub
			var bodies [][]byte
			for i := 0; i < 100; i++ {
				b := testBody(seq, notBefore, 50+rng.Intn(900), true)
				seq++
				bodies = append(bodies, b)
				want[string(b)] = notBefore
			}
			h.mustPost(fmt.Sprintf("/mpub?topic=a&binary=true&defer=%d", ms), mpubBinary(bodies))
			wantA += len(bodies)
		}
	}
	colA.waitCount(t, wantA, 30*time.Second)
	colB.waitCount(t, wantB, 30*time.Second)
	time.Sleep(300 * time.Millisecond) // let any duplicate arrive
	got := append(colA.snapshot(), colB.snapshot()...)
	if len(got) != len(want) {
		t.Fatalf("received %d messages, sent %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for _, r := range got {
		nb, ok := want[string(r.body)]
		if !ok {
			t.Fatalf("received a body that was never sent (or was altered): % x", r.body[:16])
		}
		if seen[string(r.body)] {
			t.Fatalf("message %d received twice", binary.BigEndian.Uint64(r.body))
		}
		seen[string(r.body)] = true
		if r.at.Before(nb) {
			t.Fatalf("message %d arrived %v early", binary.BigEndian.Uint64(r.body), nb.Sub(r.at))
		}
	}
	s := h.stats()
	if s.Published != uint64(len(want)) || s.Accepted != uint64(len(want)) || s.Pending != 0 || s.Early != 0 {
		t.Fatalf("stats: accepted %d published %d pending %d early %d, want %d/%d/0/0",
			s.Accepted, s.Published, s.Pending, s.Early, len(want), len(want))
	}
	if s.Lateness.P99 <= 0 || s.Lateness.Max < s.Lateness.P50 {
		t.Fatalf("lateness percentiles look wrong: %+v", s.Lateness)
	}
}

// A second /pub with a pending id is accepted and not scheduled twice;
// /cancel removes a pending message once; a published id cannot be
// cancelled; a cancelled message never arrives.
func TestCancelAndIDDedupe(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "c")

	h.mustPost("/pub?topic=c&defer=60000&id=order-1", []byte("first"))
	h.mustPost("/pub?topic=c&defer=60000&id=order-1", []byte("second"))
	if s := h.stats(); s.Pending != 1 || s.Accepted != 1 {
		t.Fatalf("after dedupe: pending %d accepted %d, want 1/1", s.Pending, s.Accepted)
	}
	if code, b := h.post("/cancel?id=order-1", nil); code != 200 || b != "OK" {
		t.Fatalf("cancel pending: %d %q", code, b)
	}
	if code, b := h.post("/cancel?id=order-1", nil); code != 404 || b != `{"message":"NOT_FOUND"}` {
		t.Fatalf("cancel twice: %d %q", code, b)
	}
	if code, _ := h.post("/cancel?id=never-seen", nil); code != 404 {
		t.Fatalf("cancel unknown: %d", code)
	}
	// The id is free again after a cancel.
	h.mustPost("/pub?topic=c&defer=100&id=order-1", []byte("third"))
	h.mustPost("/pub?topic=c&defer=150&id=order-2", []byte("fourth"))
	h.mustPost("/pub?topic=c&defer=60000&id=order-3", []byte("fifth"))
	col.waitCount(t, 2, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	bodies := col.bodies()
	if strings.Join(bodies, ",") != "third,fourth" {
		t.Fatalf("received %q, want third,fourth", bodies)
	}
	if code, _ := h.post("/cancel?id=order-2", nil); code != 404 {
		t.Fatalf("cancel of a published message: %d, want 404", code)
	}
	if code, _ := h.post("/cancel?id=order-3", nil); code != 200 {
		t.Fatalf("cancel order-3: %d", code)
	}
	s := h.stats()
	if s.Pending != 0 || s.Cancelled != 2 || s.Published != 2 {
		t.Fatalf("stats: pending %d cancelled %d published %d, want 0/2/2", s.Pending, s.Cancelled, s.Published)
	}
}

// at= is an absolute due time; a time in the past publishes at once.
func TestAbsoluteDueTime(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "at")
	at := time.Now().Add(700 * time.Millisecond)
	atMs := at.UnixMilli() + 1
	h.mustPost(fmt.Sprintf("/pub?topic=at&at=%d", atMs), []byte("later"))
	h.mustPost(fmt.Sprintf("/pub?topic=at&at=%d", time.Now().Add(-time.Hour).UnixMilli()), []byte("past"))
	got := col.waitCount(t, 2, 10*time.Second)
	if string(got[0].body) != "past" || string(got[1].body) != "later" {
		t.Fatalf("order %q, %q", got[0].body, got[1].body)
	}
	if got[1].at.UnixMilli() < atMs {
		t.Fatalf("at= message arrived %v early", time.UnixMilli(atMs).Sub(got[1].at))
	}
}

// Bad requests of every kind get their 4xx and leave pending messages
// intact: everything accepted before and after still arrives.
func TestBadInputKeepsPending(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "k")
	for i := 0; i < 50; i++ {
		h.mustPost("/pub?topic=k&defer=800", []byte(fmt.Sprintf("m%d", i)))
	}
	bad := []struct {
		path string
		body []byte
		code int
	}{
		{"/pub", []byte("x"), 400},
		{"/pub?topic=", []byte("x"), 400},
		{"/pub?topic=bad%20name", []byte("x"), 400},
		{"/pub?topic=k", nil, 400},
		{"/pub?topic=k&defer=-1", []byte("x"), 400},
		{"/pub?topic=k&defer=abc", []byte("x"), 400},
		{"/pub?topic=k&defer=99999999999999", []byte("x"), 400},
		{"/mpub?topic=k&binary=true", []byte{0, 0, 0, 5, 0, 0}, 413}, // nsqd: 413 BAD_BODY
		{"/pub?topic=k", bytes.Repeat([]byte("x"), 2<<20), 413},
		{"/nope", nil, 404},
	}
	for _, c := range bad {
		if code, _ := h.post(c.path, c.body); code != c.code {
			t.Errorf("POST %s: %d, want %d", c.path, code, c.code)
		}
	}
	if s := h.stats(); s.Pending != 50 {
		t.Fatalf("pending %d after bad input, want 50", s.Pending)
	}
	h.mustPost("/pub?topic=k", []byte("after"))
	col.waitCount(t, 51, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if got := col.snapshot(); len(got) != 51 {
		t.Fatalf("received %d, want 51", len(got))
	}
}

// Past --max-pending deferd answers 503 OVER_CAPACITY and keeps what it
// holds.
func TestCapacityLimit(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.MaxPending = 10
	h := startHarness(t, o)
	for i := 0; i < 10; i++ {
		h.mustPost("/pub?topic=cap&defer=60000", []byte("x"))
	}
	if code, b := h.post("/pub?topic=cap&defer=60000", []byte("x")); code != 503 || b != `{"message":"OVER_CAPACITY"}` {
		t.Fatalf("over capacity: %d %q", code, b)
	}
	if code, _ := h.post("/mpub?topic=cap&defer=1", []byte("a\nb")); code != 503 {
		t.Fatalf("mpub over capacity: %d", code)
	}
	// Messages already due go straight to nsqd (DirectPublish): deferd
	// does not hold them, so a full deferd still takes them.
	if code, b := h.post("/mpub?topic=cap", []byte("a\nb")); code != 200 {
		t.Fatalf("due-now mpub at capacity: %d %q", code, b)
	}
	if s := h.stats(); s.Pending != 10 || s.PublishedDirect != 2 {
		t.Fatalf("pending %d, direct %d, want 10 and 2", s.Pending, s.PublishedDirect)
	}
	if n := topicCount(node, "cap"); n != 2 {
		t.Fatalf("nsqd has %d messages, want the 2 due now", n)
	}
}

// --max-pending-bytes counts journal record bytes, in the check as in the
// counter: room for one more body but not for its record is no room.
func TestCapacityLimitBytes(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	body := bytes.Repeat([]byte("b"), 100)
	rec := int64(journal.RecordLen(&journal.Message{Topic: "capb", Body: body}))
	o.MaxPendingBytes = 5*rec + int64(len(body))
	h := startHarness(t, o)
	for i := 0; i < 5; i++ {
		h.mustPost("/pub?topic=capb&defer=60000", body)
	}
	if code, b := h.post("/pub?topic=capb&defer=60000", body); code != 503 || b != `{"message":"OVER_CAPACITY"}` {
		t.Fatalf("over capacity: %d %q", code, b)
	}
	if p, pb := h.e.Pending(), h.e.pendingBytes.Load(); p != 5 || pb != 5*rec {
		t.Fatalf("pending %d (%d bytes), want 5 (%d bytes)", p, pb, 5*rec)
	}
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

// nsqd stopped and restarted mid-run loses nothing: messages due while it
// is down wait and go out when it is back.
func TestNSQDRestartLosesNothing(t *testing.T) {
	node, restart := restartableNSQD(t)
	addr := node.TCPAddr
	h := startHarness(t, testOptions(t.TempDir(), addr))

	const n = 600
	for i := 0; i < n; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=r&defer=%d", i*3), []byte(fmt.Sprintf("r%d", i)))
	}
	time.Sleep(400 * time.Millisecond)
	node.Exit() // down for a while: messages fall due meanwhile
	time.Sleep(1500 * time.Millisecond)
	if s := h.stats(); s.Retried == 0 {
		t.Errorf("expected failed publishes to be retried while nsqd was down; stats %+v", s)
	}
	// Messages due at once cannot go straight to nsqd now: they are
	// journaled and wait with the others.
	const nowN = 100
	var lines []string
	for i := 0; i < nowN; i++ {
		lines = append(lines, fmt.Sprintf("now%d", i))
	}
	pending := h.stats().Pending
	h.mustPost("/mpub?topic=r", []byte(strings.Join(lines, "\n")))
	if s := h.stats(); s.Pending != pending+nowN || s.DirectJournaled != nowN {
		t.Fatalf("pending %d, direct_journaled %d after a due-now mpub with nsqd down, want %d and %d",
			s.Pending, s.DirectJournaled, pending+nowN, nowN)
	}
	restart()
	col := consume(t, addr, "r")
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen := map[string]bool{}
		for _, r := range col.snapshot() {
			seen[string(r.body)] = true
		}
		if len(seen) == n+nowN {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d distinct messages of %d after nsqd restart; stats %+v", len(seen), n+nowN, h.stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := h.stats(); s.Pending != 0 {
		t.Fatalf("pending %d after everything arrived", s.Pending)
	}
}

// A graceful stop keeps what is pending; a restart on the same journal
// recovers it with its due time kept (long delays stay pending and can be
// cancelled by id; short ones arrive after, never before, their due time).
func TestRestartKeepsDelays(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dir := t.TempDir()
	h := startHarness(t, testOptions(dir, node.TCPAddr))
	sent := time.Now()
	for i := 0; i < 20; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=long&defer=%d&id=long-%d", 2*3600*1000, i), []byte("long"))
	}
	for i := 0; i < 30; i++ {
		h.mustPost("/pub?topic=short&defer=1500", []byte(fmt.Sprintf("s%d", i)))
	}
	h.stop()

	h2 := startHarness(t, testOptions(dir, node.TCPAddr))
	if r := h2.e.Recovery(); r.Live != 50 {
		t.Fatalf("recovered %d live, want 50 (%+v)", r.Live, r)
	}
	col := consume(t, node.TCPAddr, "short")
	got := col.waitCount(t, 30, 15*time.Second)
	for _, r := range got {
		if r.at.Before(sent.Add(1500 * time.Millisecond)) {
			t.Fatalf("%s arrived %v before its due time", r.body, sent.Add(1500*time.Millisecond).Sub(r.at))
		}
	}
	if code, b := h2.post("/cancel?id=long-7", nil); code != 200 {
		t.Fatalf("cancel after restart: %d %q", code, b)
	}
	if s := h2.stats(); s.Pending != 19 || s.PendingByTopic["long"] != 19 {
		t.Fatalf("pending %d (long %d), want 19", s.Pending, s.PendingByTopic["long"])
	}
	// The dedupe index survived too.
	h2.mustPost("/pub?topic=long&defer=1000&id=long-3", []byte("dup"))
	if s := h2.stats(); s.Pending != 19 {
		t.Fatalf("pending %d after a duplicate id, want 19", s.Pending)
	}
}

// A few long-delay messages in old segments do not pin the journal:
// compaction moves them to the head, the old segments go away, disk use
// stays near the live data, and the moved messages keep their ids (cancel
// works) and survive a restart exactly once.
func TestCompactionBoundsDisk(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dir := t.TempDir()
	o := testOptions(dir, node.TCPAddr)
	o.SegmentSize = 64 << 10
	o.CompactInterval = 20 * time.Millisecond
	o.DirectPublish = false // the churn must pass through the journal
	h := startHarness(t, o)
	for i := 0; i < 10; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=long&defer=3600000&id=keep-%d", i), bytes.Repeat([]byte("L"), 300))
	}
	col := consume(t, node.TCPAddr, "churn")
	body := bytes.Repeat([]byte("c"), 500)
	var lines [][]byte
	for i := 0; i < 50; i++ {
		lines = append(lines, body)
	}
	for i := 0; i < 40; i++ { // 2000 x 500 B: ~16 segments of 64 KiB
		h.mustPost("/mpub?topic=churn", bytes.Join(lines, []byte("\n")))
	}
	col.waitCount(t, 2000, 20*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for {
		js := h.e.j.Stats()
		if js.Segments <= 3 && js.DiskBytes <= 2*js.LiveBytes+2*o.SegmentSize {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal not compacted: %+v, moved %d", js, h.e.moved.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h.e.moved.Load() < 10 {
		t.Fatalf("moved %d messages, want at least the 10 long ones", h.e.moved.Load())
	}
	if code, b := h.post("/cancel?id=keep-3", nil); code != 200 {
		t.Fatalf("cancel a moved message: %d %q", code, b)
	}
	h.stop()
	h2 := startHarness(t, o)
	if r := h2.e.Recovery(); r.Live != 9 || len(r.Corrupt) != 0 {
		t.Fatalf("after compaction and restart: %+v, want 9 live", r)
	}
	if code, _ := h2.post("/cancel?id=keep-5", nil); code != 200 {
		t.Fatalf("cancel after restart: %d", code)
	}
	if s := h2.stats(); s.Pending != 8 {
		t.Fatalf("pending %d, want 8", s.Pending)
	}
}

// A message nsqd refuses outright (bigger than that nsqd's
// --max-msg-size) is parked and counted as failed, never dropped, and does
// not hold back the messages around it.
//
// Delayed, the five messages go through the wheel together. Due at once, they
// go straight to nsqd, which takes the first two; the other three are
// journaled and the wheel parks the big one.
func TestRejectedMessageParkedOthersDelivered(t *testing.T) {
	for _, c := range []struct {
		query          string
		direct, missed uint64
	}{{"&defer=1", 0, 0}, {"", 2, 3}} {
		t.Run("query="+c.query, func(t *testing.T) {
			node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: 1000})
			o := testOptions(t.TempDir(), node.TCPAddr)
			o.ParkBackoff = time.Hour
			h := startHarness(t, o)
			col := consume(t, node.TCPAddr, "rej")
			lines := [][]byte{[]byte("one"), []byte("two"), bytes.Repeat([]byte("B"), 2000), []byte("four"), []byte("five")}
			h.mustPost("/mpub?topic=rej"+c.query, bytes.Join(lines, []byte("\n")))
			col.waitCount(t, 4, 10*time.Second)
			time.Sleep(200 * time.Millisecond)
			bodies := col.bodies()
			if strings.Join(bodies, ",") != "one,two,four,five" {
				t.Fatalf("received %q", bodies)
			}
			s := h.stats()
			if s.Failed != 1 || s.Pending != 1 || s.Published != 4 {
				t.Fatalf("stats: failed %d pending %d published %d, want 1/1/4", s.Failed, s.Pending, s.Published)
			}
			if s.PublishedDirect != c.direct || s.DirectJournaled != c.missed {
				t.Fatalf("stats: published_direct %d direct_journaled %d, want %d and %d", s.PublishedDirect, s.DirectJournaled, c.direct, c.missed)
			}
		})
	}
}

// Stop returns within its grace even when nsqd is down and a due bucket has
// more tasks than the pool has workers (the dispatcher blocked submitting
// them used to hold Stop for every task's retries), and nothing is lost:
// a deferd started on the same journal with nsqd up delivers all of it.
func TestStopKeepsGraceWithNSQDDown(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(dir, nsqdnodetest.ClosedAddr(t))
	o.PoolSize, o.TaskSize, o.DirectPublish = 1, 1, false
	o.PublishBackoff = 100 * time.Millisecond // each task retries for >= 0.3 s
	h := startHarness(t, o)
	var lines []string
	for i := range 60 {
		lines = append(lines, fmt.Sprintf("m%d", i))
	}
	h.mustPost(fmt.Sprintf("/mpub?topic=g&at=%d", time.Now().Add(200*time.Millisecond).UnixMilli()), []byte(strings.Join(lines, "\n")))
	for deadline := time.Now().Add(10 * time.Second); h.stats().Retried == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no publish was tried")
		}
	}
	stopWithinThenDeliver(t, h, dir, 50*time.Millisecond, 3*time.Second, "g", len(lines))
}

// stopWithinThenDeliver stops h (HTTP first) with the given grace, fails if
// that took longer than limit, then starts a real nsqd and an engine on the
// same journal and waits for n messages of topic to arrive.
func stopWithinThenDeliver(t *testing.T, h *harness, dir string, grace, limit time.Duration, topic string, n int) {
	t.Helper()
	h.srv.Shutdown()
	start := time.Now()
	h.e.Close(grace)
	if d := time.Since(start); d > limit {
		t.Fatalf("Stop(%v) took %v with nsqd unavailable", grace, d)
	} else {
		t.Logf("Stop(%v) took %v", grace, d)
	}
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	col := consume(t, node.TCPAddr, topic)
	startHarness(t, testOptions(dir, node.TCPAddr))
	col.waitCount(t, n, 10*time.Second)
}

// An nsqd that accepts connections and never answers (SIGSTOPped): publish
// tasks hang in go-nsq's connect (IDENTIFY, bounded only by its 10 s read
// timeout, one after another per Producer). Stop must still keep to its
// bound (it took over 20 s), and the messages stay in the journal.
func TestStopKeepsGraceWithNSQDHung(t *testing.T) {
	dir := t.TempDir()
	hung, unhang := nsqdnodetest.HungAddr(t)
	defer unhang() // before the harness's cleanup: its goroutines are stuck on it
	o := testOptions(dir, hung)
	o.PoolSize, o.TaskSize, o.DirectPublish = 2, 1, false
	h := startHarness(t, o)
	var lines []string
	for i := range 5 {
		lines = append(lines, fmt.Sprintf("m%d", i))
	}
	h.mustPost(fmt.Sprintf("/mpub?topic=g&at=%d", time.Now().Add(100*time.Millisecond).UnixMilli()), []byte(strings.Join(lines, "\n")))
	time.Sleep(300 * time.Millisecond) // due, and their tasks stuck connecting
	stopWithinThenDeliver(t, h, dir, 200*time.Millisecond, 5*time.Second, "g", len(lines))
}

// A message whose journal record cannot be read when it falls due stays
// pending: it goes back into the wheel and is tried again, can be
// cancelled meanwhile, and once the record reads again it is published
// and its id is free for a new message. (Before, it left the wheel for
// good until a restart: never published, its id stuck.)
func TestReadErrorRetries(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dir := t.TempDir()
	o := testOptions(dir, node.TCPAddr)
	o.ParkBackoff = 300 * time.Millisecond
	h := startHarness(t, o)
	col := consume(t, node.TCPAddr, "rd")
	h.mustPost("/pub?topic=rd&defer=200&id=X", []byte("body-of-x"))
	h.mustPost("/pub?topic=rd&defer=200&id=Y", []byte("body-of-y"))

	segs, err := filepath.Glob(filepath.Join(dir, "journal", "*.seg"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	flip := func(body string, c byte) {
		t.Helper()
		off := bytes.Index(data, []byte(body))
		if off < 0 {
			t.Fatalf("%q not in the segment", body)
		}
		if _, err := f.WriteAt([]byte{c}, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	flip("body-of-x", 'B') // both records now fail their CRC
	flip("body-of-y", 'B')
	for deadline := time.Now().Add(10 * time.Second); h.stats().ReadErrors < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no read errors")
		}
	}
	if s := h.stats(); s.Pending != 2 || s.WheelEntries != 2 {
		t.Fatalf("after the read errors: pending %d, wheel entries %d; want 2, 2", s.Pending, s.WheelEntries)
	}
	if code, body := h.post("/cancel?id=Y", nil); code != 200 {
		t.Fatalf("cancel of a message whose record failed to read: %d %s", code, body)
	}
	if s := h.stats(); s.Pending != 1 || s.PendingByTopic["rd"] != 1 {
		t.Fatalf("after cancelling Y: pending %d, by topic %v; want 1, rd:1", s.Pending, s.PendingByTopic)
	}
	flip("body-of-x", 'b') // X reads again (offsets from the original bytes)
	col.waitCount(t, 1, 10*time.Second)
	for deadline := time.Now().Add(10 * time.Second); h.stats().Pending != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) { // nsqd has it; deferd marks it published after nsqd's OK
			t.Fatal("X delivered but still pending")
		}
	}
	if got := col.snapshot(); string(got[0].body) != "body-of-x" {
		t.Fatalf("got %q", got[0].body)
	}
	// X was published, so its id is free again.
	h.mustPost("/pub?topic=rd&defer=60000&id=X", []byte("second-x"))
	if s := h.stats(); s.Pending != 1 {
		t.Fatalf("pending %d after a new message with X's id, want 1", s.Pending)
	}
	if code, body := h.post("/cancel?id=X", nil); code != 200 {
		t.Fatalf("cancel of the new X: %d %s", code, body)
	}
	time.Sleep(3 * o.ParkBackoff)
	if got := col.snapshot(); len(got) != 1 {
		t.Fatalf("%d messages arrived, want only X", len(got))
	}
	if s := h.stats(); s.Pending != 0 || len(s.PendingByTopic) != 0 {
		t.Fatalf("at the end: pending %d, by topic %v; want 0 and none", s.Pending, s.PendingByTopic)
	}
}

// A publish task that panics (a bug) does not lose the messages it held
// until a restart: those it had not published go back into the wheel and
// are published on the next try.
func TestPanickingTaskLosesNothing(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.DirectPublish = false
	eg, err := egress.New(o.egressOptions(o.NSQDTCPAddresses))
	if err != nil {
		t.Fatal(err)
	}
	defer eg.Stop()
	var panicked sync.Once
	o.NSQDTCPAddresses = nil
	o.Sink = SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		if topic == "boom" {
			panicked.Do(func() { panic("injected") })
		}
		return nsqdSink{eg}.Publish(topic, bodies)
	})
	h := startHarness(t, o)
	boom, ok := consume(t, node.TCPAddr, "boom"), consume(t, node.TCPAddr, "ok")
	at := time.Now().Add(100 * time.Millisecond).UnixMilli()
	h.mustPost(fmt.Sprintf("/mpub?topic=ok&at=%d", at), []byte("o1\no2"))
	h.mustPost(fmt.Sprintf("/mpub?topic=boom&at=%d", at), []byte("b1\nb2\nb3"))
	boom.waitCount(t, 3, 10*time.Second)
	ok.waitCount(t, 2, 10*time.Second)
	for deadline := time.Now().Add(5 * time.Second); h.stats().Pending != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pending %d after every message arrived", h.stats().Pending)
		}
	}
}

// Stop while large /mpub requests (spanning several journal group commits)
// are being written: each request is kept whole or not at all. Stop used to
// close the journal under a running request, which got 503 EXITING with
// part of its messages kept and delivered after the restart.
func TestStopKeepsRequestsWhole(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(dir, nsqdnodetest.ClosedAddr(t))
	o.DirectPublish = false
	o.Logf = func(string, ...any) {}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	bodies := make([][]byte, 4500) // 4.5 MB: more than one 4 MiB group commit
	for i := range bodies {
		bodies[i] = bytes.Repeat([]byte("b"), 1000)
	}
	var (
		mu      sync.Mutex
		results = map[string]error{}
		wg      sync.WaitGroup
	)
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ { // until Stop refuses
				topic := fmt.Sprintf("r%d_%d", g, i)
				err := pubReq(e, &ingest.PubRequest{Topic: topic, Due: time.Now().Add(time.Hour).UnixMilli(), Bodies: bodies})
				mu.Lock()
				results[topic] = err
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	e.Close(10 * time.Second)
	wg.Wait()

	e, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(time.Second)
	got := e.Stats().PendingByTopic
	for topic, err := range results {
		want := int64(len(bodies))
		if err != nil {
			want = 0
		}
		if got[topic] != want {
			t.Errorf("request %s answered %v, and %d of its %d messages were kept", topic, err, got[topic], len(bodies))
		}
	}
}

// /cancel of a message a publish task holds right now answers 409
// IN_FLIGHT, not 404: with nsqd down the attempt fails, the message goes
// back into the wheel, and a later cancel removes it. (It said 404
// NOT_FOUND for a message that was then delivered.)
func TestCancelInFlight(t *testing.T) {
	o := testOptions(t.TempDir(), nsqdnodetest.ClosedAddr(t))
	o.PublishBackoff = 100 * time.Millisecond // each attempt lasts a while
	h := startHarness(t, o)
	sawInFlight := false
	for k := 0; k < 5 && !sawInFlight; k++ {
		id := fmt.Sprintf("job-%d", k)
		h.mustPost("/pub?topic=cx&defer=1&id="+id, []byte("charge the card"))
		time.Sleep(50 * time.Millisecond) // due: an attempt is under way
		var codes []int
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			code, body := h.post("/cancel?id="+id, nil)
			codes = append(codes, code)
			if code == 200 {
				break
			}
			if code != 409 || body != `{"message":"IN_FLIGHT"}` || time.Now().After(deadline) {
				t.Fatalf("cancel answers %v, last %s; want 409 IN_FLIGHT until the message is back in the wheel, then 200", codes, body)
			}
			sawInFlight = true
		}
	}
	if !sawInFlight {
		t.Fatal("no cancel found a message in flight")
	}
	if s := h.stats(); s.Pending != 0 {
		t.Fatalf("after the cancels: pending %d", s.Pending)
	}
}

// A publish that panics (a bug) after reserving its id gives the id up
// (journalAndSchedule defers release right after reserve): a retry with
// the same id is reserved at once, instead of waiting forever for the
// first write to end.
func TestPanickingPublishGivesItsIDUp(t *testing.T) {
	x := newIndex(wheel.New[ref](wheel.Options{}))
	noLimit := func() error { return nil }
	func() {
		defer func() { recover() }()
		ch, err := x.reserve("X", noLimit)
		if err != nil || ch == nil {
			t.Fatalf("first reserve: %v %v", ch, err)
		}
		defer x.release("X", ch)
		panic("injected")
	}()
	done := make(chan chan struct{}, 1)
	go func() {
		ch, _ := x.reserve("X", noLimit)
		done <- ch
	}()
	select {
	case ch := <-done:
		if ch == nil {
			t.Fatal("retry: the id still counts as pending")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the retry with the same id still waits for the panicked write")
	}
}

// /metrics carries what /stats reports beyond the fixed gauges: pending per
// topic and the journal's state, with the same numbers.
func TestMetricsMirrorStats(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	h.mustPost("/mpub?topic=alpha&defer=600000", []byte("a1\na2\na3"))
	h.mustPost("/pub?topic=beta&defer=600000&id=b1", []byte("b1"))
	h.mustPost("/pub?topic=beta&defer=600000&id=b2", []byte("b2"))
	if code, _ := h.post("/cancel?id=b2", nil); code != 200 {
		t.Fatalf("cancel: %d", code)
	}
	resp, err := http.Get(h.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	st := h.stats()
	if st.PendingByTopic["alpha"] != 3 || st.PendingByTopic["beta"] != 1 {
		t.Fatalf("/stats pending by topic %v", st.PendingByTopic)
	}
	for _, want := range []string{
		`deferd_pending_by_topic{topic="alpha"} 3` + "\n",
		`deferd_pending_by_topic{topic="beta"} 1` + "\n",
		fmt.Sprintf("deferd_journal_segments %d\n", st.Journal.Segments),
		fmt.Sprintf("deferd_journal_appends_total %d\n", st.Journal.Appends),
		fmt.Sprintf("deferd_journal_live_messages %d\n", st.Journal.Live),
		"deferd_journal_write_errors_total 0\n",
	} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(string(mb), "deferd_"))
		}
	}
}

// pubReq publishes req as ingest hands it over (validated, due in unix
// ms), through the path HTTP requests take.
func pubReq(s *Scheduler, req *ingest.PubRequest) error {
	return s.publish(req.Topic, req.Bodies, req.Due, req.ID)
}
