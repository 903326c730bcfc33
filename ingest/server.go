package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log"
	"net"
	gopath "path"
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
	// is closed (deferd_ingest_http_connections_refused_total).
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
)

// backendErrors maps the scheduler's sentinel errors to their answers.
var backendErrors = [...]struct {
	err error
	ans *Error
}{
	{errs.NotFound, ErrNotFound},
	{errs.OverCapacity, ErrOverCapacity},
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
	ui         bool // Options.UI

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
	s.ln = trackingListener{Listener: ln, m: &s.lim}
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
	s.mu.Lock()
	switch s.state {
	case stateShut:
		s.mu.Unlock()
		return nil
	case stateServing:
		s.mu.Unlock()
		return errors.New("ingest: Serve called twice")
	}
	s.state = stateServing
	s.mu.Unlock()
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
// finish (closing idle keep-alive connections) and makes Serve return. As
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
		// Serve may not have registered the listener with fasthttp yet;
		// closing it here makes that Serve return too.
		if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) && s.shutErr == nil {
			s.shutErr = err
		}
	})
	return s.shutErr
}

// Response pieces, preallocated.
var (
	bodyOK        = []byte("OK")
	http10        = []byte("HTTP/1.0")
	hdrNSQCT      = []byte("X-NSQ-Content-Type")
	valNSQCT      = []byte("nsq; version=1.0")
	ctJSON        = []byte("application/json; charset=utf-8")
	allowGET      = []byte("GET, OPTIONS")
	allowPOST     = []byte("OPTIONS, POST") // sorted, as httprouter sends them
	hdrAllow      = []byte("Allow")
	ctPrometheus  = []byte("text/plain; version=0.0.4; charset=utf-8")
	methodOptions = []byte(fasthttp.MethodOptions)
)

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

// route is one of deferd's HTTP endpoints.
type route struct {
	path string
	get  bool // GET; else POST
	h    func(*Server, *fasthttp.RequestCtx)
}

var routes = [...]route{
	{"/pub", false, (*Server).pub},
	{"/mpub", false, (*Server).mpub},
	{"/cancel", false, sameOriginOnly((*Server).cancel)}, // csrf.go
	{"/ping", true, (*Server).ping},
	{"/info", true, (*Server).info},
	{"/stats", true, (*Server).stats},
	{"/metrics", true, (*Server).metrics},
	{"/message", true, (*Server).message}, // operator.go
	{"/pending", true, (*Server).pending},
	{"/reschedule", false, sameOriginOnly((*Server).reschedule)},
}

func findRoute(path []byte) *route {
	switch string(path) {
	case "/pub":
		return &routes[0]
	case "/mpub":
		return &routes[1]
	case "/cancel":
		return &routes[2]
	case "/ping":
		return &routes[3]
	case "/info":
		return &routes[4]
	case "/stats":
		return &routes[5]
	case "/metrics":
		return &routes[6]
	case "/message":
		return &routes[7]
	case "/pending":
		return &routes[8]
	case "/reschedule":
		return &routes[9]
	}
	return nil
}

// handle routes a request the way nsqd's httprouter does for deferd's
// routes: the route's handler; else a redirect to the route a trailing
// slash, an unclean path or letter case missed (301 for GET, 307 for POST);
// 200 with Allow for OPTIONS; 405 with Allow for another method; 404.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	defer func() {
		if p := recover(); p != nil {
			s.logf("ingest: panic in HTTP handler: %v", p)
			ctx.Response.Reset()
			s.writeError(ctx, errInternal)
		}
	}()
	if !ctx.Request.Header.IsHTTP11() {
		ctx.Response.Header.SetProtocol(http10) // as Go's net/http answers HTTP/1.0
	}
	// Route on the path as sent, decoded but not cleaned, as Go's
	// net/http gives it to httprouter.
	path := ctx.URI().PathOriginal()
	if bytes.IndexByte(path, '%') >= 0 {
		p, ok := unescapePath(path)
		if !ok {
			// Go's server rejects the request line.
			ctx.SetConnectionClose()
			ctx.Error("400 Bad Request", fasthttp.StatusBadRequest)
			return
		}
		path = p
	}
	if s.ui && ctx.IsGet() && s.serveUI(ctx, path) { // ui.go
		lingerIfUnread(ctx, 0, false)
		return
	}
	r := findRoute(path)
	isGet, isPost := ctx.IsGet(), ctx.IsPost()
	// Fast path. The majority of calls must go here.
	if r != nil && (r.get && isGet || !r.get && isPost) {
		r.h(s, ctx)
		if r.get {
			lingerIfUnread(ctx, 0, false)
		}
		return
	}
	defer lingerIfUnread(ctx, 0, false)
	if (isGet || isPost) && string(path) != "/" {
		if to := fixPath(path, isGet); to != "" {
			redirect(ctx, to, isGet)
			return
		}
	}
	switch {
	case r == nil:
		s.writeError(ctx, errNotFound)
	case bytes.Equal(ctx.Method(), methodOptions):
		ctx.Response.Header.SetBytesKV(hdrAllow, allowOf(r))
		ctx.Response.Header.SetNoDefaultContentType(true)
	default:
		ctx.Response.Header.SetBytesKV(hdrAllow, allowOf(r))
		s.writeError(ctx, errMethodNotAllowed)
	}
}

func allowOf(r *route) []byte {
	if r.get {
		return allowGET
	}
	return allowPOST
}

// unescapePath percent-decodes a path as net/url does ('+' stays).
func unescapePath(p []byte) ([]byte, bool) {
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			out = append(out, p[i])
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return nil, false
		}
		out = append(out, unhex(p[i+1])<<4|unhex(p[i+2]))
		i += 2
	}
	return out, true
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// fixPath returns the route of the method that httprouter's
// RedirectTrailingSlash or RedirectFixedPath would send path to: path
// cleaned, without a trailing slash, compared ignoring ASCII case; "" if
// none.
func fixPath(p []byte, get bool) string {
	c := gopath.Clean("/" + string(p))
	for i := range routes {
		if routes[i].get == get && asciiEqualFold(c, routes[i].path) {
			return routes[i].path
		}
	}
	return ""
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// redirect answers as httprouter does through http.Redirect: Location is
// the route plus the request's raw query; GET gets 301 and a short HTML
// body, other methods 307 and no body.
func redirect(ctx *fasthttp.RequestCtx, to string, get bool) {
	uri := ctx.Request.Header.RequestURI()
	loc := []byte(to)
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		loc = append(loc, uri[i:]...)
	}
	var esc []byte
	for _, c := range loc {
		if c >= 0x80 {
			esc = append(esc, '%', "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		} else {
			esc = append(esc, c)
		}
	}
	ctx.Response.Header.SetBytesV("Location", esc)
	if !get {
		ctx.SetStatusCode(fasthttp.StatusTemporaryRedirect)
		ctx.Response.Header.SetNoDefaultContentType(true)
		return
	}
	ctx.SetStatusCode(fasthttp.StatusMovedPermanently)
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBodyString("<a href=\"" + html.EscapeString(string(loc)) + "\">Moved Permanently</a>.\n\n")
}

func writeOK(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetBytesKV(hdrNSQCT, valNSQCT)
	ctx.Response.SetBodyRaw(bodyOK)
}

// writeError sends e as nsqd does: its status, {"message":Text}, JSON
// content type.
func (s *Server) writeError(ctx *fasthttp.RequestCtx, e *Error) {
	s.countError(e)
	ctx.Response.Header.SetContentTypeBytes(ctJSON)
	ctx.Response.Header.SetBytesKV(hdrNSQCT, valNSQCT)
	ctx.SetStatusCode(e.Code)
	if plainText(e.Text) {
		ctx.Response.ResetBody()
		ctx.Response.AppendBodyString(`{"message":"`)
		ctx.Response.AppendBodyString(e.Text)
		ctx.Response.AppendBodyString(`"}`)
		return
	}
	b, _ := json.Marshal(struct {
		Message string `json:"message"`
	}{e.Text})
	ctx.SetBody(b)
}

// plainText reports whether json.Marshal leaves s as it is.
func plainText(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func (s *Server) writeJSON(ctx *fasthttp.RequestCtx, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.logf("ingest: %s: %v", ctx.Path(), err)
		s.writeError(ctx, errInternal)
		return
	}
	ctx.Response.Header.SetContentTypeBytes(ctJSON)
	ctx.Response.Header.SetBytesKV(hdrNSQCT, valNSQCT)
	ctx.SetBody(b)
}

// reqState is the per-request memory of /pub and /mpub, pooled.
type reqState struct {
	args   fasthttp.Args
	buf    []byte
	bodies [][]byte
	req    PubRequest
	read   int64 // body bytes read
	ended  bool  // the whole body was read

	budget   *bodyBudget // what reserved is held of, or nil
	reserved int64       // bytes held of the Server's body budget
}

var statePool = sync.Pool{New: func() any { return new(reqState) }}

// Pooled buffers larger than these are dropped rather than kept.
const (
	maxPooledBuf    = DefaultMaxBodySize + 1
	maxPooledBodies = 1 << 12
)

func getState() *reqState { return statePool.Get().(*reqState) }

func putState(st *reqState) {
	st.release()
	st.args.Reset()
	st.req = PubRequest{}
	st.read, st.ended = 0, false
	clear(st.bodies)
	st.bodies = st.bodies[:0]
	if cap(st.buf) > maxPooledBuf {
		st.buf = nil
	}
	if cap(st.bodies) > maxPooledBodies {
		st.bodies = nil
	}
	statePool.Put(st)
}

// parseQuery parses the raw query of the request URI into st.args. The raw
// query is everything after the first '?', as Go's net/http (and so nsqd)
// sees it, '#' included.
func (st *reqState) parseQuery(ctx *fasthttp.RequestCtx) *Error {
	uri := ctx.Request.Header.RequestURI()
	var q []byte
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		q = uri[i+1:]
	}
	if !validQuery(q) {
		return errInvalidRequest
	}
	st.args.ParseBytes(q)
	return nil
}

// readBody reads at most limit bytes of the request body into st.buf, as
// io.ReadAll(io.LimitReader(body, limit)) would, and notes in st.ended
// whether that was all of it. A body read from the stream first takes its
// bytes from s's body budget: all of min(Content-Length, limit) before
// reading, or, chunked, each step as it grows; errBudget (with nothing or
// only what was read before) if the budget refuses. putState gives them
// back.
func (s *Server) readBody(ctx *fasthttp.RequestCtx, st *reqState, limit int64) ([]byte, error) {
	r := ctx.RequestBodyStream()
	if r == nil {
		b := ctx.Request.Body()
		st.ended = true
		if int64(len(b)) > limit {
			b = b[:limit]
		}
		return b, nil
	}
	want := limit
	chunked := ctx.Request.Header.ContentLength() < 0
	if cl := ctx.Request.Header.ContentLength(); cl >= 0 && int64(cl) < want {
		want = int64(cl)
	}
	if !chunked && !s.reserve(st, want) {
		return nil, errBudget
	}
	buf := st.buf[:0]
	hint := int64(initialBodyBuf)
	if !chunked {
		hint = max(want, hint)
	}
	if int64(cap(buf)) > 2*hint {
		// A pooled buffer far larger than this body would be memory
		// outside the budget for as long as this request lasts.
		buf = nil
	}
	if first := min(want, initialBodyBuf); int64(cap(buf)) < first && ctx.Request.Header.ContentLength() >= 0 {
		// Not the whole Content-Length up front: a client that declares
		// 5 MiB and sends nothing more would hold 5 MiB of heap per
		// connection. The buffer grows below as bytes arrive.
		buf = make([]byte, 0, first)
	}
	var err error
	cl := ctx.Request.Header.ContentLength()
	for int64(len(buf)) < want {
		if len(buf) == cap(buf) {
			n := int64(max(2*cap(buf), 16<<10))
			nb := make([]byte, len(buf), min(n, want))
			copy(nb, buf)
			buf = nb
		}
		end := min(int64(cap(buf)), want)
		if chunked {
			// The budget grows with the body, a step ahead of it.
			if end = min(end, int64(len(buf))+initialBodyBuf); !s.reserve(st, end) {
				err = errBudget
				break
			}
		}
		var n int
		n, err = r.Read(buf[len(buf):end])
		buf = buf[:len(buf)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
				st.ended = true
			}
			break
		}
	}
	if cl >= 0 && len(buf) == cl {
		st.ended = true
	}
	if err == nil && cl >= 0 && int64(len(buf)) < want {
		// The connection ended before Content-Length bytes: fasthttp's
		// request stream reports that as io.EOF, Go's net/http (and so
		// nsqd) as io.ErrUnexpectedEOF. What came is not the message.
		err = io.ErrUnexpectedEOF
	}
	st.read = int64(len(buf))
	st.buf = buf
	return buf, err
}

// finish closes a /pub, /mpub or /cancel request: the connection lingers
// if much of the body is unread, and st goes back to the pool.
func (s *Server) finish(ctx *fasthttp.RequestCtx, st *reqState) {
	lingerIfUnread(ctx, st.read, st.ended)
	putState(st)
}

// maxUnreadDrain is how much unread body fasthttp discards to keep a
// connection alive (and what Go's net/http does too); past it the
// connection is closed.
const maxUnreadDrain = 256 << 10

// initialBodyBuf is the most readBody allocates before body bytes arrive.
const initialBodyBuf = 64 << 10

// A lingering close waits this long and reads this much at most.
const (
	lingerTimeout  = 3 * time.Second
	lingerMaxBytes = 128 << 20
)

// lingerIfUnread makes the connection linger on close when the response
// leaves more of the request body unread than fasthttp drains: the client
// may still be sending it, and closing a socket with unread data resets the
// connection, which can destroy the response before the client reads it.
// Go's net/http, and so nsqd, delays its close the same way, so a client
// sending an oversized body gets nsqd's 413, not a reset. read is how much
// of the body the handler read, ended whether that was all.
func lingerIfUnread(ctx *fasthttp.RequestCtx, read int64, ended bool) {
	if ended {
		return
	}
	r := ctx.RequestBodyStream()
	if r == nil {
		return
	}
	switch cl := ctx.Request.Header.ContentLength(); {
	case cl >= 0:
		if int64(cl)-read <= maxUnreadDrain {
			return // fasthttp discards it
		}
	case cl == -1: // chunked
		if _, err := io.CopyN(io.Discard, r, maxUnreadDrain+1); err != nil {
			return // the end (fine) or a broken body (fasthttp closes)
		}
	default:
		return
	}
	lingerClose(ctx)
}

// lingerClose sends the response itself on the hijacked connection with
// Connection: close, half-closes it, and reads and drops what the client
// still sends until it closes, lingerTimeout passes or lingerMaxBytes
// arrive; then fasthttp closes it.
func lingerClose(ctx *fasthttp.RequestCtx) { lingerCloseFor(ctx, lingerTimeout, lingerMaxBytes) }

// lingerCloseFor is lingerClose with its own bounds on the wait and the
// bytes read.
func lingerCloseFor(ctx *fasthttp.RequestCtx, timeout time.Duration, maxBytes int64) {
	ctx.Response.SetConnectionClose()
	resp := ctx.Response.String()
	raw := ctx.Conn()
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		c.SetWriteDeadline(time.Now().Add(timeout))
		if _, err := io.WriteString(c, resp); err != nil {
			return
		}
		if cw, ok := raw.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(timeout))
		io.CopyN(io.Discard, c, maxBytes)
	})
}

// ceilMs is the unix time ns in milliseconds, rounded up so that a due time
// computed from it is never early.
func ceilMs(ns int64) int64 { return (ns + 999_999) / 1_000_000 }

// due computes a request's due time from defer= or at=. A message without
// a delay (none, defer=0, or at= not after now) is due at the current
// millisecond, rounded down: it is already due, and the backend may hand it
// to nsqd at once. A delay counts from the current time rounded up, so the
// message is never early.
func (s *Server) due(args *fasthttp.Args) (int64, *Error) {
	ns := time.Now().UnixNano()
	now, up := ns/1_000_000, ceilMs(ns)
	hasDefer, hasAt := args.Has("defer"), args.Has("at")
	switch {
	case hasDefer && hasAt:
		return 0, errInvalidDefer
	case hasDefer:
		d, ok := parseInt(args.Peek("defer"))
		if !ok || d < 0 || d > s.maxDeferMs {
			return 0, errInvalidDefer
		}
		if d == 0 {
			return now, nil
		}
		return up + d, nil
	case hasAt:
		at, ok := parseInt(args.Peek("at"))
		if !ok || at < 0 || at > up+s.maxDeferMs {
			return 0, errInvalidDefer
		}
		return max(at, now), nil
	}
	return now, nil
}

// topic returns the request's topic, checked as nsqd checks it.
func (s *Server) topic(args *fasthttp.Args) (string, *Error) {
	if !args.Has("topic") {
		return "", errMissingTopic
	}
	name := args.Peek("topic")
	if !validTopic(name) {
		return "", errInvalidTopic
	}
	return s.topics.Get(name), nil
}

// pub is POST /pub, in nsqd's order: body size, empty body, query, topic,
// defer; then deferd's at= and id=.
func (s *Server) pub(ctx *fasthttp.RequestCtx) {
	s.m.pub.Inc()
	st := getState()
	defer s.finish(ctx, st)
	if int64(ctx.Request.Header.ContentLength()) > s.maxMsg {
		s.writeError(ctx, errMsgTooBig)
		return
	}
	readMax := s.maxMsg + 1
	body, err := s.readBody(ctx, st, readMax)
	if err == errBudget {
		s.refuseBody(ctx, st)
		return
	}
	if err != nil {
		s.writeError(ctx, s.bodyError(err))
		return
	}
	if int64(len(body)) == readMax {
		s.writeError(ctx, errMsgTooBig)
		return
	}
	if len(body) == 0 {
		s.writeError(ctx, errMsgEmpty)
		return
	}
	if e := st.parseQuery(ctx); e != nil {
		s.writeError(ctx, e)
		return
	}
	topic, e := s.topic(&st.args)
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	due, e := s.due(&st.args)
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	var id string
	if st.args.Has("id") {
		v := st.args.Peek("id")
		if !validID(v) {
			s.writeError(ctx, errInvalidID)
			return
		}
		id = string(v)
	}
	st.bodies = append(st.bodies[:0], body[:len(body):len(body)])
	s.publish(ctx, st, topic, due, id)
}

// mpub is POST /mpub, in nsqd's order: Content-Length, query, topic,
// binary; then deferd's defer=/at= and id=; then the body.
func (s *Server) mpub(ctx *fasthttp.RequestCtx) {
	s.m.mpub.Inc()
	st := getState()
	defer s.finish(ctx, st)
	if int64(ctx.Request.Header.ContentLength()) > s.maxBody {
		s.writeError(ctx, errBodyTooBig)
		return
	}
	if e := st.parseQuery(ctx); e != nil {
		s.writeError(ctx, e)
		return
	}
	topic, e := s.topic(&st.args)
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	binaryMode := false
	if st.args.Has("binary") {
		switch string(st.args.Peek("binary")) {
		case "false", "0":
		default: // "true", "1", and, as nsqd has it, anything else
			binaryMode = true
		}
	}
	due, e := s.due(&st.args)
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	if st.args.Has("id") {
		s.writeError(ctx, errInvalidID)
		return
	}
	readMax := s.maxBody + 1
	body, err := s.readBody(ctx, st, readMax)
	if err == errBudget {
		s.refuseBody(ctx, st)
		return
	}
	if binaryMode {
		// A read error ends the body, as it ends nsqd's io.ReadFull.
		truncated := err == nil && int64(len(body)) == readMax
		st.bodies, e = splitBinary(st.bodies[:0], body, s.maxMsg, s.maxBody, truncated)
	} else {
		if err != nil {
			// nsqd handles the complete lines before the error, then fails.
			body = body[:bytes.LastIndexByte(body, '\n')+1]
		}
		st.bodies, e = splitText(st.bodies[:0], body, s.maxMsg, s.maxBody)
		if e == nil && err != nil {
			e = errInternal
		}
	}
	if err != nil {
		code := fasthttp.StatusOK
		if e != nil {
			code = e.Code
		}
		s.countBodyError(err, code)
	}
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	if len(st.bodies) == 0 {
		writeOK(ctx)
		return
	}
	s.publish(ctx, st, topic, due, "")
}

// publish hands st.bodies to the backend and answers with its verdict.
func (s *Server) publish(ctx *fasthttp.RequestCtx, st *reqState, topic string, due int64, id string) {
	st.req = PubRequest{Topic: topic, Bodies: st.bodies, Due: due, ID: id}
	if err := s.b.Publish(&st.req); err != nil {
		s.writeBackendError(ctx, "publish", err)
		return
	}
	n := 0
	for _, b := range st.bodies {
		n += len(b)
	}
	s.m.messages.Add(len(st.bodies))
	s.m.messageBytes.Add(n)
	writeOK(ctx)
}

func (s *Server) writeBackendError(ctx *fasthttp.RequestCtx, op string, err error) {
	if e := errorOf(err); e != nil {
		s.writeError(ctx, e)
		return
	}
	s.logf("ingest: %s: %v", op, err)
	s.writeError(ctx, errInternal)
}

// cancel is POST /cancel?id=ID.
func (s *Server) cancel(ctx *fasthttp.RequestCtx) {
	s.m.cancel.Inc()
	st := getState()
	defer s.finish(ctx, st)
	if e := st.parseQuery(ctx); e != nil {
		s.writeError(ctx, e)
		return
	}
	if !st.args.Has("id") {
		if st.args.Has("key") {
			s.cancelKey(ctx, string(st.args.Peek("key"))) // operator.go
			return
		}
		s.writeError(ctx, errMissingID)
		return
	}
	v := st.args.Peek("id")
	if !validID(v) {
		s.writeError(ctx, errInvalidID)
		return
	}
	if err := s.b.Cancel(string(v)); err != nil {
		s.writeBackendError(ctx, "cancel", err)
		return
	}
	writeOK(ctx)
}

func (s *Server) ping(ctx *fasthttp.RequestCtx) { ctx.Response.SetBodyRaw(bodyOK) }

func (s *Server) info(ctx *fasthttp.RequestCtx) { s.writeJSON(ctx, s.b.Info()) }

func (s *Server) stats(ctx *fasthttp.RequestCtx) { s.writeJSON(ctx, s.b.Stats()) }

func (s *Server) metrics(ctx *fasthttp.RequestCtx) {
	ctx.Response.Header.SetContentTypeBytes(ctPrometheus)
	s.b.WriteMetrics(ctx)
	// A backend that writes this Server's set itself (with the others, so
	// each family comes once) says so; else the Server writes it.
	if w, ok := s.b.(interface{ WritesServerMetrics() bool }); !ok || !w.WritesServerMetrics() {
		s.m.set.WritePrometheus(ctx)
	}
}
