package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// dialV2 connects to s and sends the magic.
func dialV2(t *testing.T, s *TCPServer) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write(magicV2); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	return c, bufio.NewReader(c)
}

// pubOK publishes one message on c and expects its OK.
func pubOK(t *testing.T, c net.Conn, r *bufio.Reader, body string) {
	t.Helper()
	if _, err := c.Write(tcpCmd("PUB t", []byte(body))); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := readFrame(r)
		if err != nil {
			t.Fatalf("PUB: %v", err)
		}
		if f != "R:_heartbeat_" {
			if f != "R:OK" {
				t.Fatalf("PUB: %q", f)
			}
			return
		}
	}
}

// withoutHeartbeats drops the heartbeats from tr, and reports whether
// there were any.
func withoutHeartbeats(tr transcript) (transcript, bool) {
	var out transcript
	for _, f := range tr {
		if f != "R:_heartbeat_" {
			out = append(out, f)
		}
	}
	return out, len(out) < len(tr)
}

// Garbage closes its connection (with nsqd's answer, or none for a line
// over 16 KiB) and costs the others nothing.
func TestTCPGarbage(t *testing.T) {
	rec := &recorder{}
	s := startTCP(t, TCPOptions{}, rec)
	good, goodR := dialV2(t, s)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		junk := make([]byte, 1+rng.IntN(40<<10))
		for j := range junk {
			junk[j] = byte(rng.Uint32())
		}
		if i%2 == 0 {
			// A line over 16 KiB.
			junk = append(bytes.ReplaceAll(junk, []byte("\n"), nil), bytes.Repeat([]byte{'x'}, 17<<10)...)
		} else {
			junk = append(junk, '\n') // a command line nsqd refuses
		}
		tr := exchange(t, s.Addr(), cat(magicV2, junk), false, 10*time.Second)
		if tr[len(tr)-1] != "closed" || len(tr) > 2 {
			t.Fatalf("junk %d: %s", i, tr)
		}
		if len(tr) == 2 && !strings.HasPrefix(tr[0], "E:E_") {
			t.Fatalf("junk %d: %s", i, tr)
		}
		pubOK(t, good, goodR, "still here")
	}
	if n := len(rec.take()); n != 50 {
		t.Errorf("%d publishes, want 50", n)
	}
	// Junk instead of the magic.
	tr := exchange(t, s.Addr(), []byte("GET / HTTP/1.1\r\n\r\n"), false, 10*time.Second)
	if tr.String() != "E:E_BAD_PROTOCOL | closed" {
		t.Errorf("HTTP request: %s", tr)
	}
	waitFor(t, "junk connections to close", func() bool { return s.open.Load() == 1 })
}

// A client that stalls mid-frame is closed at its read deadline (two
// heartbeat intervals, as in nsqd; two MaxHeartbeatIntervals with
// heartbeats off), with nsqd's error; so is one that stalls before the
// magic, or idles without answering heartbeats. Others are served
// meanwhile.
func TestTCPStall(t *testing.T) {
	rec := &recorder{}
	s := startTCP(t, TCPOptions{HeartbeatInterval: time.Second, MaxHeartbeatInterval: 1500 * time.Millisecond}, rec)
	good, goodR := dialV2(t, s)
	var wg sync.WaitGroup
	stall := func(name string, data []byte, want string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tr, hb := withoutHeartbeats(exchange(t, s.Addr(), data, false, 20*time.Second))
			if tr.String() != want {
				t.Errorf("%s: %s, want %s", name, tr, want)
			}
			if name == "idle, not answering heartbeats" && !hb {
				t.Errorf("%s: no heartbeat", name)
			}
		}()
	}
	id := func(json string) []byte { return tcpCmd("IDENTIFY", []byte(json)) }
	stall("mid-body", cat(magicV2, []byte("PUB t\n"), tcpLen(10), []byte("ab")),
		"E:E_BAD_MESSAGE PUB failed to read message body | closed")
	stall("mid-size", cat(magicV2, []byte("MPUB t\n"), tcpLen(30), tcpLen(2), []byte{0, 0}),
		"E:E_BAD_MESSAGE MPUB failed to read message(0) body size | closed")
	stall("mid-line", cat(magicV2, []byte("PUB t")), "closed")
	stall("heartbeats off, mid-body", cat(magicV2, id(`{"heartbeat_interval":-1}`), []byte("PUB t\n"), tcpLen(10), []byte("ab")),
		"R:OK | E:E_BAD_MESSAGE PUB failed to read message body | closed")
	stall("before magic", []byte("  V"), "closed")
	stall("idle, not answering heartbeats", cat(magicV2, id(`{"heartbeat_interval":1000}`)), "R:OK | closed")
	stall("huge declared body", cat(magicV2, []byte("MPUB t\n"), tcpLen(DefaultMaxBodySize), tcpLen(1), tcpLen(DefaultMaxMsgSize), []byte("x")),
		"E:E_BAD_MESSAGE MPUB failed to read message body | closed")
	waitFor(t, "the stalled connections", func() bool { return s.open.Load() == 8 })
	// The good connection keeps publishing (each command renews its
	// deadline) while the others stall.
	for s.open.Load() > 1 {
		pubOK(t, good, goodR, "x")
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	pubOK(t, good, goodR, "x")
}

// Bodies are read as they arrive: a declared size costs nothing until the
// bytes come.
func TestTCPReadNGrowsWithData(t *testing.T) {
	tc := &tcpConn{r: bufio.NewReader(strings.NewReader("abc"))}
	if err := tc.readN(DefaultMaxBodySize); err == nil {
		t.Fatal("readN of a short stream: no error")
	}
	if cap(tc.body) > keepBodyBuf {
		t.Errorf("buffer of %d bytes for 3 arrived", cap(tc.body))
	}
	big := bytes.Repeat([]byte("z"), 3<<20)
	tc = &tcpConn{r: bufio.NewReader(bytes.NewReader(big))}
	if err := tc.readN(len(big)); err != nil || !bytes.Equal(tc.body, big) {
		t.Fatalf("readN: %v", err)
	}
	if cap(tc.body) > 2*len(big) {
		t.Errorf("buffer of %d bytes for %d", cap(tc.body), len(big))
	}
	tc.releaseBuffers()
	if tc.body != nil {
		t.Error("a large buffer is kept")
	}
}

// Past MaxConns a connection is closed at once; the others are served.
func TestTCPMaxConns(t *testing.T) {
	s := startTCP(t, TCPOptions{MaxConns: 2}, &recorder{})
	c1, r1 := dialV2(t, s)
	c2, r2 := dialV2(t, s)
	pubOK(t, c1, r1, "1")
	pubOK(t, c2, r2, "2")
	if tr := exchange(t, s.Addr(), cat(magicV2, tcpCmd("PUB t", []byte("3"))), false, 10*time.Second); tr.String() != "closed" {
		t.Errorf("third connection: %s", tr)
	}
	if got := s.m.refused.Get(); got != 1 {
		t.Errorf("refused %d, want 1", got)
	}
	c1.Close()
	waitFor(t, "a free slot", func() bool { return s.open.Load() == 1 })
	c3, r3 := dialV2(t, s)
	pubOK(t, c3, r3, "3")
}

// blockingBackend holds Publish until release is closed.
type blockingBackend struct {
	*recorder
	entered chan struct{}
	release chan struct{}
}

func (b *blockingBackend) Publish(req *PubRequest) error {
	b.entered <- struct{}{}
	<-b.release
	return b.recorder.Publish(req)
}

// Shutdown closes idle connections at once and lets a busy one finish its
// command, then returns, and so does Serve.
func TestTCPShutdown(t *testing.T) {
	b := &blockingBackend{&recorder{}, make(chan struct{}, 1), make(chan struct{})}
	s, err := NewTCPServer(TCPOptions{Addr: "127.0.0.1:0", Logf: t.Logf}, b)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	idle, idleR := dialV2(t, s)
	if _, err := idle.Write(tcpSentinel); err != nil {
		t.Fatal(err)
	}
	expectFrame(t, idleR, "R:OK")
	busy, busyR := dialV2(t, s)
	if _, err := busy.Write(tcpCmd("PUB t", []byte("in flight"))); err != nil {
		t.Fatal(err)
	}
	<-b.entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown() }()
	if tr := readFrames(idleR); tr.String() != "closed" {
		t.Errorf("idle connection: %s", tr)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a publish in flight", err)
	default:
	}
	close(b.release)
	if tr := readFrames(busyR); tr.String() != "R:OK | closed" {
		t.Errorf("busy connection: %s", tr)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if err := s.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if c, err := net.Dial("tcp", s.Addr()); err == nil {
		c.Close()
		t.Error("still accepting after Shutdown")
	}
	if n := len(b.take()); n != 1 {
		t.Errorf("%d publishes, want 1", n)
	}
}

// ShutdownWithin closes a connection stalled mid-command when d passes.
func TestTCPShutdownWithin(t *testing.T) {
	s, err := NewTCPServer(TCPOptions{Addr: "127.0.0.1:0", Logf: t.Logf}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	c, r := dialV2(t, s)
	if _, err := c.Write(cat([]byte("PUB t\n"), tcpLen(10), []byte("ab"))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the command to begin", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		for tc := range s.conns {
			tc.mu.Lock()
			busy := tc.busy
			tc.mu.Unlock()
			if busy {
				return true
			}
		}
		return false
	})
	if err := s.ShutdownWithin(100 * time.Millisecond); !errors.Is(err, ErrShutdownTimeout) {
		t.Errorf("ShutdownWithin: %v, want ErrShutdownTimeout", err)
	}
	if tr := readFrames(r); tr.String() != "closed" {
		t.Errorf("stalled connection: %s", tr)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// Shutdown before Serve: Serve returns nil at once.
func TestTCPShutdownBeforeServe(t *testing.T) {
	s, err := NewTCPServer(TCPOptions{Addr: "127.0.0.1:0"}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(); err != nil {
		t.Fatal(err)
	}
}

func TestTCPOptionsInvalid(t *testing.T) {
	for _, o := range []TCPOptions{
		{MaxMsgSize: -1}, {MaxBodySize: -1}, {MaxDefer: -1}, {HeartbeatInterval: -1}, {MaxConns: -1},
		{MaxBodySize: 2 << 30}, {Addr: "256.0.0.1:1"},
	} {
		if s, err := NewTCPServer(o, &recorder{}); err == nil {
			s.Shutdown()
			t.Errorf("%+v: no error", o)
		}
	}
	if _, err := NewTCPServer(TCPOptions{Addr: "127.0.0.1:0"}, nil); err == nil {
		t.Error("nil Backend: no error")
	}
}

// Metrics counts requests by command, messages, bytes and errors by code in
// the server's own set.
func TestTCPMetrics(t *testing.T) {
	s := startTCP(t, TCPOptions{}, &recorder{})
	exchange(t, s.Addr(), cat(magicV2, tcpSentinel, tcpCmd("PUB t", []byte("abc")), tcpCmd("MPUB t", tcpMPUB("de", "f")),
		[]byte("NOP\n"), tcpCmd("PUB a*b", []byte("x"))), true, 10*time.Second)
	exchange(t, s.Addr(), cat(magicV2, []byte("WHAT\n")), true, 10*time.Second)
	var buf bytes.Buffer
	s.Metrics().WritePrometheus(&buf)
	for _, want := range []string{
		`deferd_ingest_requests_total{protocol="tcp",command="IDENTIFY"} 1`,
		`deferd_ingest_requests_total{protocol="tcp",command="PUB"} 2`,
		`deferd_ingest_requests_total{protocol="tcp",command="MPUB"} 1`,
		`deferd_ingest_requests_total{protocol="tcp",command="NOP"} 1`,
		`deferd_ingest_requests_total{protocol="tcp",command="unknown"} 1`,
		`deferd_ingest_messages_total{protocol="tcp"} 3`,
		`deferd_ingest_message_bytes_total{protocol="tcp"} 6`,
		`deferd_ingest_errors_total{protocol="tcp",code="E_BAD_TOPIC"} 1`,
		`deferd_ingest_errors_total{protocol="tcp",code="E_INVALID"} 1`,
		`deferd_ingest_tcp_connections_total 2`,
	} {
		if !strings.Contains(buf.String(), want+"\n") {
			t.Errorf("no %s in\n%s", want, buf.String())
		}
	}
}
