package ingest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"
)

// Defaults of Options' limits on clients. A producer on loopback sends a
// 5 MiB body in milliseconds; these bound clients that never finish.
const (
	// DefaultMaxConns is the most open HTTP connections (the TCP
	// listener's DefaultTCPMaxConns too).
	DefaultMaxConns = 10000
	// DefaultHeaderTimeout bounds the wait for a request's head: from a
	// connection's open, or a keep-alive request's first byte, to the end
	// of its headers.
	DefaultHeaderTimeout = 10 * time.Second
	// DefaultBodyTimeout bounds reading a body, from the end of the
	// headers (a 5 MiB body at 1 Mbit/s takes 42 s).
	DefaultBodyTimeout = 60 * time.Second
	// DefaultIdleTimeout bounds a keep-alive connection's wait for its
	// next request. It is longer than Go's http.Transport idle timeout
	// (90 s), so a Go client closes an idle connection before deferd does
	// and never sends a POST on a connection deferd is closing.
	DefaultIdleTimeout = 120 * time.Second
	// DefaultMaxInflightBodyBytes is the body budget: the most bytes of
	// request bodies being received at once, over all connections.
	DefaultMaxInflightBodyBytes = 128 << 20
)

// ErrBodyBudget answers a /pub or /mpub whose body would take the bytes
// of bodies being received past Options.MaxInflightBodyBytes. It is
// decided before the body is read: nothing of it is buffered or
// published, and the client may retry.
var ErrBodyBudget = &Error{503, "BODY_BUDGET_EXCEEDED"}

// errBudget is readBody's error for a body the budget refused.
var errBudget = errors.New("ingest: body budget exceeded")

// smallBody is the largest body that may use all of the body budget;
// larger ones may use all but budgetReserve of it (see bodyBudget).
const smallBody = initialBodyBuf

// bodyBudget is the Server's budget of request body bytes being received.
// A request takes its share before its body is read and gives it back
// when it ends. Bodies over smallBody may only fill the budget up to
// limit-reserve: clients holding large half-sent bodies (until
// BodyTimeout) cannot starve the small requests of a normal producer.
// Safe for concurrent use.
type bodyBudget struct {
	limit, reserve int64
	used           atomic.Int64
}

func newBodyBudget(limit int64) *bodyBudget {
	return &bodyBudget{limit: limit, reserve: limit / 8}
}

// take reserves n more bytes for a request that will then hold total
// bytes; false (nothing reserved) if that would pass the budget.
func (b *bodyBudget) take(n, total int64) bool {
	lim := b.limit
	if total > smallBody {
		lim -= b.reserve
	}
	for {
		u := b.used.Load()
		if u+n > lim {
			return false
		}
		if b.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

func (b *bodyBudget) give(n int64) { b.used.Add(-n) }

// reserve makes st hold at least n bytes of s's budget; false if the
// budget refused (st keeps what it held).
func (s *Server) reserve(st *reqState, n int64) bool {
	if n <= st.reserved {
		return true
	}
	if !s.budget.take(n-st.reserved, n) {
		s.lim.budgetRefused.Inc()
		return false
	}
	st.budget = s.budget
	st.reserved = n
	return true
}

// release gives back what st holds of the budget.
func (st *reqState) release() {
	if st.budget != nil {
		st.budget.give(st.reserved)
	}
	st.budget, st.reserved = nil, 0
}

// limitMetrics count what the limits on clients did.
type limitMetrics struct {
	aborted        *metrics.Counter // connections ended by a client's fault (see errorHandler, bodyError)
	headerTimeouts *metrics.Counter
	bodyTimeouts   *metrics.Counter
	idleTimeouts   *metrics.Counter
	budgetRefused  *metrics.Counter
	logSuppressed  *metrics.Counter
}

// initLimits creates s.lim in s's metrics set, with the gauges of the
// budget and the connections.
func (s *Server) initLimits() {
	set, m := s.m.set, &s.lim
	m.aborted = set.NewCounter(`deferd_ingest_http_connections_aborted_total`)
	m.headerTimeouts = set.NewCounter(`deferd_ingest_http_timeouts_total{phase="header"}`)
	m.bodyTimeouts = set.NewCounter(`deferd_ingest_http_timeouts_total{phase="body"}`)
	m.idleTimeouts = set.NewCounter(`deferd_ingest_http_timeouts_total{phase="idle"}`)
	m.budgetRefused = set.NewCounter(`deferd_ingest_body_budget_refused_total`)
	m.logSuppressed = set.NewCounter(`deferd_ingest_log_lines_suppressed_total`)
	set.NewGauge(`deferd_ingest_body_budget_used_bytes`, func() float64 { return float64(s.budget.used.Load()) })
	set.NewGauge(`deferd_ingest_http_connections`, func() float64 { return float64(s.srv.GetOpenConnectionsCount()) })
	set.RegisterMetricsWriter(func(w io.Writer) {
		metrics.WriteCounterUint64(w, `deferd_ingest_http_connections_refused_total`, uint64(s.srv.GetRejectedConnectionsCount()))
	})
}

// Client error reasons: deferd_ingest_client_errors_total{reason,code}
// counts requests that failed by the client's fault, whatever the answer
// (a body cut off gets nsqd's 500 INTERNAL_ERROR), so a 5xx alert can
// subtract the code="500" ones.
const (
	reasonBodyCutOff    = "body_cut_off"    // the connection ended before the body did
	reasonBadChunk      = "bad_chunk"       // malformed chunked encoding
	reasonBodyTimeout   = "body_timeout"    // the body did not arrive within BodyTimeout
	reasonBodyRead      = "body_read"       // another error reading the body (a reset)
	reasonHeaderTimeout = "header_timeout"  // the head did not arrive within HeaderTimeout (no answer)
	reasonHeadTooLarge  = "headers_too_big" // 431
	reasonBadRequest    = "bad_request"     // a head that is not HTTP (400)
)

// clientError counts a request that failed by the client's fault, with
// the status code it was answered (0: none).
func (s *Server) clientError(reason string, code int) {
	s.m.set.GetOrCreateCounter(`deferd_ingest_client_errors_total{reason="` + reason + `",code="` + itoa(code) + `"}`).Inc()
}

func itoa(n int) string {
	if n == 0 {
		return "none"
	}
	var b [8]byte
	i := len(b)
	for n > 0 && i > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// bodyErrorReason classifies an error reading a request body.
func bodyErrorReason(err error) string {
	var bc fasthttp.ErrBrokenChunk
	var ne net.Error
	switch {
	case errors.As(err, &bc), strings.Contains(err.Error(), "hex number"):
		// fasthttp's chunk size parser has unexported errors of its own
		// ("empty hex number", "too large hex number").
		return reasonBadChunk
	case errors.As(err, &ne) && ne.Timeout():
		return reasonBodyTimeout
	case errors.Is(err, io.ErrUnexpectedEOF):
		return reasonBodyCutOff
	}
	return reasonBodyRead
}

// bodyError is the answer to readBody's error err: 503
// BODY_BUDGET_EXCEEDED for the budget's refusal; else nsqd's 500
// INTERNAL_ERROR, counted as a client error.
func (s *Server) bodyError(err error) *Error {
	if err == errBudget {
		return ErrBodyBudget
	}
	s.countBodyError(err, errInternal.Code)
	return errInternal
}

// refuseWait is how long a connection whose body the budget refused
// stays open after its 503 at most, reading nothing (it ends early when
// the client closes, or at Shutdown): long enough for a client
// still sending to read the answer before the close (closing with unread
// data resets the connection, and a reset can destroy the 503 before the
// client reads it), and it paces a sender that reopens as soon as deferd
// closes to one refused body per connection per refuseWait. A waiting
// connection costs a socket and a parked goroutine, and counts against
// Options.MaxConns (connTracker). Nothing of the
// refused body is read: a sender reopening at once and sending 5 MB each
// time (TestAttack) would otherwise have deferd's cores copying its bytes.
const refuseWait = time.Second

// refuseBody answers a body the budget refused: 503 BODY_BUDGET_EXCEEDED
// with Connection: close, the write side half-closed at once; the
// connection is closed refuseWait later without reading what the client
// still sends. Nothing of the request is published. A client that reads
// its answer only after sending the whole body (no concurrent read, as Go's
// http.Transport and curl have) sees a reset instead of the 503.
func (s *Server) refuseBody(ctx *fasthttp.RequestCtx, st *reqState) {
	s.writeError(ctx, ErrBodyBudget)
	st.ended = true // finish must not linger again
	s.lingerCloseFor(ctx, refuseWait, 0)
}

// countBodyError counts a failed body read (not the budget's refusal),
// answered with code: a client error, and an aborted connection (the
// connection does not survive it).
func (s *Server) countBodyError(err error, code int) {
	reason := bodyErrorReason(err)
	if reason == reasonBodyTimeout {
		s.lim.bodyTimeouts.Inc()
	}
	s.lim.aborted.Inc()
	s.clientError(reason, code)
}

// trackedConn is an accepted connection with its fasthttp state, so that
// a read timing out while the connection is idle between requests counts
// as an idle timeout, counted among the open connections (connTracker)
// until its first Close.
type trackedConn struct {
	net.Conn
	idle   atomic.Bool
	closed atomic.Bool
	m      *limitMetrics
	t      *connTracker
}

// Close closes the connection; the first call counts it closed.
func (c *trackedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.t.open.Add(-1)
	}
	return c.Conn.Close()
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil && c.idle.Load() {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			c.m.idleTimeouts.Inc()
		}
	}
	return n, err
}

// CloseWrite half-closes the connection, as lingerClose needs.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

type trackingListener struct {
	net.Listener
	m *limitMetrics
	t *connTracker
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.t.accepted()
	return &trackedConn{Conn: c, m: l.m, t: l.t}, nil
}

// connState is fasthttp's ConnState hook: it marks the idle connections.
func connState(c net.Conn, st fasthttp.ConnState) {
	if tc, ok := c.(*trackedConn); ok {
		tc.idle.Store(st == fasthttp.StateIdle)
	}
}

// logWindow is how often a Server logs what fasthttp reports about
// connections: at most one line per window, then one line with the count
// of those left out.
const logWindow = time.Second

// rateLogger is fasthttp's Logger for a Server: its lines (mostly one per
// failed connection, "error when serving connection ...") come at most
// one per logWindow;
// the rest are counted (deferd_ingest_log_lines_suppressed_total) and
// reported in one line at the end of the window. Safe for concurrent use.
type rateLogger struct {
	f func(string, ...any)
	m *limitMetrics

	mu         sync.Mutex
	last       time.Time // when the last line was written
	suppressed int
	timer      *time.Timer
}

func (l *rateLogger) Printf(format string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.last) < logWindow {
		l.suppressed++
		l.m.logSuppressed.Inc()
		if l.timer == nil {
			l.timer = time.AfterFunc(logWindow-now.Sub(l.last), l.flush)
		}
		l.mu.Unlock()
		return
	}
	l.last = now
	l.mu.Unlock()
	l.f("ingest: "+format, args...)
}

// flush reports the lines left out in the window that just ended.
func (l *rateLogger) flush() {
	l.mu.Lock()
	n := l.suppressed
	l.suppressed, l.timer = 0, nil
	if n > 0 {
		l.last = time.Now()
	}
	l.mu.Unlock()
	if n > 0 {
		l.f("ingest: %d more connection log lines suppressed in the last %v (deferd_ingest_log_lines_suppressed_total)", n, logWindow)
	}
}

// fillLimits checks o's limits on clients and sets the defaults of the
// zero ones.
func (o *Options) fillLimits() error {
	switch {
	case o.MaxConns < 0:
		return fmt.Errorf("ingest: MaxConns must be >= 0, got %d", o.MaxConns)
	case o.HeaderTimeout < 0 || o.BodyTimeout < 0 || o.IdleTimeout < 0:
		return fmt.Errorf("ingest: HeaderTimeout, BodyTimeout and IdleTimeout must be >= 0, got %v, %v, %v", o.HeaderTimeout, o.BodyTimeout, o.IdleTimeout)
	case o.MaxInflightBodyBytes < 0:
		return fmt.Errorf("ingest: MaxInflightBodyBytes must be >= 0, got %d", o.MaxInflightBodyBytes)
	}
	if o.MaxConns == 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.HeaderTimeout == 0 {
		o.HeaderTimeout = DefaultHeaderTimeout
	}
	if o.BodyTimeout == 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.MaxInflightBodyBytes == 0 {
		o.MaxInflightBodyBytes = DefaultMaxInflightBodyBytes
	}
	return nil
}

// bodyDeadline is fasthttp's HeaderReceived hook: the body of every
// request gets d from the end of its head.
func bodyDeadline(d time.Duration) func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
	return func(*fasthttp.RequestHeader) fasthttp.RequestConfig {
		return fasthttp.RequestConfig{ReadTimeout: d}
	}
}
