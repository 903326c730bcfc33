package ingest

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/deferd/deferd/internal/nsqname"
)

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
	if !nsqname.ValidTopic(name) {
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
