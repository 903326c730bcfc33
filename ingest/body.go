package ingest

import (
	"bytes"
	"io"
	"net"
	"sync"
	"time"

	"github.com/valyala/fasthttp"
)

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
	s.lingerIfUnread(ctx, st.read, st.ended)
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
func (s *Server) lingerIfUnread(ctx *fasthttp.RequestCtx, read int64, ended bool) {
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
	s.lingerClose(ctx)
}

// lingerClose sends the response itself on the hijacked connection with
// Connection: close, half-closes it, and reads and drops what the client
// still sends until it closes, lingerTimeout passes or lingerMaxBytes
// arrive; then fasthttp closes it.
func (s *Server) lingerClose(ctx *fasthttp.RequestCtx) {
	s.lingerCloseFor(ctx, lingerTimeout, lingerMaxBytes)
}

// lingerCloseFor is lingerClose with its own bounds on the wait and the
// bytes read; with maxBytes 0 it reads nothing and closes timeout after the
// answer, or when the client closes first (waitLinger). The lingering
// connection is in s.conns: it counts against MaxConns and Shutdown closes
// it; with more than MaxConns open, or after Shutdown, the answer is sent
// (waiting at most cutWriteWait) and the connection closed at once.
func (s *Server) lingerCloseFor(ctx *fasthttp.RequestCtx, timeout time.Duration, maxBytes int64) {
	ctx.Response.SetConnectionClose()
	resp := ctx.Response.String()
	tc, _ := ctx.Conn().(*trackedConn)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(c net.Conn) {
		gone, keep := s.conns.begin(tc)
		if !keep {
			c.SetWriteDeadline(time.Now().Add(cutWriteWait))
			io.WriteString(c, resp)
			return // fasthttp closes c
		}
		defer s.conns.end(tc)
		deadline := time.Now().Add(timeout)
		c.SetWriteDeadline(deadline)
		if _, err := io.WriteString(c, resp); err != nil {
			return
		}
		tc.CloseWrite()
		c.SetReadDeadline(deadline)
		if maxBytes == 0 {
			waitLinger(tc.Conn, gone, deadline)
			return
		}
		io.CopyN(io.Discard, c, maxBytes)
	})
}

// cutWriteWait bounds the write of the answer on a refused connection
// closed at once instead of lingering.
const cutWriteWait = 100 * time.Millisecond
