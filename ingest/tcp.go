package ingest

import (
	"errors"
	"fmt"
	"log"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/deferd/deferd/internal/intern"
)

// TCPOptions configure a TCPServer. The zero value of every field means its
// default, which is nsqd 1.3.0's where nsqd has the setting.
type TCPOptions struct {
	Addr        string        // listen address, default DefaultTCPAddr
	MaxMsgSize  int64         // default 1 MiB (nsqd's --max-msg-size)
	MaxBodySize int64         // default 5 MiB (nsqd's --max-body-size)
	MaxDefer    time.Duration // longest DPUB (and MPUB) delay, default 365*24h (nsqd: --max-req-timeout, 1h)
	// Listener, if set, is the bound listener to serve on instead of
	// binding Addr, so a caller can bind before slow work (cmd/deferd:
	// before the journal's replay). The TCPServer owns it from then on:
	// Shutdown closes it.
	Listener net.Listener
	// HeartbeatInterval is a connection's heartbeat until its IDENTIFY
	// sets another; default 30s (nsqd: --client-timeout/2). A connection
	// is closed when no command starts within two intervals.
	HeartbeatInterval time.Duration
	// MaxHeartbeatInterval bounds IDENTIFY's heartbeat_interval, default
	// 60s (nsqd's --max-heartbeat-interval).
	MaxHeartbeatInterval time.Duration
	// MsgTimeout and MaxMsgTimeout are nsqd's --msg-timeout (60s) and
	// --max-msg-timeout (15m): a producer's IDENTIFY msg_timeout is
	// checked against them and echoed, as nsqd does; deferd uses neither.
	MsgTimeout    time.Duration
	MaxMsgTimeout time.Duration
	// MaxConns bounds the open connections, default DefaultTCPMaxConns.
	// A connection beyond it is closed as soon as it is accepted.
	MaxConns int
	Logf     func(format string, args ...any) // nil = log.Printf
}

// Defaults of TCPOptions. 4190 sits beside the HTTP API's 4180, as nsqd's
// TCP 4150 sits beside its HTTP 4151.
const (
	DefaultTCPAddr              = "127.0.0.1:4190"
	DefaultHeartbeatInterval    = 30 * time.Second
	DefaultMaxHeartbeatInterval = 60 * time.Second
	DefaultMsgTimeout           = 60 * time.Second
	DefaultMaxMsgTimeout        = 15 * time.Minute
	DefaultTCPMaxConns          = 10000
)

// TCPServer speaks nsqd's TCP protocol (V2) to producers: IDENTIFY, AUTH,
// PUB, MPUB, DPUB and NOP, with nsqd 1.3.0's validation, answers and
// closes (see the package documentation for the differences). Its methods
// are safe for concurrent use. The zero value is not usable; see
// NewTCPServer.
//
// Each connection costs one goroutine reading it and one sending its
// heartbeats, a 16 KiB read buffer and, while a command is read, up to
// MaxBodySize of body (more only as the client actually sends it).
type TCPServer struct {
	b          Backend
	logf       func(format string, args ...any)
	ln         net.Listener
	maxMsg     int64
	maxBody    int64
	maxDeferMs int64
	hb         time.Duration
	maxHB      time.Duration
	msgTimeout time.Duration
	maxMsgTO   time.Duration
	maxConns   int
	topics     intern.Table // topic names: a known one costs no allocation
	m          tcpMetrics

	mu       sync.Mutex
	state    int // stateNew, stateServing, stateShut
	conns    map[*tcpConn]struct{}
	wg       sync.WaitGroup // one per tracked connection
	shutOnce sync.Once
	shutErr  error
	served   chan struct{} // closed when Serve's accept loop has ended (or will never run)
	open     atomic.Int64
}

// NewTCPServer validates opts and binds the listener (or takes
// opts.Listener), so Addr is known before Serve. It costs one listening
// socket.
func NewTCPServer(opts TCPOptions, b Backend) (*TCPServer, error) {
	if b == nil {
		return nil, errors.New("ingest: nil Backend")
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	ln := opts.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", opts.Addr); err != nil {
			return nil, fmt.Errorf("ingest: %w", err)
		}
	}
	s := &TCPServer{
		b:          b,
		logf:       opts.Logf,
		ln:         ln,
		maxMsg:     opts.MaxMsgSize,
		maxBody:    opts.MaxBodySize,
		maxDeferMs: opts.MaxDefer.Milliseconds(),
		hb:         opts.HeartbeatInterval,
		maxHB:      opts.MaxHeartbeatInterval,
		msgTimeout: opts.MsgTimeout,
		maxMsgTO:   opts.MaxMsgTimeout,
		maxConns:   opts.MaxConns,
		conns:      map[*tcpConn]struct{}{},
		served:     make(chan struct{}),
	}
	s.m.init(&s.open)
	return s, nil
}

// fill checks o and sets the defaults of its zero fields.
func (o *TCPOptions) fill() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"MaxMsgSize", o.MaxMsgSize}, {"MaxBodySize", o.MaxBodySize}, {"MaxDefer", int64(o.MaxDefer)},
		{"HeartbeatInterval", int64(o.HeartbeatInterval)}, {"MaxHeartbeatInterval", int64(o.MaxHeartbeatInterval)},
		{"MsgTimeout", int64(o.MsgTimeout)}, {"MaxMsgTimeout", int64(o.MaxMsgTimeout)}, {"MaxConns", int64(o.MaxConns)},
	} {
		if f.v < 0 {
			return fmt.Errorf("ingest: %s must be >= 0, got %d", f.name, f.v)
		}
	}
	setDefault(&o.Addr, DefaultTCPAddr)
	setDefault(&o.MaxMsgSize, DefaultMaxMsgSize)
	setDefault(&o.MaxBodySize, DefaultMaxBodySize)
	setDefault(&o.MaxDefer, DefaultMaxDefer)
	setDefault(&o.HeartbeatInterval, DefaultHeartbeatInterval)
	setDefault(&o.MaxHeartbeatInterval, DefaultMaxHeartbeatInterval)
	setDefault(&o.MsgTimeout, DefaultMsgTimeout)
	setDefault(&o.MaxMsgTimeout, DefaultMaxMsgTimeout)
	setDefault(&o.MaxConns, DefaultTCPMaxConns)
	if o.MaxBodySize > 1<<30 || o.MaxMsgSize > 1<<30 {
		return errors.New("ingest: MaxMsgSize and MaxBodySize must be <= 1 GiB")
	}
	if o.Logf == nil {
		o.Logf = log.Printf
	}
	return nil
}

func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

// Addr returns the bound host:port.
func (s *TCPServer) Addr() string { return s.ln.Addr().String() }

// Metrics returns the server's own metrics set (requests, messages, bytes
// and errors by nsqd error code, connections), for the caller to register
// or write out; nothing is added to the default set.
func (s *TCPServer) Metrics() *metrics.Set { return s.m.set }

// Serve accepts connections until Shutdown, then returns nil; it returns
// at once if Shutdown came first, and an error if accepting fails for
// good. Connections are served on their own goroutines, which Shutdown
// waits for.
func (s *TCPServer) Serve() error {
	if serve, err := beginServe(&s.mu, &s.state); !serve {
		return err
	}
	defer close(s.served)
	var backoff time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if s.isShut() {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// e.g. EMFILE: wait as net/http does, up to 1 s.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logf("ingest: TCP accept: %v; retrying in %v", err, backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("ingest: TCP accept: %w", err)
		}
		backoff = 0
		tc := s.track(c)
		if tc == nil {
			s.m.refused.Inc()
			c.Close()
			continue
		}
		go tc.serve()
	}
}

func isTemporary(err error) bool {
	te, ok := err.(interface{ Temporary() bool })
	return ok && te.Temporary()
}

func (s *TCPServer) isShut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state == stateShut
}

// track registers a new connection, or returns nil if the server is shut
// or MaxConns connections are open.
func (s *TCPServer) track(c net.Conn) *tcpConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == stateShut || len(s.conns) >= s.maxConns {
		return nil
	}
	tc := newTCPConn(s, c)
	s.conns[tc] = struct{}{}
	s.wg.Add(1)
	s.open.Add(1)
	s.m.accepted.Inc()
	return tc
}

func (s *TCPServer) untrack(tc *tcpConn) {
	s.mu.Lock()
	delete(s.conns, tc)
	s.mu.Unlock()
	s.open.Add(-1)
	s.wg.Done()
}

// Shutdown stops accepting connections, closes every idle connection at
// once and each busy one (reading a command, or in Backend.Publish) once
// its command is answered, and returns when all are closed and Serve has
// returned. A client stalled mid-command is cut off by its read deadline
// (two heartbeat intervals, or two MaxHeartbeatIntervals with heartbeats
// off); ShutdownWithin bounds the wait. It is idempotent; later calls (of
// either) return the first call's result.
func (s *TCPServer) Shutdown() error { return s.shutdown(-1) }

// ShutdownWithin is Shutdown waiting at most d for busy connections; then
// it closes them too, waits for their goroutines (which end at once unless
// Backend.Publish is slow to return) and returns ErrShutdownTimeout.
func (s *TCPServer) ShutdownWithin(d time.Duration) error { return s.shutdown(max(d, 0)) }

// ErrShutdownTimeout is what ShutdownWithin returns when it had to close
// busy connections.
var ErrShutdownTimeout = errors.New("ingest: TCP shutdown: connections still busy, closed")

func (s *TCPServer) shutdown(d time.Duration) error {
	s.shutOnce.Do(func() {
		s.mu.Lock()
		was := s.state
		s.state = stateShut
		conns := make([]*tcpConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.shutErr = err
		}
		for _, c := range conns {
			c.wake()
		}
		done := make(chan struct{})
		go func() { s.wg.Wait(); close(done) }()
		if d >= 0 {
			t := time.NewTimer(d)
			select {
			case <-done:
			case <-t.C:
				for _, c := range conns {
					c.c.Close()
				}
				if s.shutErr == nil {
					s.shutErr = ErrShutdownTimeout
				}
			}
			t.Stop()
		}
		<-done
		if was == stateServing {
			<-s.served
		}
	})
	return s.shutErr
}
