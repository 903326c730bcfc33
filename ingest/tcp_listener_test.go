package ingest

import (
	"errors"
	"net"
	"testing"
	"time"
)

// A TCPServer given a bound Listener serves on it (its Addr is the
// listener's, not Addr's) and closes it at Shutdown.
func TestTCPServerTakesListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	s := startTCP(t, TCPOptions{Listener: ln, Addr: "127.0.0.1:1"}, rec)
	if s.Addr() != ln.Addr().String() {
		t.Fatalf("Addr %s, want the listener's %s", s.Addr(), ln.Addr())
	}
	got := exchange(t, s.Addr(), cat([]byte("  V2"), tcpCmd("PUB t", []byte("hi"))), true, 5*time.Second)
	if got.String() != "R:OK | closed" {
		t.Fatalf("PUB on the given listener: %s", got)
	}
	if pubs := rec.take(); len(pubs) != 1 || pubs[0].Topic != "t" || string(pubs[0].Bodies[0]) != "hi" {
		t.Fatalf("backend got %+v", pubs)
	}
	if err := s.ShutdownWithin(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on the listener after Shutdown: %v, want net.ErrClosed", err)
	}
}
