package egress

import (
	"errors"
	"fmt"
	"log"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"github.com/nsqio/go-nsq"
)

// Defaults for the zero fields of Options.
const (
	DefaultConnsPerAddr  = 4
	DefaultMaxBatchMsgs  = 200
	DefaultMaxBatchBytes = 5 << 20 // nsqd's --max-body-size default
	DefaultMaxMsgSize    = 1 << 20 // nsqd's --max-msg-size default
	DefaultAttempts      = 3
	DefaultBackoff       = 50 * time.Millisecond
	DefaultMaxBackoff    = 2 * time.Second
	DefaultTimeout       = 5 * time.Second
	DefaultDialTimeout   = time.Second
	// DefaultLookupdPollInterval is go-nsq's: how often /nodes is asked.
	DefaultLookupdPollInterval = 15 * time.Second
)

// Options configure a Publisher. Zero fields take the Default* values.
type Options struct {
	// Addrs are the static nsqd TCP addresses (host:port), no duplicates.
	// At least one of Addrs and LookupdHTTPAddrs must be given. A static
	// nsqd is never removed (discovery does not drain it).
	Addrs []string
	// LookupdHTTPAddrs are nsqlookupd HTTP addresses (host:port, or an
	// http:// or https:// base URL), no duplicates. The Publisher asks
	// each for GET /nodes (nsqlookupd >= 1.0's format) once in New and
	// then every LookupdPollInterval, and publishes to every nsqd listed
	// there, at its broadcast_address:tcp_port, as well as to Addrs (an
	// address in both is one nsqd, matched as a string). See the package
	// documentation for how nodes join and are drained.
	LookupdHTTPAddrs []string
	// LookupdPollInterval is the time between polls of LookupdHTTPAddrs.
	LookupdPollInterval time.Duration
	// ConnsPerAddr is the number of TCP connections per nsqd. Batches
	// are written to a connection one at a time (and pipelined: the next
	// may go before nsqd answered the last); Publish picks the connection
	// with the fewest batches waiting for an answer.
	ConnsPerAddr int
	// MaxBatchMsgs is the most messages per MPUB.
	MaxBatchMsgs int
	// MaxBatchBytes is the largest MPUB body as nsqd measures it: a 4-byte
	// message count plus, per message, a 4-byte size and the body. Set it to
	// nsqd's --max-body-size.
	MaxBatchBytes int
	// MaxMsgSize is nsqd's --max-msg-size: a longer body is a permanent error
	// and is not sent. MaxMsgSize+8 must not exceed MaxBatchBytes.
	MaxMsgSize int
	// Attempts is the tries per batch, across connections and nsqds, before
	// Publish gives up and returns the error.
	Attempts int
	// Backoff is the base wait between tries of a batch when no healthy nsqd
	// is left, and the base time an nsqd stays marked down after a failure.
	// Both grow exponentially with consecutive failures, up to MaxBackoff,
	// with jitter.
	Backoff    time.Duration
	MaxBackoff time.Duration
	// Timeout bounds the wait for nsqd's answer to one batch. An unanswered
	// batch counts as a failed try (it may still have been queued: delivery
	// is at-least-once). It also bounds one query of an nsqlookupd.
	Timeout time.Duration
	// DialTimeout is go-nsq's dial timeout.
	DialTimeout time.Duration
	// Logf receives go-nsq warnings and errors and nsqd up/down transitions;
	// nil means log.Printf.
	Logf func(format string, args ...any)
}

func (o *Options) setDefaults() {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&o.ConnsPerAddr, DefaultConnsPerAddr)
	def(&o.MaxBatchMsgs, DefaultMaxBatchMsgs)
	def(&o.MaxBatchBytes, DefaultMaxBatchBytes)
	def(&o.MaxMsgSize, DefaultMaxMsgSize)
	def(&o.Attempts, DefaultAttempts)
	defDur(&o.Backoff, DefaultBackoff)
	defDur(&o.MaxBackoff, DefaultMaxBackoff)
	defDur(&o.Timeout, DefaultTimeout)
	defDur(&o.DialTimeout, DefaultDialTimeout)
	defDur(&o.LookupdPollInterval, DefaultLookupdPollInterval)
	if o.Logf == nil {
		o.Logf = log.Printf
	}
}

func (o *Options) validate() error {
	if len(o.Addrs) == 0 && len(o.LookupdHTTPAddrs) == 0 {
		return errors.New("egress: Addrs must name at least one nsqd, or LookupdHTTPAddrs one nsqlookupd")
	}
	seen := make(map[string]bool, len(o.Addrs))
	for _, a := range o.Addrs {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("egress: Addrs: %q is not host:port: %w", a, err)
		}
		if seen[a] {
			return fmt.Errorf("egress: Addrs: %q listed twice", a)
		}
		seen[a] = true
	}
	switch {
	case o.ConnsPerAddr < 0:
		return fmt.Errorf("egress: ConnsPerAddr must be > 0, got %d", o.ConnsPerAddr)
	case o.MaxBatchMsgs < 0:
		return fmt.Errorf("egress: MaxBatchMsgs must be > 0, got %d", o.MaxBatchMsgs)
	case o.MaxMsgSize < 0:
		return fmt.Errorf("egress: MaxMsgSize must be > 0, got %d", o.MaxMsgSize)
	case o.MaxBatchBytes < o.MaxMsgSize+8:
		return fmt.Errorf("egress: MaxBatchBytes (%d) must be at least MaxMsgSize+8 (%d)", o.MaxBatchBytes, o.MaxMsgSize+8)
	case o.Attempts < 0:
		return fmt.Errorf("egress: Attempts must be > 0, got %d", o.Attempts)
	case o.Backoff < 0 || o.MaxBackoff < o.Backoff:
		return fmt.Errorf("egress: need 0 < Backoff (%v) <= MaxBackoff (%v)", o.Backoff, o.MaxBackoff)
	case o.Timeout < 0 || o.DialTimeout < 0:
		return fmt.Errorf("egress: Timeout and DialTimeout must be > 0")
	case o.LookupdPollInterval < 0:
		return fmt.Errorf("egress: LookupdPollInterval must be > 0, got %v", o.LookupdPollInterval)
	}
	seenL := make(map[string]bool, len(o.LookupdHTTPAddrs))
	for _, a := range o.LookupdHTTPAddrs {
		if _, err := lookupdNodesURL(a); err != nil {
			return fmt.Errorf("egress: LookupdHTTPAddrs: %w", err)
		}
		if seenL[a] {
			return fmt.Errorf("egress: LookupdHTTPAddrs: %q listed twice", a)
		}
		seenL[a] = true
	}
	return nil
}

// Publisher publishes batches of bodies to a set of nsqds. Its methods are
// safe for concurrent use. Create it with New; stop it with Stop.
type Publisher struct {
	opts Options
	cfg  *nsq.Config
	// view is the nsqds Publish picks from: replaced whole (copy on write)
	// under viewMu when discovery adds or removes one, read without a lock.
	view     atomic.Pointer[view]
	viewMu   sync.Mutex       // serialises changes of view and draining
	draining map[string]*node // removed by discovery, connections not yet stopped
	lookupd  *lookupd         // nil without Options.LookupdHTTPAddrs
	loops    sync.WaitGroup   // the poll loop and drains, which Stop waits for

	set       *metrics.Set
	retries   *metrics.Counter
	permanent *metrics.Counter
	gaveUp    *metrics.Counter

	mu      sync.RWMutex // guards stopped against active.Add
	stopped bool
	stopCh  chan struct{}
	active  sync.WaitGroup // Publish calls in progress
	retired sync.WaitGroup // stop of replaced links
}

// New validates opts and creates the connection slots. Each connection is
// dialled on its first publish, so New does not fail when an nsqd is down.
// With LookupdHTTPAddrs, New also polls every nsqlookupd once (waiting up
// to Timeout for their answers; one that is down is only logged) and
// starts the poll loop, which Stop ends.
func New(opts Options) (*Publisher, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	cfg := nsq.NewConfig()
	cfg.DialTimeout = opts.DialTimeout
	cfg.WriteTimeout = max(time.Second, opts.Timeout)
	// go-nsq's Conn answers nsqd's heartbeats itself; they never reach a
	// link's waiters. The read timeout also bounds go-nsq's IDENTIFY during a
	// dial, which a Publish stops waiting for after Options.Timeout but
	// Stop waits for, so it is shortened
	// from 60s to 10s, with heartbeats at half of it to keep idle
	// connections alive.
	cfg.HeartbeatInterval = 5 * time.Second
	cfg.ReadTimeout = 10 * time.Second
	cfg.UserAgent = "deferd-egress go-nsq/" + nsq.VERSION
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("egress: go-nsq config: %w", err)
	}
	p := &Publisher{
		opts:     opts,
		cfg:      cfg,
		set:      metrics.NewSet(),
		stopCh:   make(chan struct{}),
		draining: make(map[string]*node),
	}
	p.retries = p.set.NewCounter("deferd_egress_retries_total")
	p.permanent = p.set.NewCounter("deferd_egress_permanent_errors_total")
	p.gaveUp = p.set.NewCounter("deferd_egress_gave_up_total")
	v := &view{}
	for _, addr := range opts.Addrs {
		n := p.newNodeConns(addr)
		n.static = true
		v.add(n)
	}
	p.view.Store(v)
	if len(opts.LookupdHTTPAddrs) > 0 {
		p.lookupd = newLookupd(opts)
		p.poll() // the first poll is New's: nodes known before the first Publish
		p.loops.Add(1)
		go p.pollLoop()
	}
	return p, nil
}

// newNodeConns returns a node for addr with its ConnsPerAddr connection
// slots (links not dialled yet), its metrics registered in p's Set.
func (p *Publisher) newNodeConns(addr string) *node {
	n := newNode(addr, p.set)
	for range p.opts.ConnsPerAddr {
		c := &conn{node: n}
		c.link.Store(p.newLink(addr))
		n.conns = append(n.conns, c)
	}
	return n
}

// Metrics returns the Publisher's metrics (deferd_egress_*). Register it
// with metrics.RegisterSet to export it; each Publisher has its own Set, so
// several Publishers in one process (tests) never collide.
func (p *Publisher) Metrics() *metrics.Set { return p.set }

// Publish sends bodies to topic as MPUB batches of at most MaxBatchMsgs
// messages and MaxBatchBytes bytes, one batch at a time and in order. It
// returns how many leading bodies nsqd acknowledged and, if not all, the
// error that stopped it (a *PublishError; see IsPermanent). A body counts as
// acknowledged only once nsqd answered OK for its batch.
//
// A failed batch is retried on the least-busy connection of another healthy
// nsqd at once, or after a backoff when none is left, up to Attempts tries.
// A batch nsqd refuses for its content (E_BAD_MESSAGE, E_BAD_BODY) is halved
// until the offending body is alone, which is then a permanent error.
// With no nsqd known (only LookupdHTTPAddrs, which listed none yet) it
// returns at once with ErrNoNSQD, as TryPublish does with every nsqd down:
// the caller retries later. A batch is never sent to an nsqd after
// discovery removed it; one already in flight there finishes there.
// Publish returns ErrStopped promptly once Stop is called. It does not keep
// bodies after it returns.
func (p *Publisher) Publish(topic string, bodies [][]byte) (acked int, err error) {
	return p.publish(topic, bodies, false, nil)
}

// BatchObserver is told of each batch a PublishObserved call got nsqd's
// OK for, in order, on the calling goroutine, before the call returns: its
// message count, when its MPUB was about to be written (the last try's) and
// when the OK arrived. It must not keep the call waiting.
type BatchObserver interface {
	ObserveBatch(n int, sent, ok time.Time)
}

// PublishObserved is Publish that also reports each batch nsqd took to
// obs (nil: none), which costs one time.Now per batch. deferd's scheduler
// uses it to break its lateness down.
func (p *Publisher) PublishObserved(topic string, bodies [][]byte, obs BatchObserver) (acked int, err error) {
	return p.publish(topic, bodies, false, obs)
}

// TryPublish is Publish for a caller that has somewhere else to keep what
// cannot be sent at once (deferd's journal): each batch gets one try, only
// on a connection of an nsqd that is up, with no backoff and no probing of
// an nsqd marked down. With every nsqd down (or none known yet) it returns
// 0 and ErrNoNSQD without sending anything. Otherwise it waits as Publish does for nsqd's
// answers (at most Options.Timeout per batch). Safe for concurrent use.
func (p *Publisher) TryPublish(topic string, bodies [][]byte) (acked int, err error) {
	return p.publish(topic, bodies, true, nil)
}

// Stats returns a snapshot of each nsqd's state: the static ones in Addrs
// order, then the discovered ones in the order they appeared (by address
// among those of one poll), then those being drained (Draining set).
func (p *Publisher) Stats() []NodeStats {
	p.viewMu.Lock() // view and draining from one moment
	nodes := slices.Clone(p.view.Load().nodes)
	gone := make([]*node, 0, len(p.draining))
	for _, n := range p.draining {
		gone = append(gone, n)
	}
	p.viewMu.Unlock()
	slices.SortFunc(gone, func(a, b *node) int { return strings.Compare(a.addr, b.addr) })
	out := make([]NodeStats, 0, len(nodes)+len(gone))
	for _, n := range append(nodes, gone...) {
		out = append(out, n.stats())
	}
	return out
}

// Stop makes Publish return ErrStopped, waits for running Publish calls to
// return (they do so promptly), ends the nsqlookupd poll loop (cancelling a
// query in progress) and the drains of removed nsqds, then closes all
// connections (about 100 ms: go-nsq's close polls). Batches in flight
// are not acknowledged to the caller even if nsqd queued them. Closing a
// connection still being dialled to an nsqd that accepted it but does
// not answer IDENTIFY waits for go-nsq's 10 s read timeout: a caller that
// needs a bound (deferd's engine) waits for Stop with its own deadline.
// Idempotent; safe to call concurrently with Publish.
func (p *Publisher) Stop() {
	p.mu.Lock()
	if p.stopped {
		p.mu.Unlock()
		return
	}
	p.stopped = true
	close(p.stopCh)
	p.mu.Unlock()
	if p.lookupd != nil {
		p.lookupd.cancel()
	}
	p.active.Wait()
	p.loops.Wait() // no view change after this
	if p.lookupd != nil {
		p.lookupd.closeIdle()
	}
	p.stopLinks()
}

// stopLinks stops the links of the nodes in the view (drain stops those
// of removed nodes) and waits for the retired ones.
func (p *Publisher) stopLinks() {
	var wg sync.WaitGroup
	for _, c := range p.view.Load().conns {
		if l := c.link.Load(); l != nil {
			wg.Go(l.stop)
		}
	}
	wg.Wait()
	p.retired.Wait()
}
