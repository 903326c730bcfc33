package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"github.com/deferd/deferd/internal/errs"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Backend errors become their status and message; other errors 500.
func TestBackendErrors(t *testing.T) {
	rec := &recorder{}
	srv := startServer(t, Options{}, rec)
	cases := []struct {
		err  error
		code int
		body string
	}{
		{ErrOverCapacity, 503, `{"message":"OVER_CAPACITY"}`},
		{ErrUnavailable, 503, `{"message":"JOURNAL_UNAVAILABLE"}`},
		{ErrExiting, 503, `{"message":"EXITING"}`},
		{&Error{429, "SLOW_DOWN"}, 429, `{"message":"SLOW_DOWN"}`},
		{&Error{503, `a "quoted" <text>`}, 503, `{"message":"a \"quoted\" \u003ctext\u003e"}`},
		{fmt.Errorf("wrapped: %w", ErrOverCapacity), 503, `{"message":"OVER_CAPACITY"}`},
		{errors.New("disk on fire"), 500, `{"message":"INTERNAL_ERROR"}`},
		// The scheduler's sentinels (deferd.ErrOverCapacity, ...).
		{errs.OverCapacity, 503, `{"message":"OVER_CAPACITY"}`},
		{fmt.Errorf("wrapped: %w", errs.JournalUnavailable), 503, `{"message":"JOURNAL_UNAVAILABLE"}`},
		{errs.Closed, 503, `{"message":"EXITING"}`},
		{errs.NotFound, 404, `{"message":"NOT_FOUND"}`},
		{errs.InFlight, 409, `{"message":"IN_FLIGHT"}`},
	}
	for _, c := range cases {
		rec.mu.Lock()
		rec.err = c.err
		rec.mu.Unlock()
		for _, target := range []string{"/pub?topic=t", "/mpub?topic=t", "/mpub?topic=t&binary=true", "/cancel?id=x"} {
			body := []byte("m")
			if strings.Contains(target, "binary") {
				body = frame(1, body)
			}
			got := do(t, "POST", srv.Addr(), target, body, false)
			if got.code != c.code || got.body != c.body || got.ctype != "application/json; charset=utf-8" {
				t.Errorf("%v on %s: got %d %s %q, want %d %s", c.err, target, got.code, got.body, got.ctype, c.code, c.body)
			}
		}
	}
}

func TestPingInfoStatsMetrics(t *testing.T) {
	srv := startServer(t, Options{}, &recorder{})
	if got := do(t, "GET", srv.Addr(), "/ping", nil, false); got.code != 200 || got.body != "OK" {
		t.Errorf("ping: %+v", got)
	}
	if got := do(t, "GET", srv.Addr(), "/info", nil, false); got.code != 200 || got.body != `{"version":"test"}` || got.ctype != "application/json; charset=utf-8" {
		t.Errorf("info: %+v", got)
	}
	do(t, "POST", srv.Addr(), "/pub?topic=t", []byte("x"), false)
	got := do(t, "GET", srv.Addr(), "/metrics", nil, false)
	if got.code != 200 || !strings.Contains(got.body, `deferd_ingest_requests_total{path="/pub"}`) ||
		!strings.Contains(got.body, "test_backend_metric 1\n") || !strings.Contains(got.body, "deferd_ingest_messages_total") {
		t.Errorf("metrics: %d %.300s", got.code, got.body)
	}
}

// Two Servers in one process count their own requests: no package-level
// counters.
func TestMetricsPerServer(t *testing.T) {
	a := startServer(t, Options{}, &recorder{})
	b := startServer(t, Options{}, &recorder{})
	for range 3 {
		do(t, "POST", a.Addr(), "/pub?topic=t", []byte("x"), false)
	}
	do(t, "POST", b.Addr(), "/pub?topic=t", []byte("x"), false)
	for _, c := range []struct {
		srv  *Server
		want string
	}{{a, `deferd_ingest_requests_total{path="/pub"} 3`}, {b, `deferd_ingest_requests_total{path="/pub"} 1`}} {
		if got := do(t, "GET", c.srv.Addr(), "/metrics", nil, false); !strings.Contains(got.body, c.want+"\n") {
			t.Errorf("want %q in:\n%s", c.want, got.body)
		}
	}
}

// rawRequest writes req on a fresh connection and returns everything the
// server sends until it closes the connection or goes quiet.
func rawRequest(t *testing.T, addr, req string) string {
	return rawExchange(t, addr, req, false)
}

// rawExchange writes req on a new connection and returns all it reads until
// the server closes it or the read deadline passes; with halfClose it first
// closes its sending side, as a client that dies mid-request does.
func rawExchange(t *testing.T, addr, req string, halfClose bool) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	wait := 500 * time.Millisecond
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
		wait = 5 * time.Second // the server closes once it has answered
	}
	c.SetReadDeadline(time.Now().Add(wait))
	b, _ := io.ReadAll(c)
	return string(b)
}

// curl sends Expect: 100-continue and chunked bodies; both work.
func TestExpectContinueAndChunked(t *testing.T) {
	rec := &recorder{}
	srv := startServer(t, Options{}, rec)
	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /mpub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HTTP/1.1 100 Continue") {
		t.Fatalf("want 100 Continue, got %q %v", line, err)
	}
	br.ReadString('\n') // blank line
	io.WriteString(c, "a\nb\n\nc")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, _ = br.ReadString('\n')
	if !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("status line %q", line)
	}
	// Chunked, in several chunks, on a fresh connection.
	resp := rawRequest(t, srv.Addr(), "POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
	if !strings.HasPrefix(resp, "HTTP/1.1 200") || !strings.HasSuffix(resp, "\r\n\r\nOK") {
		t.Fatalf("chunked response %q", resp)
	}
	pubs := rec.take()
	if len(pubs) != 2 || len(pubs[0].Bodies) != 3 || string(pubs[0].Bodies[2]) != "c" || string(pubs[1].Bodies[0]) != "abcde" {
		t.Fatalf("published %+v", pubs)
	}
}

// An oversized body with Expect: 100-continue and keep-alive does not
// desync the connection: the next request on it is answered.
func TestTooBigKeepAlive(t *testing.T) {
	srv := startServer(t, Options{MaxMsgSize: 10, MaxBodySize: 20}, &recorder{})
	for _, chunked := range []bool{false, true} {
		for i := 0; i < 3; i++ {
			got := do(t, "POST", srv.Addr(), "/pub?topic=t", []byte(strings.Repeat("x", 5000)), chunked)
			if got.code != 413 || got.body != `{"message":"MSG_TOO_BIG"}` {
				t.Fatalf("got %+v", got)
			}
			got = do(t, "POST", srv.Addr(), "/pub?topic=t", []byte("small"), chunked)
			if got.code != 200 {
				t.Fatalf("after a too-big body: %+v", got)
			}
		}
	}
}

// blocking is a Backend whose Publish waits for release.
type blocking struct {
	recorder
	entered chan struct{}
	release chan struct{}
}

func (b *blocking) Publish(req *PubRequest) error {
	b.entered <- struct{}{}
	<-b.release
	return b.recorder.Publish(req)
}

// Shutdown lets an in-flight request finish, then stops serving, and Serve
// returns nil; Shutdown is idempotent.
func TestShutdownFinishesInFlight(t *testing.T) {
	b := &blocking{entered: make(chan struct{}, 1), release: make(chan struct{})}
	s, err := NewServer(Options{Addr: "127.0.0.1:0", Logf: t.Logf}, b)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	addr := s.Addr()
	resp := make(chan response, 1)
	go func() { resp <- do(t, "POST", addr, "/pub?topic=t", []byte("in flight"), false) }()
	<-b.entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown() }()
	select {
	case <-shut:
		t.Fatal("Shutdown returned with a request in flight")
	case <-time.After(200 * time.Millisecond):
	}
	close(b.release)
	if got := <-resp; got.code != 200 || got.body != "OK" {
		t.Fatalf("in-flight request: %+v", got)
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if err := s.Shutdown(); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("still accepting after Shutdown")
	}
	if len(b.take()) != 1 {
		t.Fatal("in-flight message not published")
	}
}

func TestShutdownBeforeServe(t *testing.T) {
	s, err := NewServer(Options{Addr: "127.0.0.1:0"}, &recorder{})
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

// Shutdown racing Serve's start never leaves Serve running.
func TestShutdownRacingServe(t *testing.T) {
	for i := 0; i < 20; i++ {
		s, err := NewServer(Options{Addr: "127.0.0.1:0"}, &recorder{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); s.Serve() }()
		s.Shutdown()
		wg.Wait()
	}
}

func TestNewServerOptions(t *testing.T) {
	for _, o := range []Options{{MaxMsgSize: -1}, {MaxBodySize: -1}, {MaxDefer: -1}, {Addr: "127.0.0.1:-5"}} {
		if o.Addr == "" {
			o.Addr = "127.0.0.1:0"
		}
		if s, err := NewServer(o, &recorder{}); err == nil {
			s.Shutdown()
			t.Errorf("NewServer(%+v) accepted", o)
		}
	}
	if _, err := NewServer(Options{Addr: "127.0.0.1:0"}, nil); err == nil {
		t.Error("nil backend accepted")
	}
	s, err := NewServer(Options{Addr: "127.0.0.1:0"}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") || strings.HasSuffix(s.Addr(), ":0") {
		t.Errorf("Addr %q", s.Addr())
	}
	if s.maxMsg != DefaultMaxMsgSize || s.maxBody != DefaultMaxBodySize || s.maxDeferMs != DefaultMaxDefer.Milliseconds() {
		t.Errorf("defaults %d %d %d", s.maxMsg, s.maxBody, s.maxDeferMs)
	}
}

// The due time is never early: it is at least the request's arrival time,
// rounded up to the millisecond, plus the delay.
func TestDueNeverEarly(t *testing.T) {
	rec := &recorder{}
	srv := startServer(t, Options{}, rec)
	for i := 0; i < 50; i++ {
		before := time.Now().UnixNano()
		do(t, "POST", srv.Addr(), "/pub?topic=t&defer=7", []byte("x"), false)
		p := rec.take()[0]
		if p.Due*1_000_000 < before+7_000_000 {
			t.Fatalf("due %d ms is before arrival %d ns + 7 ms", p.Due, before)
		}
	}
	if ceilMs(1_000_000) != 1 || ceilMs(1_000_001) != 2 || ceilMs(0) != 0 {
		t.Fatal("ceilMs")
	}
}

// Many concurrent requests each reach the backend with exactly their own
// bodies: no request sees another's memory while Publish runs.
func TestConcurrentBodiesIntact(t *testing.T) {
	rec := &recorder{}
	srv := startServer(t, Options{}, rec)
	const workers, per = 8, 50
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				a, b := fmt.Sprintf("w%d-i%d-a-%s", w, i, strings.Repeat("x", i*37)), fmt.Sprintf("w%d-i%d-b", w, i)
				var got response
				switch i % 3 {
				case 0:
					got = do(t, "POST", srv.Addr(), "/mpub?topic=t", []byte(a+"\n"+b), i%2 == 0)
				case 1:
					got = do(t, "POST", srv.Addr(), "/mpub?topic=t&binary=1", frame(2, []byte(a), []byte(b)), i%2 == 0)
				default:
					got = do(t, "POST", srv.Addr(), "/pub?topic=t", []byte(a+"\n"+b), i%2 == 0)
				}
				if got.code != 200 {
					t.Errorf("status %+v", got)
				}
			}
		}()
	}
	wg.Wait()
	pubs := rec.take()
	if len(pubs) != workers*per {
		t.Fatalf("%d publishes, want %d", len(pubs), workers*per)
	}
	for _, p := range pubs {
		joined := string(bytes.Join(p.Bodies, []byte("\n")))
		a, b, ok := strings.Cut(joined, "\n")
		if !ok || !strings.HasPrefix(a, strings.TrimSuffix(b, "-b")+"-a-") {
			t.Fatalf("bodies mixed up: %q", p.Bodies)
		}
	}
}

// Default limits, big bodies, chunked and not: exact limits hold and big
// bodies arrive intact.
func TestDefaultLimitsBigBodies(t *testing.T) {
	rec := &recorder{}
	srv := startServer(t, Options{}, rec)
	line := append(bytes.Repeat([]byte("0123456789"), 100), '\n')
	text := bytes.Repeat(line, DefaultMaxBodySize/len(line))
	for _, chunked := range []bool{false, true} {
		if got := do(t, "POST", srv.Addr(), "/mpub?topic=t", text, chunked); got.code != 200 {
			t.Fatalf("mpub: %+v", got)
		}
		p := rec.take()
		if len(p) != 1 || len(p[0].Bodies) != DefaultMaxBodySize/len(line) || !bytes.Equal(p[0].Bodies[7], line[:len(line)-1]) {
			t.Fatalf("mpub chunked=%v: wrong bodies", chunked)
		}
		msg := rep('m', DefaultMaxMsgSize)
		if got := do(t, "POST", srv.Addr(), "/pub?topic=t", msg, chunked); got.code != 200 {
			t.Fatalf("pub at max: %+v", got)
		}
		if p := rec.take(); len(p) != 1 || !bytes.Equal(p[0].Bodies[0], msg) {
			t.Fatal("pub at max: wrong body")
		}
		if got := do(t, "POST", srv.Addr(), "/pub?topic=t", rep('m', DefaultMaxMsgSize+1), chunked); got.code != 413 || got.body != `{"message":"MSG_TOO_BIG"}` {
			t.Fatalf("pub over max: %+v", got)
		}
		big := append(text, bytes.Repeat([]byte("z"), DefaultMaxBodySize-len(text)+1)...)
		if got := do(t, "POST", srv.Addr(), "/mpub?topic=t", big, chunked); got.code != 413 || got.body != `{"message":"BODY_TOO_BIG"}` {
			t.Fatalf("mpub over max: %+v", got)
		}
		if p := rec.take(); len(p) != 0 {
			t.Fatal("rejected requests published")
		}
	}
}
