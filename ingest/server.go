package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/valyala/fasthttp"

	"github.com/deferd/deferd/internal/errs"
	"github.com/deferd/deferd/internal/intern"
)

// Options configure a Server. The zero value of every field means its
// default.
type Options struct {
	Addr        string                           // listen address, default "127.0.0.1:4180"
	MaxMsgSize  int64                            // default 1 MiB (nsqd's --max-msg-size)
	MaxBodySize int64                            // default 5 MiB (nsqd's --max-body-size)
	MaxDefer    time.Duration                    // default 365*24h
	Logf        func(format string, args ...any) // nil = log.Printf

	// Limits on clients (ingest/limits.go has the defaults and why).
	// MaxConns bounds the open connections, default DefaultMaxConns: one
	// beyond it gets fasthttp's plain-text "503 Service Unavailable" and
	// is closed (deferd_ingest_http_connections_refused_total). Connections
	// lingering after a refused body count too: one accepted past
	// MaxConns closes a lingering one, and a refusal with more than
	// MaxConns open is closed at once instead of lingering.
	MaxConns int
	// HeaderTimeout bounds the wait for a request's head, from the
	// connection's open (first request) or the request's first byte
	// (keep-alive), default DefaultHeaderTimeout. Past it the connection
	// is closed without an answer, as Go's net/http does.
	HeaderTimeout time.Duration
	// BodyTimeout bounds the reading of a body, from the end of the head,
	// default DefaultBodyTimeout. Past it /pub and /mpub answer nsqd's
	// 500 INTERNAL_ERROR to a body read error and publish nothing.
	BodyTimeout time.Duration
	// IdleTimeout bounds a keep-alive connection's wait for its next
	// request, default DefaultIdleTimeout; then it is closed.
	IdleTimeout time.Duration
	// MaxInflightBodyBytes is the body budget, default
	// DefaultMaxInflightBodyBytes: the most bytes of request bodies being
	// received at once over all connections. A /pub or /mpub that would
	// pass it (its Content-Length, or a chunked body as it grows) gets 503
	// BODY_BUDGET_EXCEEDED before its body is buffered; its bytes return
	// to the budget when the request ends. Bodies over 64 KiB may use only
	// 7/8 of it, so large half-sent bodies cannot starve small requests.
	// A refused body is not read: the connection is closed 1 s after the
	// 503 (refuseWait), or when the client closes first.
	MaxInflightBodyBytes int64
	// Listener, if set, is the bound listener to serve on instead of
	// binding Addr (a caller can bind before it starts its backend);
	// the Server owns it from then on and closes it on Shutdown.
	Listener net.Listener
	// UI serves the status page (package ingest/ui) at GET / and its
	// files under /ui/; false (the zero value): GET / is 404 NOT_FOUND,
	// as in nsqd. deferd's Options.UI turns it on by default.
	UI bool
}

// Defaults of Options.
const (
	DefaultAddr        = "127.0.0.1:4180"
	DefaultMaxMsgSize  = 1 << 20
	DefaultMaxBodySize = 5 << 20
	DefaultMaxDefer    = 365 * 24 * time.Hour
)

// PubRequest is one accepted /pub or /mpub: one or more messages for a topic,
// all due at the same time.
type PubRequest struct {
	Topic  string
	Bodies [][]byte // alias the request's memory: valid only during Backend.Publish; the backend must copy what it keeps
	Due    int64    // unix ms, always set; no delay: the current ms rounded down (already due)
	ID     string   // /pub only; "" if none
}

// Backend keeps what the Server accepts. Its methods are called from many
// goroutines at once.
type Backend interface {
	// Publish durably accepts every body of req or none of them. It returns nil (→ 200 OK), an *Error (→ its status and
	// {"message":Text}), or another error (→ 500 INTERNAL_ERROR). A backend that hands bodies already due straight to
	// nsqd may have published some of them before an error: "none" then means none of the others (at-least-once).
	Publish(req *PubRequest) error
	Cancel(id string) error // nil → 200 OK; ErrNotFound → 404
	Info() any              // JSON-encoded for /info
	Stats() any             // JSON-encoded for /stats
	// WriteMetrics writes the backend's metrics in Prometheus text format
	// for /metrics; the Server appends its own.
	WriteMetrics(w io.Writer)
}

// Error is an HTTP error: the status Code and the Text sent as
// {"message":Text}, nsqd's error format.
type Error struct {
	Code int
	Text string
}

func (e *Error) Error() string { return e.Text }

// The answers to the errors a Backend returns (errs' sentinels, which the
// root package exports as deferd.ErrNotFound and so on), matched with
// errors.Is by errorOf.
var (
	ErrNotFound     = &Error{404, "NOT_FOUND"}
	ErrOverCapacity = &Error{503, "OVER_CAPACITY"}       // pending message/byte limits reached
	ErrUnavailable  = &Error{503, "JOURNAL_UNAVAILABLE"} // can't write to disk
	ErrExiting      = &Error{503, "EXITING"}             // shutting down (nsqd's word)
	// ErrInFlight answers a cancel of a message being handed to nsqd right
	// now: the outcome is not known yet (if nsqd does not take it, it is
	// retried later, and a cancel then succeeds).
	ErrInFlight = &Error{409, "IN_FLIGHT"}
	// ErrTooManyTopics answers a publish that would add a topic past the
	// topic cap (deferd.Options.MaxTopics).
	ErrTooManyTopics = &Error{503, "TOO_MANY_TOPICS"}
)

// backendErrors maps the scheduler's sentinel errors to their answers.
var backendErrors = [...]struct {
	err error
	ans *Error
}{
	{errs.NotFound, ErrNotFound},
	{errs.OverCapacity, ErrOverCapacity},
	{errs.TooManyTopics, ErrTooManyTopics},
	{errs.JournalUnavailable, ErrUnavailable},
	{errs.Closed, ErrExiting},
	{errs.InFlight, ErrInFlight},
}

// errorOf is the answer to a Backend's error: an *Error it returned as is,
// the answer to one of errs' sentinels, or nil for any other error (500
// INTERNAL_ERROR, logged).
func errorOf(err error) *Error {
	var e *Error
	if errors.As(err, &e) && e != nil {
		return e
	}
	for _, m := range backendErrors {
		if errors.Is(err, m.err) {
			return m.ans
		}
	}
	return nil
}

// Server serves deferd's HTTP API. Its methods are safe for concurrent use.
type Server struct {
	b          Backend
	logf       func(format string, args ...any)
	ln         net.Listener
	srv        *fasthttp.Server
	maxMsg     int64
	maxBody    int64
	maxDeferMs int64
	topics     intern.Table // topic names: a known one costs no allocation
	m          serverMetrics
	lim        limitMetrics // in m.set
	budget     *bodyBudget
	ui         bool        // Options.UI
	conns      connTracker // open connections, and those lingering after a refusal

	mu       sync.Mutex
	state    int // stateNew, stateServing, stateShut
	shutOnce sync.Once
	shutErr  error
}

const (
	stateNew = iota
	stateServing
	stateShut
)

// beginServe moves a server's state (guarded by mu) from stateNew to
// stateServing for its Serve. serve is false if Serve must return at once:
// with nil after Shutdown, with an error if Serve was called before.
func beginServe(mu *sync.Mutex, state *int) (serve bool, err error) {
	mu.Lock()
	defer mu.Unlock()
	switch *state {
	case stateShut:
		return false, nil
	case stateServing:
		return false, errors.New("ingest: Serve called twice")
	}
	*state = stateServing
	return true, nil
}

// readBufferSize bounds a request's head (request line and headers).
const readBufferSize = 16 << 10

// NewServer validates opts and binds the listener, so Addr is known before
// Serve.
func NewServer(opts Options, b Backend) (*Server, error) {
	if b == nil {
		return nil, errors.New("ingest: nil Backend")
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	switch {
	case opts.MaxMsgSize < 0:
		return nil, fmt.Errorf("ingest: MaxMsgSize must be >= 0, got %d", opts.MaxMsgSize)
	case opts.MaxBodySize < 0:
		return nil, fmt.Errorf("ingest: MaxBodySize must be >= 0, got %d", opts.MaxBodySize)
	case opts.MaxDefer < 0:
		return nil, fmt.Errorf("ingest: MaxDefer must be >= 0, got %v", opts.MaxDefer)
	}
	if opts.MaxMsgSize == 0 {
		opts.MaxMsgSize = DefaultMaxMsgSize
	}
	if opts.MaxBodySize == 0 {
		opts.MaxBodySize = DefaultMaxBodySize
	}
	if opts.MaxDefer == 0 {
		opts.MaxDefer = DefaultMaxDefer
	}
	if opts.MaxBodySize > 1<<30 || opts.MaxMsgSize > 1<<30 {
		return nil, fmt.Errorf("ingest: MaxMsgSize and MaxBodySize must be <= 1 GiB")
	}
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	if err := opts.fillLimits(); err != nil {
		return nil, err
	}
	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", opts.Addr); err != nil {
			return nil, fmt.Errorf("ingest: %w", err)
		}
	}
	s := &Server{
		b:          b,
		logf:       opts.Logf,
		ln:         ln,
		maxMsg:     opts.MaxMsgSize,
		maxBody:    opts.MaxBodySize,
		maxDeferMs: opts.MaxDefer.Milliseconds(),
		m:          newServerMetrics(),
		budget:     newBodyBudget(opts.MaxInflightBodyBytes),
		ui:         opts.UI,
	}
	s.conns.max = int64(opts.MaxConns)
	s.initLimits()
	s.srv = &fasthttp.Server{
		Handler:               s.handle,
		NoDefaultServerHeader: true, // nsqd sends none
		ErrorHandler:          s.errorHandler,
		ReadBufferSize:        readBufferSize,
		CloseOnShutdown:       true,
		// Bodies are read by the handler through the stream, with nsqd's
		// limits and error codes; fasthttp only pre-reads up to 8 KiB.
		StreamRequestBody:            true,
		MaxRequestBodySize:           int(opts.MaxBodySize) + 1,
		DisablePreParseMultipartForm: true,
		Logger:                       &rateLogger{f: opts.Logf, m: &s.lim},
		// The limits on clients: ReadTimeout runs from the connection's
		// open (or a keep-alive request's first byte) to the end of the
		// head; headerReceived then gives the body BodyTimeout.
		Concurrency:    opts.MaxConns,
		ReadTimeout:    opts.HeaderTimeout,
		IdleTimeout:    opts.IdleTimeout,
		HeaderReceived: bodyDeadline(opts.BodyTimeout),
		ConnState:      connState,
	}
	s.ln = trackingListener{Listener: ln, m: &s.lim, t: &s.conns}
	return s, nil
}

// errorHandler answers requests fasthttp cannot read as Go's net/http
// (and so nsqd) does. io.ErrUnexpectedEOF: the connection ended inside a
// body short enough for fasthttp to read before the handler; nsqd's /pub
// and /mpub see the same error when they read the body and answer 500
// INTERNAL_ERROR, publishing nothing. (fasthttp has reset the request by
// now, so the route is unknown: a cut-off body on a route that does not
// read it, which nsqd would answer as usual, gets the same 500.) A read
// timeout (HeaderTimeout) closes the connection without an answer, as Go's
// net/http does. fasthttp closes the connection after any of these; each
// counts as an aborted connection and a client error.
func (s *Server) errorHandler(ctx *fasthttp.RequestCtx, err error) {
	s.lim.aborted.Inc()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		s.lim.headerTimeouts.Inc()
		s.clientError(reasonHeaderTimeout, 0)
		ctx.Conn().Close() // what fasthttp writes next goes nowhere
		return
	}
	if err == io.ErrUnexpectedEOF {
		s.clientError(reasonBodyCutOff, errInternal.Code)
		s.writeError(ctx, errInternal)
		return
	}
	var small *fasthttp.ErrSmallBuffer
	if errors.As(err, &small) {
		s.clientError(reasonHeadTooLarge, fasthttp.StatusRequestHeaderFieldsTooLarge)
		ctx.Error("431 Request Header Fields Too Large", fasthttp.StatusRequestHeaderFieldsTooLarge)
		return
	}
	reason := reasonBadRequest
	var bc fasthttp.ErrBrokenChunk
	if errors.As(err, &bc) {
		reason = reasonBadChunk
	}
	s.clientError(reason, fasthttp.StatusBadRequest)
	ctx.Error("400 Bad Request", fasthttp.StatusBadRequest)
}

// Addr returns the bound host:port.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves HTTP until Shutdown, then returns nil. It returns at once if
// Shutdown came first.
func (s *Server) Serve() error {
	if serve, err := beginServe(&s.mu, &s.state); !serve {
		return err
	}
	err := s.srv.Serve(s.ln)
	s.mu.Lock()
	shut := s.state == stateShut
	s.mu.Unlock()
	if shut {
		return nil
	}
	return err
}

// Shutdown stops accepting connections, waits for in-flight requests to
// finish (closing idle keep-alive connections), closes the connections
// lingering after a refused body (their answer sent) and waits for their
// goroutines, and makes Serve return. As
// in net/http, a connection that has not sent its first request counts as
// idle only 5 s after it was opened, so a client's spare connection can
// delay Shutdown that long. It waits for as long as requests take; see
// ShutdownWithin for a bound. It is idempotent; later calls (of either)
// return the first call's result.
func (s *Server) Shutdown() error { return s.shutdown(context.Background()) }

// ShutdownWithin is Shutdown waiting at most d for in-flight requests: a
// client that stalls mid-request (half its headers, a body shorter than
// its Content-Length) would otherwise hold it forever. Requests still
// being served when d has passed go on until they end or the process
// exits; it then returns context.DeadlineExceeded.
func (s *Server) ShutdownWithin(d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return s.shutdown(ctx)
}

func (s *Server) shutdown(ctx context.Context) error {
	s.shutOnce.Do(func() {
		s.mu.Lock()
		was := s.state
		s.state = stateShut
		s.mu.Unlock()
		if was == stateServing {
			s.shutErr = s.srv.ShutdownWithContext(ctx)
		}
		// fasthttp leaves hijacked connections alone: close the lingering
		// ones (a 503 or 413 already answered) and wait for them.
		if err := s.conns.shutdown(ctx); err != nil && s.shutErr == nil {
			s.shutErr = err
		}
		// Serve may not have registered the listener with fasthttp yet;
		// closing it here makes that Serve return too.
		if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) && s.shutErr == nil {
			s.shutErr = err
		}
	})
	return s.shutErr
}

// serverMetrics are a Server's own counters, in its own metrics.Set, so
// two Servers in one process do not share them.
type serverMetrics struct {
	set                    *metrics.Set
	pub, mpub, cancel      *metrics.Counter // requests
	messages, messageBytes *metrics.Counter
}

func newServerMetrics() serverMetrics {
	set := metrics.NewSet()
	return serverMetrics{
		set:          set,
		pub:          set.NewCounter(`deferd_ingest_requests_total{path="/pub"}`),
		mpub:         set.NewCounter(`deferd_ingest_requests_total{path="/mpub"}`),
		cancel:       set.NewCounter(`deferd_ingest_requests_total{path="/cancel"}`),
		messages:     set.NewCounter(`deferd_ingest_messages_total`),
		messageBytes: set.NewCounter(`deferd_ingest_message_bytes_total`),
	}
}

// countError counts an error answer by status and message: one series per
// distinct answer (a fixed set: ingest's own errors and the backend's).
func (s *Server) countError(e *Error) {
	s.m.set.GetOrCreateCounter(`deferd_ingest_errors_total{code="` + strconv.Itoa(e.Code) +
		`",message=` + strconv.Quote(e.Text) + `}`).Inc()
}

// Metrics is the Server's own metrics.Set (requests, messages, errors).
// /metrics writes it after the Backend's metrics.
func (s *Server) Metrics() *metrics.Set { return s.m.set }
