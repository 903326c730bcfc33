package ingest

import (
	"strconv"

	"github.com/valyala/fasthttp"

	"github.com/deferd/deferd/internal/nsqname"
)

// OperatorBackend is what a Backend also implements to serve the operator
// endpoints (GET /message, GET /pending, POST /reschedule, /cancel by
// key=); with a Backend that does not, they answer 404 NOT_FOUND. A
// message is named by id (its client id) or, when id is "", by key
// (deferd's key, "SEG-ORD"); the backend parses the key and answers
// ErrInvalidKey for a bad one. Results are JSON-encoded as they are.
// Methods are called from many goroutines at once.
type OperatorBackend interface {
	Lookup(id, key string, body bool) (any, error)
	Pending(topic string, limit int, cursor string) (any, error)
	// Reschedule moves a pending message to dueMs (unix ms; already due:
	// now).
	Reschedule(id, key string, dueMs int64) error
	CancelKey(key string) error
}

// Answers of the operator endpoints, beyond the publish path's.
var (
	ErrInvalidKey    = &Error{400, "INVALID_KEY"}
	ErrInvalidCursor = &Error{400, "INVALID_CURSOR"}
	ErrInvalidLimit  = &Error{400, "INVALID_LIMIT"}
	errMissingRef    = &Error{400, "MISSING_ARG_ID"} // neither id= nor key=
)

// operator returns the backend's operator side, nil if it has none.
func (s *Server) operator() OperatorBackend {
	ob, _ := s.b.(OperatorBackend)
	return ob
}

// operatorStart is the start of GET /message, GET /pending and POST
// /reschedule: 404 NOT_FOUND without an operator backend, else the query
// parsed into a request state (its errors answered). A nil st: the answer
// is written and the handler returns; otherwise the handler defers
// s.finish(ctx, st).
func (s *Server) operatorStart(ctx *fasthttp.RequestCtx) (ob OperatorBackend, st *reqState) {
	ob = s.operator()
	if ob == nil {
		s.writeError(ctx, errNotFound)
		return nil, nil
	}
	st = getState()
	if e := st.parseQuery(ctx); e != nil {
		s.writeError(ctx, e)
		s.finish(ctx, st)
		return nil, nil
	}
	return ob, st
}

// ref reads id= or key= (one of them) from st.args.
func (st *reqState) ref() (id, key string, e *Error) {
	hasID, hasKey := st.args.Has("id"), st.args.Has("key")
	switch {
	case hasID && hasKey, !hasID && !hasKey:
		return "", "", errMissingRef
	case hasID:
		v := st.args.Peek("id")
		if !validID(v) {
			return "", "", errInvalidID
		}
		return string(v), "", nil
	}
	v := st.args.Peek("key")
	if len(v) == 0 || len(v) > 21 {
		return "", "", ErrInvalidKey
	}
	return "", string(v), nil
}

// message is GET /message?id=ID|key=K[&body=true].
func (s *Server) message(ctx *fasthttp.RequestCtx) {
	ob, st := s.operatorStart(ctx)
	if st == nil {
		return
	}
	defer s.finish(ctx, st)
	id, key, e := st.ref()
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	body := false
	if st.args.Has("body") {
		b, err := strconv.ParseBool(string(st.args.Peek("body")))
		if err != nil {
			s.writeError(ctx, errInvalidRequest)
			return
		}
		body = b
	}
	v, err := ob.Lookup(id, key, body)
	if err != nil {
		s.writeBackendError(ctx, "message", err)
		return
	}
	s.writeJSON(ctx, v)
}

// pending is GET /pending?[topic=T][&limit=N][&after=CURSOR].
func (s *Server) pending(ctx *fasthttp.RequestCtx) {
	ob, st := s.operatorStart(ctx)
	if st == nil {
		return
	}
	defer s.finish(ctx, st)
	topic := ""
	if st.args.Has("topic") {
		t := st.args.Peek("topic")
		if !nsqname.ValidTopic(t) {
			s.writeError(ctx, errInvalidTopic)
			return
		}
		topic = string(t)
	}
	limit := 0
	if st.args.Has("limit") {
		n, ok := parseInt(st.args.Peek("limit"))
		if !ok || n < 1 || n > 1000 {
			s.writeError(ctx, ErrInvalidLimit)
			return
		}
		limit = int(n)
	}
	v, err := ob.Pending(topic, limit, string(st.args.Peek("after")))
	if err != nil {
		s.writeBackendError(ctx, "pending", err)
		return
	}
	s.writeJSON(ctx, v)
}

// reschedule is POST /reschedule?id=ID|key=K&defer=MS|at=UNIX_MS.
func (s *Server) reschedule(ctx *fasthttp.RequestCtx) {
	ob, st := s.operatorStart(ctx)
	if st == nil {
		return
	}
	defer s.finish(ctx, st)
	id, key, e := st.ref()
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	if !st.args.Has("defer") && !st.args.Has("at") {
		s.writeError(ctx, errInvalidDefer)
		return
	}
	due, e := s.due(&st.args)
	if e != nil {
		s.writeError(ctx, e)
		return
	}
	if err := ob.Reschedule(id, key, due); err != nil {
		s.writeBackendError(ctx, "reschedule", err)
		return
	}
	writeOK(ctx)
}

// cancelKey is /cancel?key=K.
func (s *Server) cancelKey(ctx *fasthttp.RequestCtx, key string) {
	ob := s.operator()
	if ob == nil {
		s.writeError(ctx, errMissingID)
		return
	}
	if len(key) == 0 || len(key) > 21 {
		s.writeError(ctx, ErrInvalidKey)
		return
	}
	if err := ob.CancelKey(key); err != nil {
		s.writeBackendError(ctx, "cancel", err)
		return
	}
	writeOK(ctx)
}
