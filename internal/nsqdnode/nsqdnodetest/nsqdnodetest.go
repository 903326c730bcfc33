// Package nsqdnodetest holds test helpers around internal/nsqdnode: a real
// nsqd per test, and loopback addresses that behave like an nsqd that is
// down or hung. Only tests and benchmarks import it, so the daemon never
// links package testing.
package nsqdnodetest

import (
	"io"
	"net"
	"sync"
	"testing"

	"github.com/deferd/deferd/internal/nsqdnode"
)

// Start starts an nsqd for a test or benchmark on free loopback ports
// with a temporary data path; it is stopped by tb.Cleanup.
func Start(tb testing.TB, cfg nsqdnode.Config) *nsqdnode.Node {
	tb.Helper()
	if cfg.DataPath == "" {
		cfg.DataPath = tb.TempDir()
	}
	n, err := nsqdnode.Start(cfg)
	if err != nil {
		tb.Fatalf("start nsqd: %v", err)
	}
	tb.Cleanup(n.Exit)
	return n
}

// ClosedAddr returns a loopback address nothing listens on: an nsqd that is
// down, for tests. (Exiting a Node right after Start races inside nsqd
// v1.3.0's Main, so tests that need no nsqd at all use this.)
func ClosedAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// HungAddr returns a loopback address that accepts TCP connections and
// never answers (what it reads is discarded): an nsqd that hangs, e.g.
// stopped with SIGSTOP, for tests. closeFn closes the listener and its
// connections (so a client waiting for an answer gets an error at once);
// it is idempotent and also runs when the test ends.
func HungAddr(tb testing.TB) (addr string, closeFn func()) {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
		wg     sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				c.Close()
				continue
			}
			conns = append(conns, c)
			wg.Add(1)
			mu.Unlock()
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	var once sync.Once
	closeFn = func() {
		once.Do(func() {
			l.Close()
			mu.Lock()
			closed = true
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
	tb.Cleanup(closeFn)
	return l.Addr().String(), closeFn
}
