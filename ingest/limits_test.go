package ingest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// dialSend opens a connection to addr and writes s on it.
func dialSend(t *testing.T, addr, s string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
	return c
}

// readAnswer reads one response from c (status line and body), within d.
func readAnswer(t *testing.T, c net.Conn, d time.Duration) (int, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// closedWithin reports whether the server closes c (EOF or reset, with no
// bytes) within d.
func closedWithin(c net.Conn, d time.Duration) (bool, string) {
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false, string(b)
	}
	return true, string(b)
}

// metricsText is the Server's own metrics in Prometheus text.
func metricsText(s *Server) string {
	var b bytes.Buffer
	s.Metrics().WritePrometheus(&b)
	return b.String()
}

func wantMetric(t *testing.T, s *Server, series string) {
	t.Helper()
	if m := metricsText(s); !strings.Contains(m, series+"\n") {
		t.Errorf("metrics lack %q:\n%s", series, m)
	}
}

func head(target string, cl int) string {
	return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", target, cl)
}

// A body whose Content-Length would pass the budget gets 503
// BODY_BUDGET_EXCEEDED before it is read, and publishes nothing; its
// bytes come back when a request ends; small bodies may use the part of
// the budget large ones may not.
func TestBodyBudget(t *testing.T) {
	rec := &recorder{}
	const budget = 1 << 20 // large bodies: up to 896 KiB
	srv := startServer(t, Options{MaxInflightBodyBytes: budget, BodyTimeout: 10 * time.Second}, rec)
	// Holds 800 KiB of the budget: the head and a part of the body (more
	// than the 8 KiB fasthttp reads before the handler runs).
	holder := dialSend(t, srv.Addr(), head("/mpub?topic=t", 800<<10)+strings.Repeat("a\n", 10000))
	time.Sleep(100 * time.Millisecond)

	// 800+200 KiB > 896 KiB. The 503 comes once the unread body (at most
	// 256 KiB, which fasthttp drains to keep the connection) has arrived.
	big := dialSend(t, srv.Addr(), head("/mpub?topic=t", 200<<10)+strings.Repeat("e\n", 100<<10))
	if code, body := readAnswer(t, big, 5*time.Second); code != 503 || body != `{"message":"BODY_BUDGET_EXCEEDED"}` {
		t.Fatalf("over the budget: %d %s", code, body)
	}
	// Chunked: refused as it grows past the budget.
	chunked := dialSend(t, srv.Addr(), "POST /mpub?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
	chunk := strings.Repeat("b\n", 16<<10)
	for range 8 {
		fmt.Fprintf(chunked, "%x\r\n%s\r\n", len(chunk), chunk)
	}
	io.WriteString(chunked, "0\r\n\r\n") // the rest is drained, then answered
	if code, body := readAnswer(t, chunked, 5*time.Second); code != 503 || body != `{"message":"BODY_BUDGET_EXCEEDED"}` {
		t.Fatalf("chunked over the budget: %d %s", code, body)
	}
	// 60 KiB is a small body: it may use the last 1/8.
	if r := do(t, "POST", srv.Addr(), "/mpub?topic=t", bytes.Repeat([]byte("c\n"), 30<<10), false); r.code != 200 {
		t.Fatalf("small body beside the holder: %d %s", r.code, r.body)
	}
	if n := len(rec.take()); n != 1 {
		t.Fatalf("published %d requests, want the small one only", n)
	}
	wantMetric(t, srv, `deferd_ingest_body_budget_refused_total 2`)
	wantMetric(t, srv, `deferd_ingest_errors_total{code="503",message="BODY_BUDGET_EXCEEDED"} 2`)
	if used := srv.budget.used.Load(); used != 800<<10 {
		t.Errorf("budget used %d with one 800 KiB request being received, want %d", used, 800<<10)
	}
	holder.Close() // cut off: its 800 KiB come back
	for deadline := time.Now().Add(5 * time.Second); srv.budget.used.Load() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("budget used %d after every request ended", srv.budget.used.Load())
		}
	}
	if r := do(t, "POST", srv.Addr(), "/mpub?topic=t", bytes.Repeat([]byte("d\n"), 400<<10), false); r.code != 200 {
		t.Fatalf("800 KiB after the holder ended: %d %s", r.code, r.body)
	}
	wantMetric(t, srv, `deferd_ingest_client_errors_total{reason="body_cut_off",code="500"} 1`)
}

// A large body the budget refuses is not read: its sender gets the 503
// while it is still sending (Go's client reads the answer as it sends, so
// it gets the 503, not a reset) and the connection is closed refuseWait
// after the answer, however much more the sender sends.
func TestBodyBudgetRefusalReadsNothing(t *testing.T) {
	rec := &recorder{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counted := &countingListener{Listener: ln}
	srv := startServer(t, Options{MaxInflightBodyBytes: 1 << 20, MaxBodySize: 64 << 20, BodyTimeout: 10 * time.Second,
		Listener: counted}, rec)
	dialSend(t, srv.Addr(), head("/mpub?topic=t", 800<<10)+strings.Repeat("a\n", 10000)) // holds 800 KiB
	time.Sleep(100 * time.Millisecond)
	body := bytes.Repeat([]byte("b\n"), 2<<20) // 4 MiB
	for range 5 {
		if r := do(t, "POST", srv.Addr(), "/mpub?topic=t", body, false); r.code != 503 || r.body != `{"message":"BODY_BUDGET_EXCEEDED"}` {
			t.Fatalf("4 MiB over the budget from Go's client: %d %s", r.code, r.body)
		}
	}
	// A sender of 32 MiB, more than the sockets' buffers hold: the answer,
	// then the close.
	const size = 32 << 20
	c := dialSend(t, srv.Addr(), head("/mpub?topic=t", size))
	var wg sync.WaitGroup
	wg.Add(1)
	sent := 0
	go func() {
		defer wg.Done()
		chunk := bytes.Repeat([]byte("c\n"), 32<<10)
		for sent < size {
			n, err := c.Write(chunk)
			sent += n
			if err != nil {
				return
			}
		}
	}()
	start := time.Now()
	if code, body := readAnswer(t, c, 5*time.Second); code != 503 || body != `{"message":"BODY_BUDGET_EXCEEDED"}` {
		t.Fatalf("over the budget: %d %s", code, body)
	}
	wg.Wait() // the write fails at the close
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the refused sender's connection was closed %v after the answer, want about %v", took, refuseWait)
	}
	if sent >= size {
		t.Errorf("the refused sender sent all of its %d bytes: deferd read them", sent)
	}
	if n := len(rec.take()); n != 0 {
		t.Errorf("published %d requests, want none", n)
	}
	// The holder's 20 KB, and of each refused body what came with its head.
	if n := counted.read.Load(); n > 1<<20 {
		t.Errorf("deferd read %d bytes from the connections: it read refused bodies", n)
	}
}

// countingListener counts the bytes read from the connections it accepts.
type countingListener struct {
	net.Listener
	read atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, read: &l.read}, nil
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// CloseWrite half-closes the connection, as a refusal's linger needs.
func (c *countingConn) CloseWrite() error { return c.Conn.(*net.TCPConn).CloseWrite() }

// Connections that do not send their head within HeaderTimeout (nothing
// at all, or half a head) are closed without an answer; a body that does
// not arrive within BodyTimeout gets nsqd's 500 and counts as a client
// error; a keep-alive connection is closed after IdleTimeout.
func TestTimeouts(t *testing.T) {
	rec := &recorder{}
	srv := startServer(t, Options{HeaderTimeout: 300 * time.Millisecond, BodyTimeout: 300 * time.Millisecond,
		IdleTimeout: 300 * time.Millisecond}, rec)
	silent := dialSend(t, srv.Addr(), "")
	slowloris := dialSend(t, srv.Addr(), "POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nX-a: ")
	go func() { // a byte every 100 ms: the head never ends
		for range 20 {
			time.Sleep(100 * time.Millisecond)
			if _, err := slowloris.Write([]byte("a")); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	for name, c := range map[string]net.Conn{"silent": silent, "slowloris": slowloris} {
		if closed, got := closedWithin(c, 3*time.Second); !closed || got != "" {
			t.Errorf("%s connection: closed %v, got %q; want closed without an answer", name, closed, got)
		}
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("closed after %v, HeaderTimeout 300ms", d)
	}

	stalled := dialSend(t, srv.Addr(), head("/pub?topic=t", 100000)+strings.Repeat("x", 20000))
	if code, body := readAnswer(t, stalled, 3*time.Second); code != 500 || body != `{"message":"INTERNAL_ERROR"}` {
		t.Errorf("stalled body: %d %s", code, body)
	}

	idle := dialSend(t, srv.Addr(), "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
	if code, _ := readAnswer(t, idle, 3*time.Second); code != 200 {
		t.Fatalf("ping: %d", code)
	}
	if closed, _ := closedWithin(idle, 3*time.Second); !closed {
		t.Errorf("idle keep-alive connection still open after 3 s, IdleTimeout 300ms")
	}
	if p := rec.take(); len(p) != 0 {
		t.Errorf("published %d requests", len(p))
	}
	time.Sleep(50 * time.Millisecond)
	wantMetric(t, srv, `deferd_ingest_http_timeouts_total{phase="header"} 2`)
	wantMetric(t, srv, `deferd_ingest_http_timeouts_total{phase="body"} 1`)
	wantMetric(t, srv, `deferd_ingest_http_timeouts_total{phase="idle"} 1`)
	wantMetric(t, srv, `deferd_ingest_client_errors_total{reason="header_timeout",code="none"} 2`)
	wantMetric(t, srv, `deferd_ingest_client_errors_total{reason="body_timeout",code="500"} 1`)
	wantMetric(t, srv, `deferd_ingest_http_connections_aborted_total 3`)
}

// Past MaxConns a connection gets fasthttp's 503 and is closed; the others
// are served.
func TestMaxConns(t *testing.T) {
	srv := startServer(t, Options{MaxConns: 2, HeaderTimeout: 5 * time.Second}, &recorder{})
	a := dialSend(t, srv.Addr(), "")
	b := dialSend(t, srv.Addr(), "")
	time.Sleep(100 * time.Millisecond)
	c := dialSend(t, srv.Addr(), "GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
	if code, _ := readAnswer(t, c, 3*time.Second); code != 503 {
		t.Errorf("third connection with MaxConns 2: %d, want 503", code)
	}
	wantMetric(t, srv, `deferd_ingest_http_connections_refused_total 1`)
	io.WriteString(a, "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if code, _ := readAnswer(t, a, 3*time.Second); code != 200 {
		t.Errorf("first connection: %d", code)
	}
	b.Close()
}

// A malformed chunk size keeps nsqd's answer and counts as a client error.
func TestBadChunkCounted(t *testing.T) {
	srv := startServer(t, Options{}, &recorder{})
	c := dialSend(t, srv.Addr(), "POST /mpub?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+
		"4\r\na\nb\n\r\n"+strings.Repeat("x", 70000)+"\r\n")
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	io.ReadAll(c)
	if m := metricsText(srv); !strings.Contains(m, `deferd_ingest_client_errors_total{reason="bad_chunk"`) {
		t.Errorf("no bad_chunk client error:\n%s", m)
	}
}

// The connection log lines come at most one per second; the others are
// counted and reported in one line.
func TestRateLogger(t *testing.T) {
	var mu sync.Mutex
	var lines []string
	srv := startServer(t, Options{}, &recorder{})
	l := &rateLogger{f: func(f string, a ...any) {
		mu.Lock()
		lines = append(lines, fmt.Sprintf(f, a...))
		mu.Unlock()
	}, m: &srv.lim}
	for i := range 2000 {
		l.Printf("error when serving connection %d", i)
	}
	time.Sleep(logWindow + 200*time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(lines) != 2 || !strings.Contains(lines[1], "1999 more") {
		t.Errorf("lines: %q", lines)
	}
	wantMetric(t, srv, `deferd_ingest_log_lines_suppressed_total 1999`)
}

func TestLimitOptionsRefused(t *testing.T) {
	for _, o := range []Options{{MaxConns: -1}, {HeaderTimeout: -1}, {BodyTimeout: -1}, {IdleTimeout: -1}, {MaxInflightBodyBytes: -1}} {
		o.Addr = "127.0.0.1:0"
		if s, err := NewServer(o, &recorder{}); err == nil {
			s.Shutdown()
			t.Errorf("%+v accepted", o)
		}
	}
}

// A pre-bound Listener is served (and Addr is ignored).
func TestServerOnListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, Options{Listener: ln, Addr: "127.0.0.1:1"}, &recorder{})
	if srv.Addr() != ln.Addr().String() {
		t.Fatalf("Addr %s, listener %s", srv.Addr(), ln.Addr())
	}
	if r := do(t, "GET", srv.Addr(), "/ping", nil, false); r.code != 200 {
		t.Fatalf("ping: %d", r.code)
	}
}
