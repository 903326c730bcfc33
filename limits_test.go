package deferd

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Options.HTTPListener is served by the first ListenHTTP (a second binds
// HTTPAddress), and the HTTP limits reach the Server: a connection that
// sends no head is closed after HTTPHeaderTimeout; a body past
// MaxInflightBodyBytes gets 503 BODY_BUDGET_EXCEEDED.
func TestHTTPListenerAndLimits(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := NewOptions()
	o.DataPath = t.TempDir()
	o.Sink = SinkFunc(func(_ string, b [][]byte) (int, error) { return len(b), nil })
	o.Logf = t.Logf
	o.HTTPAddress = "127.0.0.1:0"
	o.HTTPListener = ln
	o.HTTPHeaderTimeout = 200 * time.Millisecond
	o.MaxInflightBodyBytes = 1 << 20
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	srv, err := s.ListenHTTP()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.ShutdownWithin(time.Second)
	if srv.Addr() != ln.Addr().String() {
		t.Fatalf("ListenHTTP on %s, Options.HTTPListener %s", srv.Addr(), ln.Addr())
	}
	srv2, err := s.ListenHTTP()
	if err != nil {
		t.Fatal(err)
	}
	defer srv2.Shutdown()
	if srv2.Addr() == ln.Addr().String() {
		t.Fatal("a second ListenHTTP took the same listener")
	}

	c, err := net.Dial("tcp", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Errorf("silent connection: read %q, %v; want closed without an answer", b, err)
	}

	body := bytes.Repeat([]byte("x\n"), 600<<10) // 1.2 MiB > the budget
	resp, err := http.Post("http://"+srv.Addr()+"/mpub?topic=t", "text/plain", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || string(b) != `{"message":"BODY_BUDGET_EXCEEDED"}` {
		t.Errorf("body over the budget: %d %s", resp.StatusCode, b)
	}
	var m bytes.Buffer
	s.WritePrometheus(&m)
	for _, want := range []string{`deferd_ingest_http_timeouts_total{phase="header"} 1`, `deferd_ingest_body_budget_refused_total 1`} {
		if !strings.Contains(m.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
