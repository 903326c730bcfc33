package cluster

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// maxPeek bounds the head the Demux reads before routing a connection
// (ingest's own limit on a request's head).
const maxPeek = 16 << 10

// MismatchBody is the answer to a forwarded request whose fingerprint is
// not this instance's (status 503).
const MismatchBody = `{"message":"PEER_LIST_MISMATCH"}`

// Demux routes the connections of one listener (see the package doc). Its
// methods are safe for concurrent use.
type Demux struct {
	ln            net.Listener
	fp            string
	headerTimeout time.Duration
	logf          func(format string, args ...any)

	public, peer, mismatch *chanListener
	mismatchSrv            *fasthttp.Server

	done      chan struct{}
	closeOnce sync.Once
	onClose   []func()
	mu        sync.Mutex
	logged    map[string]bool // foreign fingerprints logged

	// Mismatches counts connections routed to the mismatch responder.
	Mismatches atomic.Uint64
	// PeerConns counts connections routed to Peer.
	PeerConns atomic.Uint64
}

// NewDemux starts routing ln's connections by the first request's
// PeerHeader: none to Public, fp to Peer, another value to a responder
// answering 503 PEER_LIST_MISMATCH. A connection whose head does not
// arrive within headerTimeout (or passes 16 KiB) goes to Public with what
// was read, for its server to judge. The Demux owns ln: closing Public
// closes it, then runs the OnClose functions.
func NewDemux(ln net.Listener, fp string, headerTimeout time.Duration, logf func(format string, args ...any)) *Demux {
	d := &Demux{ln: ln, fp: fp, headerTimeout: headerTimeout, logf: logf, done: make(chan struct{}), logged: map[string]bool{}}
	d.public = &chanListener{d: d, ch: make(chan net.Conn), public: true}
	d.peer = &chanListener{d: d, ch: make(chan net.Conn)}
	d.mismatch = &chanListener{d: d, ch: make(chan net.Conn)}
	d.mismatchSrv = &fasthttp.Server{
		Handler: func(ctx *fasthttp.RequestCtx) {
			ctx.SetStatusCode(503)
			ctx.Response.Header.SetContentType("application/json; charset=utf-8")
			ctx.Response.Header.Set("X-NSQ-Content-Type", "nsq; version=1.0")
			ctx.SetBodyString(MismatchBody)
		},
		NoDefaultServerHeader: true,
		ReadTimeout:           headerTimeout,
		IdleTimeout:           headerTimeout,
	}
	go d.mismatchSrv.Serve(d.mismatch)
	go d.acceptLoop()
	return d
}

// Public is the listener of clients' connections.
func (d *Demux) Public() net.Listener { return d.public }

// Peer is the listener of connections forwarded by peers with this
// instance's fingerprint.
func (d *Demux) Peer() net.Listener { return d.peer }

// OnClose adds f to what closing Public runs (in order, after ln closed).
func (d *Demux) OnClose(f func()) {
	d.mu.Lock()
	d.onClose = append(d.onClose, f)
	d.mu.Unlock()
}

func (d *Demux) close() {
	d.closeOnce.Do(func() {
		close(d.done)
		d.ln.Close()
		d.mismatchSrv.Shutdown()
		d.mu.Lock()
		fs := d.onClose
		d.mu.Unlock()
		for _, f := range fs {
			f()
		}
	})
}

func (d *Demux) acceptLoop() {
	for {
		c, err := d.ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			select {
			case <-d.done:
			default:
				d.logf("cluster: accept: %v", err)
				d.close()
			}
			return
		}
		go d.route(c)
	}
}

// route reads c's first head and hands c to its listener.
func (d *Demux) route(c net.Conn) {
	c.SetReadDeadline(time.Now().Add(d.headerTimeout))
	buf := make([]byte, 0, 2048)
	for !bytes.Contains(buf, []byte("\r\n\r\n")) && len(buf) < maxPeek {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			break
		}
	}
	c.SetReadDeadline(time.Time{})
	to := d.public
	if v, ok := headerValue(buf, PeerHeader); ok {
		if v == d.fp {
			to = d.peer
			d.PeerConns.Add(1)
		} else {
			to = d.mismatch
			d.Mismatches.Add(1)
			d.mu.Lock()
			first := !d.logged[v]
			d.logged[v] = true
			d.mu.Unlock()
			if first {
				d.logf("cluster: a peer at %s sent peer-list fingerprint %s, ours is %s: its --cluster-peers differs; its forwarded requests get 503 PEER_LIST_MISMATCH (logged once per fingerprint)", c.RemoteAddr(), v, d.fp)
			}
		}
	}
	pc := &prefixConn{Conn: c, buf: buf}
	select {
	case to.ch <- pc:
	case <-d.done:
		c.Close()
	}
}

// headerValue finds header name (case-insensitively) in the head in buf.
func headerValue(buf []byte, name string) (string, bool) {
	end := bytes.Index(buf, []byte("\r\n\r\n"))
	if end < 0 {
		return "", false
	}
	lines := bytes.Split(buf[:end], []byte("\r\n"))
	for _, l := range lines[1:] {
		k, v, ok := bytes.Cut(l, []byte(":"))
		if ok && bytes.EqualFold(bytes.TrimSpace(k), []byte(name)) {
			return string(bytes.TrimSpace(v)), true
		}
	}
	return "", false
}

// chanListener is one route's listener.
type chanListener struct {
	d      *Demux
	ch     chan net.Conn
	public bool
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.d.done:
		return nil, net.ErrClosed
	}
}

// Close of Public closes the Demux; of the others, nothing (they end with
// it).
func (l *chanListener) Close() error {
	if l.public {
		l.d.close()
	}
	return nil
}

func (l *chanListener) Addr() net.Addr { return l.d.ln.Addr() }

// prefixConn is a connection whose first bytes were read by the Demux.
type prefixConn struct {
	net.Conn
	buf []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.buf) > 0 {
		n := copy(p, c.buf)
		c.buf = c.buf[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite half-closes the connection when it is a TCP one (ingest's
// linger uses it).
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
