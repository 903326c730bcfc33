package cluster

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"
)

// ForwarderOptions configure a Forwarder.
type ForwarderOptions struct {
	// Conns is the most connections open to one peer at once; a request
	// that finds them all busy waits up to Timeout for one. > 0.
	Conns int
	// Timeout bounds one exchange with a peer (connecting, the wait for
	// a free connection, writing the request, reading the answer). > 0.
	Timeout time.Duration
}

// Response is a peer's answer as it came.
type Response struct {
	Status      int
	Body        []byte
	ContentType string
}

// ErrSelf is Do's error for a request to this instance itself.
var ErrSelf = errors.New("cluster: request to self")

// Forwarder sends requests to peers (see the package doc). Safe for
// concurrent use.
type Forwarder struct {
	m       *Map
	timeout time.Duration
	peers   []*peer

	forwarded atomic.Uint64 // exchanges that got an answer
	failed    atomic.Uint64 // exchanges that did not
}

type peer struct {
	hc *fasthttp.HostClient

	mu        sync.Mutex
	reachable bool
	seen      bool // an exchange or poll happened
	lastErr   string
	lastErrAt time.Time
	lastOKAt  time.Time
	pending   int64
	polledAt  time.Time
	hasPoll   bool
}

// NewForwarder is a Forwarder to m's peers. It opens no connection until
// the first Do.
func NewForwarder(m *Map, o ForwarderOptions) (*Forwarder, error) {
	if o.Conns <= 0 || o.Timeout <= 0 {
		return nil, fmt.Errorf("cluster: Forwarder needs Conns > 0 and Timeout > 0, got %d, %v", o.Conns, o.Timeout)
	}
	f := &Forwarder{m: m, timeout: o.Timeout}
	for _, a := range m.peers {
		f.peers = append(f.peers, &peer{hc: &fasthttp.HostClient{
			Addr:                a,
			MaxConns:            o.Conns,
			MaxConnWaitTimeout:  o.Timeout,
			ReadTimeout:         o.Timeout,
			WriteTimeout:        o.Timeout,
			MaxIdleConnDuration: 30 * time.Second,
			// A keep-alive connection the peer closed (it restarted)
			// fails before the request was read: try again. The retry
			// may take another idle connection to the old process, so
			// a closed-before-any-answer error is retried once per
			// connection the pool can hold, and any other error (but a
			// timeout) once. Every forwarded request is safe to repeat
			// in that case (ids deduplicate /pub; at= is absolute).
			RetryIfErr: func(_ *fasthttp.Request, attempts int, err error) (bool, bool) {
				if errors.Is(err, io.EOF) || errors.Is(err, fasthttp.ErrConnectionClosed) { // fasthttp says io.EOF until it gives up
					return false, attempts <= o.Conns
				}
				return false, attempts < 2 && !errors.Is(err, fasthttp.ErrTimeout)
			},
			MaxIdemponentCallAttempts: o.Conns + 1,
			NoDefaultUserAgentHeader:  true,
		}})
	}
	return f, nil
}

// Map is the Forwarder's shard map.
func (f *Forwarder) Map() *Map { return f.m }

// Do sends method pathQuery (e.g. "/pub?topic=t&id=x") with body to peer
// i, with PeerHeader set to the map's fingerprint, and returns the peer's
// answer whatever its status. An error means no answer (refused, reset,
// Timeout): the request may or may not have been acted on.
func (f *Forwarder) Do(i int, method, pathQuery string, body []byte) (Response, error) {
	if i == f.m.self {
		return Response{}, ErrSelf
	}
	p := f.peers[i]
	req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.Header.SetMethod(method)
	req.SetRequestURI("http://" + f.m.peers[i] + pathQuery)
	req.Header.Set(PeerHeader, f.m.fp)
	if body != nil {
		req.SetBodyRaw(body)
	}
	err := p.hc.DoTimeout(req, resp, f.timeout)
	now := time.Now()
	p.mu.Lock()
	p.seen = true
	if err != nil {
		p.reachable, p.lastErr, p.lastErrAt = false, err.Error(), now
	} else {
		p.reachable, p.lastOKAt = true, now
		if resp.StatusCode() == 503 && string(resp.Body()) == `{"message":"PEER_LIST_MISMATCH"}` {
			p.lastErr, p.lastErrAt = "PEER_LIST_MISMATCH", now
		}
	}
	p.mu.Unlock()
	if err != nil {
		f.failed.Add(1)
		return Response{}, err
	}
	f.forwarded.Add(1)
	return Response{
		Status:      resp.StatusCode(),
		Body:        append([]byte(nil), resp.Body()...),
		ContentType: string(resp.Header.ContentType()),
	}, nil
}

// NotePoll records what a poll of peer i found: its pending count, or err
// (which also marks it unreachable when unreachable is set).
func (f *Forwarder) NotePoll(i int, pending int64, err error, unreachable bool) {
	if i == f.m.self {
		return
	}
	p := f.peers[i]
	now := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.seen, p.polledAt = true, now
	if err != nil {
		p.lastErr, p.lastErrAt = err.Error(), now
		if unreachable {
			p.reachable = false
		}
		return
	}
	p.reachable, p.lastOKAt, p.pending, p.hasPoll = true, now, pending, true
}

// PeerState is what the Forwarder knows of one peer (JSON for /stats).
type PeerState struct {
	Address string `json:"address"`
	Self    bool   `json:"self"`
	// Reachable: the last exchange or poll got an answer (before any:
	// false, with Checked false).
	Reachable bool   `json:"reachable"`
	Checked   bool   `json:"checked"`
	LastError string `json:"last_error,omitempty"`
	// LastErrorMs and LastOKMs are unix ms; 0: never.
	LastErrorMs int64 `json:"last_error_ms,omitempty"`
	LastOKMs    int64 `json:"last_ok_ms,omitempty"`
	// Pending is the peer's pending count from its last /stats that
	// answered (PolledMs), -1 if none did yet.
	Pending  int64 `json:"pending"`
	PolledMs int64 `json:"polled_ms,omitempty"`
	Shards   []int `json:"shards"`
}

// States is every peer's state, in peer order; self's Pending is
// selfPending and it is always reachable.
func (f *Forwarder) States(selfPending int64) []PeerState {
	ms := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.UnixMilli()
	}
	out := make([]PeerState, len(f.peers))
	for i, p := range f.peers {
		st := PeerState{Address: f.m.peers[i], Shards: f.m.ShardsOf(i), Pending: -1}
		if i == f.m.self {
			st.Self, st.Reachable, st.Checked, st.Pending = true, true, true, selfPending
			out[i] = st
			continue
		}
		p.mu.Lock()
		st.Reachable, st.Checked, st.LastError = p.reachable, p.seen, p.lastErr
		st.LastErrorMs, st.LastOKMs, st.PolledMs = ms(p.lastErrAt), ms(p.lastOKAt), ms(p.polledAt)
		if p.hasPoll {
			st.Pending = p.pending
		}
		p.mu.Unlock()
		out[i] = st
	}
	return out
}

// Counts are the exchanges that got an answer and those that did not.
func (f *Forwarder) Counts() (forwarded, failed uint64) {
	return f.forwarded.Load(), f.failed.Load()
}

// Close closes the idle connections.
func (f *Forwarder) Close() {
	for _, p := range f.peers {
		p.hc.CloseIdleConnections()
	}
}
