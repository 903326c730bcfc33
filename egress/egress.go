package egress

import (
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
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
	// ConnsPerAddr is the number of go-nsq Producers (one TCP connection
	// each) per nsqd. A Producer serialises its calls on its connection, so
	// this bounds the batches in flight to one nsqd.
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
	retired sync.WaitGroup // Stop of replaced Producers
}

// New validates opts and creates the Producers. go-nsq connects lazily, on a
// Producer's first publish, so New does not fail when an nsqd is down.
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
	// go-nsq answers nsqd's heartbeats itself; they never reach a
	// transaction. The read timeout also bounds go-nsq's IDENTIFY during a
	// (re)connect, which Options.Timeout does not cover, so it is shortened
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
		n, err := p.newNodeConns(addr)
		if err != nil {
			p.view.Store(v)
			p.stopProducers()
			return nil, err
		}
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

// newNodeConns returns a node for addr with its ConnsPerAddr Producers,
// its metrics registered in p's Set.
func (p *Publisher) newNodeConns(addr string) (*node, error) {
	prods := make([]*producer, 0, p.opts.ConnsPerAddr)
	for range p.opts.ConnsPerAddr {
		prod, err := p.newProducer(addr)
		if err != nil {
			for _, pr := range prods {
				pr.Stop()
			}
			return nil, err
		}
		prods = append(prods, prod)
	}
	n := newNode(addr, p.set)
	for _, prod := range prods {
		c := &conn{node: n}
		c.prod.Store(prod)
		n.conns = append(n.conns, c)
	}
	return n, nil
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
// message count, when its MPUB was handed to go-nsq (the last try's) and
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

// publish is Publish, or TryPublish when once is set, reporting to obs if
// not nil.
func (p *Publisher) publish(topic string, bodies [][]byte, once bool, obs BatchObserver) (acked int, err error) {
	p.mu.RLock()
	if p.stopped {
		p.mu.RUnlock()
		return 0, ErrStopped
	}
	p.active.Add(1)
	p.mu.RUnlock()
	defer p.active.Done()

	if len(bodies) == 0 {
		return 0, nil
	}
	if !nsq.IsValidTopicName(topic) {
		p.permanent.Inc()
		return 0, &PublishError{Topic: topic, Err: ErrBadTopic, permanent: true}
	}
	limit := p.opts.MaxBatchMsgs
	for acked < len(bodies) {
		n, verr := p.nextBatch(bodies[acked:], limit)
		if n == 0 {
			p.permanent.Inc()
			return acked, &PublishError{Topic: topic, Index: acked, Err: verr, permanent: true}
		}
		batch := bodies[acked : acked+n]
		var tm sendTimes
		addr, tries, err := p.sendBatch(topic, batch, once, &tm)
		if err == nil {
			acked += n
			if obs != nil {
				obs.ObserveBatch(n, tm.sent, tm.ok)
			}
			continue
		}
		if errors.Is(err, ErrStopped) {
			return acked, err
		}
		switch classify(err) {
		case classSplit:
			if n > 1 {
				limit = (n + 1) / 2
				continue
			}
			fallthrough
		case classPermanent:
			p.permanent.Inc()
			return acked, &PublishError{Topic: topic, Addr: addr, Index: acked, Attempts: tries, Err: err, permanent: true}
		}
		if !once {
			p.gaveUp.Inc()
		}
		return acked, &PublishError{Topic: topic, Addr: addr, Index: acked, Attempts: tries, Err: err}
	}
	return acked, nil
}

// nextBatch returns how many leading bodies fit in one batch of at most
// limit messages. It returns 0 and the reason when the first body can never
// be sent.
func (p *Publisher) nextBatch(bodies [][]byte, limit int) (int, error) {
	size := 4 // message count
	n := 0
	for n < len(bodies) && n < limit {
		b := bodies[n]
		switch {
		case len(b) == 0:
			return n, ErrEmptyBody
		case len(b) > p.opts.MaxMsgSize:
			return n, ErrBodyTooLarge
		case size+4+len(b) > p.opts.MaxBatchBytes:
			return n, nil
		}
		size += 4 + len(b)
		n++
	}
	return n, nil
}

// sendBatch tries batch up to Attempts times, or once on an nsqd that is up
// if once is set. It returns the address of the last try, the number of
// tries and the last error (nil on success). Errors that are the batch's
// own fault end it at once. tm gets the times of the try that succeeded.
func (p *Publisher) sendBatch(topic string, batch [][]byte, once bool, tm *sendTimes) (addr string, tries int, err error) {
	if once {
		for {
			c, _ := p.leastBusyUp(p.view.Load(), nil)
			if c == nil {
				return "", 0, ErrNoNSQD
			}
			first, err := p.send(c, topic, batch, tm)
			if errors.Is(err, errNodeGone) {
				continue // removed since the pick, nothing sent: pick again
			}
			if err != nil && !errors.Is(err, ErrStopped) {
				c.node.failed(err, first && nodeFault(err), p)
			}
			return c.node.addr, 1, err
		}
	}
	c, _ := p.pick(nil)
	for tries = 1; ; tries++ {
		if c == nil { // no nsqd known (discovery listed none, or removed them)
			return addr, tries - 1, ErrNoNSQD
		}
		addr = c.node.addr
		var first bool
		first, err = p.send(c, topic, batch, tm)
		if errors.Is(err, errNodeGone) {
			tries-- // nothing was sent: not a try
			c, _ = p.pick(nil)
			continue
		}
		if err == nil || errors.Is(err, ErrStopped) {
			return addr, tries, err
		}
		// Only the first caller to see a connection fail marks its nsqd
		// down: the batches pipelined behind it on the same connection
		// fail too, and are not more evidence.
		c.node.failed(err, first && nodeFault(err), p)
		if classify(err) != classRetry || tries >= p.opts.Attempts {
			return addr, tries, err
		}
		p.retries.Inc()
		avoid := c.node
		var healthy bool
		if c, healthy = p.pick(avoid); healthy {
			continue // another connection, preferably on another nsqd, at once
		}
		if !p.sleep(jitter(backoff(p.opts.Backoff, p.opts.MaxBackoff, tries))) {
			return addr, tries, ErrStopped
		}
		c, _ = p.pick(avoid)
	}
}

// nodeFault reports whether a retryable err says something about the nsqd
// rather than the topic: E_MPUB_FAILED means the topic was being deleted or
// nsqd was exiting (the next try tells which).
func nodeFault(err error) bool {
	switch protocolCode(err) {
	case "E_MPUB_FAILED", "E_PUB_FAILED":
		return false
	}
	return classify(err) == classRetry
}

// sendTimes are the times of one successful send: its MPUB handed to
// go-nsq, and nsqd's OK received.
type sendTimes struct{ sent, ok time.Time }

// send publishes one batch on c and waits for nsqd's answer, Timeout or Stop.
// On failure first reports whether this call was the first to see c's
// Producer fail (and replaced it). On success it sets tm.
func (p *Publisher) send(c *conn, topic string, batch [][]byte, tm *sendTimes) (first bool, err error) {
	n := c.node
	n.inFlight.Add(1)
	c.inFlight.Add(1)
	defer func() {
		c.inFlight.Add(-1)
		n.inFlight.Add(-1)
	}()
	// After the Add: drain sets gone, then waits for inFlight to be 0, so
	// either it sees this send or this send sees gone.
	if n.gone.Load() {
		return false, errNodeGone
	}
	start := time.Now()
	// Buffered: if we stop waiting, go-nsq's router can still deliver the
	// answer without blocking.
	done := make(chan *nsq.ProducerTransaction, 1)
	prod := c.prod.Load()
	if prod.lost.Load() {
		// Its connection failed while idle: go-nsq would reconnect it.
		p.replace(c, prod)
		prod = c.prod.Load()
	}
	// The timer covers the connect too: go-nsq connects inside
	// MultiPublishAsync on a Producer's first use, and its IDENTIFY is
	// bounded only by the 10s read timeout (a hung nsqd held a direct
	// publish's reply 10 s, and Stop as long). On a connection's first
	// use the call runs on its own goroutine with a copy of the bodies,
	// so abandoning it keeps none of the caller's (go-nsq copies them
	// too, but only once that goroutine runs).
	t := time.NewTimer(p.opts.Timeout)
	defer t.Stop()
	if prod.used.Load() {
		err = prod.MultiPublishAsync(topic, batch, done)
	} else {
		own := copyBodies(batch)
		errc := make(chan error, 1)
		go func() { errc <- prod.MultiPublishAsync(topic, own, done) }()
		select {
		case err = <-errc:
		case <-t.C:
			return p.failed(c, prod, ErrTimeout)
		case <-p.stopCh:
			return false, ErrStopped
		}
	}
	if err != nil {
		return p.failed(c, prod, p.stoppedOr(err))
	}
	select {
	case tr := <-done:
		if tr.Error != nil {
			return p.failed(c, prod, p.stoppedOr(tr.Error))
		}
	case <-t.C:
		return p.failed(c, prod, ErrTimeout)
	case <-p.stopCh:
		return false, ErrStopped
	}
	tm.sent, tm.ok = start, time.Now()
	prod.used.Store(true)
	n.batchDur.UpdateDuration(start)
	n.batches.Inc()
	n.published.Add(len(batch))
	n.markUp(p)
	return false, nil
}

// copyBodies copies bodies into one new buffer.
func copyBodies(bodies [][]byte) [][]byte {
	n := 0
	for _, b := range bodies {
		n += len(b)
	}
	buf := make([]byte, 0, n)
	out := make([][]byte, len(bodies))
	for i, b := range bodies {
		buf = append(buf, b...)
		out[i] = buf[len(buf)-len(b) : len(buf) : len(buf)]
	}
	return out
}

// failed handles a failed send of prod on c and returns err. Every failure
// from nsqd leaves the connection closed or in doubt (nsqd closes it after
// any MPUB error), so prod is replaced by a new Producer.
//
// Why replace rather than let go-nsq reconnect: a go-nsq v1.1.0 Producer
// that reconnects races with its previous connection's router goroutine
// (producer.go: the router reads w.conn after wg.Done, connect writes it),
// which the race detector reports. A Producer that never reconnects has no
// such race: failed sends replace it here, and a connection that fails
// while idle marks it lost (nsqLogger) so that send replaces it first.
func (p *Publisher) failed(c *conn, prod *producer, err error) (bool, error) {
	if errors.Is(err, ErrStopped) {
		return false, err
	}
	return p.replace(c, prod), err
}

// replace swaps c's Producer old for a new one unless another goroutine
// already did, stops old in the background, and reports whether it swapped.
func (p *Publisher) replace(c *conn, old *producer) bool {
	fresh, err := p.newProducer(c.node.addr)
	if err != nil {
		panic("BUG: go-nsq config validated in New: " + err.Error())
	}
	if !c.prod.CompareAndSwap(old, fresh) {
		fresh.Stop()
		return false
	}
	p.retired.Go(old.Stop)
	return true
}

// replaceIdle replaces the idle Producers of n that have had a connection:
// called when n goes down, so none of them later reconnects (see failed).
// Busy ones are left to finish or fail on their own.
func (p *Publisher) replaceIdle(n *node) {
	if n.gone.Load() {
		return // drain stops them
	}
	for _, c := range n.conns {
		if prod := c.prod.Load(); prod != nil && prod.used.Load() && c.inFlight.Load() == 0 {
			p.replace(c, prod)
		}
	}
}

func (p *Publisher) newProducer(addr string) (*producer, error) {
	prod, err := nsq.NewProducer(addr, p.cfg)
	if err != nil {
		return nil, fmt.Errorf("egress: %s: %w", addr, err)
	}
	pr := &producer{Producer: prod}
	prod.SetLogger(nsqLogger{logf: p.opts.Logf, addr: addr, lost: &pr.lost}, nsq.LogLevelWarning)
	return pr, nil
}

// stoppedOr maps a go-nsq error to ErrStopped when the Publisher is stopping.
func (p *Publisher) stoppedOr(err error) error {
	select {
	case <-p.stopCh:
		return ErrStopped
	default:
		return err
	}
}

// pick returns the connection for the next try, avoiding avoid when it can:
//
//   - a connection of an nsqd whose down backoff has just expired, claimed
//     so that only one caller probes it at a time;
//   - else the least-busy connection of an up nsqd, scanning from a random
//     start so ties spread;
//   - else, with every nsqd down, a connection of the one whose backoff ends
//     first; healthy is then false and the caller should back off first;
//   - nil and false when no nsqd is known.
//
// O(len(conns)), a few atomic loads per connection.
func (p *Publisher) pick(avoid *node) (c *conn, healthy bool) {
	v := p.view.Load()
	if len(v.nodes) == 0 {
		return nil, false
	}
	now := time.Now().UnixNano()
	// Probe an nsqd whose backoff expired. Claiming pushes its downUntil
	// past the longest a try can take, so others keep skipping it; the
	// probe's markUp or markDown then sets it.
	for _, n := range v.nodes {
		if until := n.downUntil.Load(); until != 0 && until <= now && n != avoid {
			claim := now + int64(p.opts.DialTimeout+p.opts.Timeout)
			if n.downUntil.CompareAndSwap(until, claim) {
				return n.leastBusy(), true
			}
		}
	}
	best, bestAvoid := p.leastBusyUp(v, avoid)
	switch {
	case best != nil:
		return best, true
	case bestAvoid != nil:
		return bestAvoid, true
	}
	probe := v.nodes[0]
	for _, n := range v.nodes[1:] {
		if n.downUntil.Load() < probe.downUntil.Load() {
			probe = n
		}
	}
	return probe.leastBusy(), false
}

// leastBusyUp returns the least-busy connection in v of an nsqd that is
// up, other than avoid's, and the least-busy of avoid's own (if avoid is
// up), scanning from a random start so ties spread. Either is nil when
// there is none: with avoid nil, best is nil only if every nsqd is down
// or v has none.
func (p *Publisher) leastBusyUp(v *view, avoid *node) (best, bestAvoid *conn) {
	if len(v.conns) == 0 {
		return nil, nil
	}
	var bestLoad, bestAvoidLoad int32
	start := rand.IntN(len(v.conns))
	for i := range v.conns {
		cc := v.conns[(start+i)%len(v.conns)]
		if cc.node.downUntil.Load() != 0 {
			continue
		}
		load := cc.inFlight.Load()
		if cc.node == avoid {
			if bestAvoid == nil || load < bestAvoidLoad {
				bestAvoid, bestAvoidLoad = cc, load
			}
			continue
		}
		if best == nil || load < bestLoad {
			best, bestLoad = cc, load
		}
	}
	return best, bestAvoid
}

// sleep waits d or until Stop; it reports whether it waited the full d.
func (p *Publisher) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stopCh:
		return false
	}
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
// query in progress) and the drains of removed nsqds, then stops all
// Producers. Batches in flight
// are not acknowledged to the caller even if nsqd queued them. Stopping a
// Producer that is still connecting to an nsqd that accepted the connection
// but does not answer waits for go-nsq's 10 s read timeout: a caller that
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
	p.stopProducers()
}

// stopProducers stops the Producers of the nodes in the view (drain stops
// those of removed nodes) and waits for the retired ones.
func (p *Publisher) stopProducers() {
	var wg sync.WaitGroup
	for _, c := range p.view.Load().conns {
		if prod := c.prod.Load(); prod != nil {
			wg.Go(prod.Stop)
		}
	}
	wg.Wait()
	p.retired.Wait()
}

// backoff returns base*2^(n-1) capped at max, for n >= 1.
func backoff(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// jitter returns a duration uniformly in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// nsqLogger routes one Producer's go-nsq log lines (warnings and errors) to
// Options.Logf, and marks the Producer lost: go-nsq logs them when its
// connection fails, before the Producer could reconnect.
type nsqLogger struct {
	logf func(format string, args ...any)
	addr string
	lost *atomic.Bool
}

func (l nsqLogger) Output(_ int, s string) error {
	l.lost.Store(true)
	l.logf("egress: nsqd %s: %s", l.addr, s)
	return nil
}
