package ingest

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"time"
)

// refused opens a connection whose 1 MiB /mpub body the 64 KiB budget
// refuses, reads the 503 and leaves the connection open (the client
// neither sends more nor closes).
func refused(t *testing.T, addr string) net.Conn {
	t.Helper()
	c := dialSend(t, addr, head("/mpub?topic=t", 1<<20)+strings.Repeat("x", 16<<10)) // more than fasthttp reads before the handler
	if code, body := readAnswer(t, c, 2*time.Second); code != 503 || body != `{"message":"BODY_BUDGET_EXCEEDED"}` {
		t.Fatalf("over the budget: %d %s", code, body)
	}
	return c
}

// fullyClosed reports whether the server has closed c (not only
// half-closed it, as a lingering connection is) within d: a write then
// fails, after the reset the server answers it with.
func fullyClosed(c net.Conn, d time.Duration) bool {
	end := time.Now().Add(d)
	for {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("x")); err != nil {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
}

// hijacked counts the goroutines serving hijacked (lingering) connections.
func hijacked() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "fasthttp.hijackConnHandler")
}

// waitHijacked polls until no hijacked connection's goroutine is left, at
// most d; how long it took, and false if some were still there.
func waitHijacked(d time.Duration) (time.Duration, bool) {
	start := time.Now()
	for hijacked() > 0 {
		if time.Since(start) > d {
			return time.Since(start), false
		}
		time.Sleep(time.Millisecond)
	}
	return time.Since(start), true
}

// Shutdown closes the connections lingering after a refused body and
// waits for their goroutines: the clients see the close at once, and none
// of those goroutines is left when Shutdown returns.
func TestShutdownClosesLingering(t *testing.T) {
	srv := startServer(t, Options{MaxInflightBodyBytes: 64 << 10}, &recorder{})
	var cs []net.Conn
	for range 5 {
		cs = append(cs, refused(t, srv.Addr()))
	}
	if n := hijacked(); n != 5 {
		t.Fatalf("%d connections linger, want 5", n)
	}
	start := time.Now()
	if err := srv.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Shutdown took %v", took)
	}
	if took, ok := waitHijacked(20 * time.Millisecond); !ok {
		t.Errorf("%d lingering goroutines left %v after Shutdown", hijacked(), took)
	}
	for i, c := range cs {
		if !fullyClosed(c, 50*time.Millisecond) {
			t.Errorf("connection %d still open 50 ms after Shutdown", i)
		}
	}
}

// A lingering connection ends as soon as its client closes, not a full
// refuseWait later.
func TestLingerEndsAtPeerClose(t *testing.T) {
	srv := startServer(t, Options{MaxInflightBodyBytes: 64 << 10}, &recorder{})
	c := refused(t, srv.Addr())
	if n := hijacked(); n != 1 {
		t.Fatalf("%d connections linger, want 1", n)
	}
	c.Close()
	if took, ok := waitHijacked(300 * time.Millisecond); !ok {
		t.Errorf("the lingering connection was still served %v after its client closed", took)
	}
}

// Lingering connections count against MaxConns: a connection accepted
// past it closes a lingering one at once; the others keep lingering.
func TestLingeringCountsAgainstMaxConns(t *testing.T) {
	srv := startServer(t, Options{MaxInflightBodyBytes: 64 << 10, MaxConns: 2}, &recorder{})
	a := refused(t, srv.Addr())
	b := refused(t, srv.Addr())
	if fullyClosed(a, 50*time.Millisecond) || fullyClosed(b, 0) {
		t.Fatal("a lingering connection within MaxConns was closed early")
	}
	start := time.Now()
	c := refused(t, srv.Addr()) // the third: a or b is closed
	closedA := fullyClosed(a, 100*time.Millisecond)
	closedB := fullyClosed(b, 10*time.Millisecond)
	if closedA == closedB {
		t.Errorf("past MaxConns 2, %v after the third connection: first closed %v, second closed %v; want exactly one closed",
			time.Since(start), closedA, closedB)
	}
	if fullyClosed(c, 10*time.Millisecond) {
		t.Error("the newest refused connection did not linger")
	}
}
