package ingest

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// connTracker counts a Server's open HTTP connections and holds those
// lingering after a refusal (a hijacked connection answered 503
// BODY_BUDGET_EXCEEDED, or 413 with much of its body unread), which
// fasthttp neither counts against Concurrency nor closes at Shutdown.
// It keeps them within Options.MaxConns: a refusal that would linger
// while more than MaxConns connections are open is closed at once, and
// a connection accepted past MaxConns closes a lingering one. Shutdown
// closes every lingering connection and waits for its goroutine.
//
// Counting costs an atomic add per accept and close; beginning and
// ending a linger take mu and one map entry. Safe for concurrent use; the
// zero value has no limit (max 0 refuses every linger), so newServer
// sets max.
type connTracker struct {
	max  int64
	open atomic.Int64 // accepted by trackingListener and not yet closed

	mu        sync.Mutex
	lingering map[*trackedConn]chan struct{} // closed when the tracker closes the connection
	shut      bool
	wg        sync.WaitGroup // a goroutine per lingering entry
}

// accepted counts a new connection; past max it closes a lingering one
// (its answer was sent; a real request is worth its socket more).
func (t *connTracker) accepted() {
	if t.open.Add(1) <= t.max {
		return
	}
	t.mu.Lock()
	for c, gone := range t.lingering {
		delete(t.lingering, c)
		close(gone)
		c.Close()
		break
	}
	t.mu.Unlock()
}

// begin registers c as lingering; the channel is closed if the tracker
// closes c early. ok is false, nothing registered, when c must close at
// once instead: after Shutdown, or with more than max connections open.
func (t *connTracker) begin(c *trackedConn) (gone chan struct{}, ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c == nil || t.shut || t.open.Load() > t.max {
		return nil, false
	}
	if t.lingering == nil {
		t.lingering = make(map[*trackedConn]chan struct{})
	}
	gone = make(chan struct{})
	t.lingering[c] = gone
	t.wg.Add(1)
	return gone, true
}

// end unregisters c (if still there) once its linger goroutine is done
// with it.
func (t *connTracker) end(c *trackedConn) {
	t.mu.Lock()
	delete(t.lingering, c)
	t.mu.Unlock()
	t.wg.Done()
}

// lingeringCount is how many connections linger now.
func (t *connTracker) lingeringCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.lingering)
}

// shutdownGrace bounds the wait for lingering goroutines once ctx is done:
// they end as soon as their connection is closed.
const shutdownGrace = 100 * time.Millisecond

// shutdown closes every lingering connection, makes later lingers close at
// once, and waits for their goroutines: until ctx is done, then at most
// shutdownGrace more; it returns ctx.Err() if they did not all end.
func (t *connTracker) shutdown(ctx context.Context) error {
	t.mu.Lock()
	t.shut = true
	for c, gone := range t.lingering {
		delete(t.lingering, c)
		close(gone)
		c.Close()
	}
	t.mu.Unlock()
	done := make(chan struct{})
	go func() { t.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	select {
	case <-done:
		return nil
	case <-time.After(shutdownGrace):
		return ctx.Err()
	}
}

// waitLinger waits, reading nothing, until the peer closes (or shuts down
// its side of) c, c's read deadline passes, or the tracker closes c
// (gone). Where the peer's close cannot be seen without reading (not
// Linux, or a connection that is no syscall.Conn), only the deadline
// and gone end it.
func waitLinger(c net.Conn, gone <-chan struct{}, deadline time.Time) {
	if waitPeerClose(c) {
		return
	}
	tm := time.NewTimer(time.Until(deadline))
	defer tm.Stop()
	select {
	case <-tm.C:
	case <-gone:
	}
}
