package deferd

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/deferd/deferd/egress"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/journal"
	"github.com/deferd/deferd/pool"
	"github.com/deferd/deferd/wheel"
)

// Scheduler is a running delayed-message scheduler: a journal on disk, a
// timing wheel of 16-byte references, a pool of publish tasks and a sink.
// Create it with New and stop it with Close. Its methods are safe for
// concurrent use.
type Scheduler struct {
	opts Options
	logf func(string, ...any)
	clk  clocks // the wall clock; Options.clock in tests

	j    *journal.Journal
	w    *wheel.Wheel[ref]
	ix   *index
	pool *pool.Pool
	sink Sink
	eg   *egress.Publisher // the default sink's, nil with Options.Sink
	node *nsqdnode.Node    // the embedded nsqd, if any
	nlog *nsqdLog          // the embedded nsqd's log writer, which counts its lost messages
	dq   directQ           // DirectPublish's batching

	topics topicsHeld // MaxTopics (topics.go)

	pending      atomic.Int64
	pendingBytes atomic.Int64
	accepted     atomic.Uint64
	published    atomic.Uint64
	direct       atomic.Uint64 // of published: by DirectPublish
	directMissed atomic.Uint64 // due on arrival, but journaled: the sink did not take them at once
	cancelled    atomic.Uint64
	retried      atomic.Uint64
	failed       atomic.Uint64
	readErrors   atomic.Uint64
	moved        atomic.Uint64
	early        atomic.Uint64

	set      *metrics.Set
	lateness *latency
	extraMu  sync.Mutex
	extra    []*metrics.Set // AddMetrics
	listenerSet
	recovery journal.Report
	startAt  time.Time
	op       operatorState // Lookup, Reschedule, ListPending, id retention, Due (operator.go)

	// Publish and Cancel calls run inside enter/leave; Close sets closed
	// under life's write lock, then waits for running (the stop idiom of
	// egress and pool).
	life      sync.RWMutex
	closed    bool
	running   sync.WaitGroup
	stop      chan struct{} // closed by Close: the background loops return
	loops     sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// New validates opts, starts the embedded nsqd if asked, opens the journal
// and replays it into the wheel, connects the sink and starts delivering.
// Messages whose due time passed while deferd was down go out at once; the
// others keep their due time. Its cost is one pass over the journal.
func New(opts Options) (*Scheduler, error) {
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts.resolveCapacity() // AutoCapacity: from this machine's memory and disk
	if opts.MaxTopics == int(AutoCapacity) {
		opts.MaxTopics = DefaultMaxTopicsExternal
		if opts.EmbeddedNSQD {
			opts.MaxTopics = DefaultMaxTopics
		}
	}
	s := &Scheduler{
		opts:    opts,
		logf:    opts.Logf,
		clk:     clocks{opts.clock},
		w:       wheel.New[ref](wheel.Options{Tick: opts.Tick, Clock: opts.clock}),
		stop:    make(chan struct{}),
		startAt: time.Now(),
	}
	s.listeners = make(map[string]any)
	s.ix = newIndex(s.w)
	s.ix.clk = s.clk
	s.ix.retention = opts.IDRetention // before replay, which keeps retained ids
	if err := s.open(); err != nil {
		s.closeParts()
		return nil, err
	}
	s.initMetrics()
	s.startOperator()
	if opts.clock == nil { // else the test polls the wheel (export_test.go)
		out := make(chan *wheel.Batch[ref], 4)
		s.goLoop(func() { s.w.Run(s.stop, out) })
		s.goLoop(func() { s.dispatch(out) })
	}
	if opts.CompactInterval > 0 {
		s.goLoop(s.compactLoop)
	}
	return s, nil
}

// open starts the parts in order; on error closeParts closes what opened.
func (s *Scheduler) open() error {
	o := &s.opts
	if err := os.MkdirAll(o.DataPath, 0o755); err != nil {
		return fmt.Errorf("Options.DataPath: %w", err)
	}
	addrs := o.NSQDTCPAddresses
	if o.EmbeddedNSQD {
		s.nlog = &nsqdLog{w: os.Stderr}
		node, err := nsqdnode.Start(nsqdnode.Config{
			TCPAddress:   o.EmbeddedNSQDTCPAddress,
			HTTPAddress:  o.EmbeddedNSQDHTTPAddress,
			DataPath:     filepath.Join(o.DataPath, "nsqd"),
			MemQueueSize: nsqdMemQueue(o.EmbeddedNSQDMemQueueSize),
			MaxMsgSize:   o.MaxMsgSize,
			MaxBodySize:  o.MaxBodySize,
			Logger:       s.nlog,
			LogLevel:     o.EmbeddedNSQDLogLevel,
		})
		if err != nil {
			return fmt.Errorf("embedded nsqd: %w", err)
		}
		s.node = node
		addrs = []string{node.TCPAddr}
	}
	j, err := journal.Open(o.journalOptions())
	if err != nil {
		return err
	}
	s.j = j
	rep, n, bytes, err := s.ix.replay(j)
	if err != nil {
		return fmt.Errorf("recover journal: %w", err)
	}
	s.recovery = rep
	s.pending.Add(n)
	s.pendingBytes.Add(bytes)
	s.logf("journal: recovered %d live of %d records in %d segments (%d bytes) in %v; torn tails %d (%d bytes truncated); corrupt %d",
		rep.Live, rep.Records, rep.Segments, rep.Bytes, rep.Duration, rep.TornTails, rep.TruncatedBytes, len(rep.Corrupt))
	for _, c := range rep.Corrupt {
		s.logf("journal: CORRUPT: %s", c)
	}
	senders := o.PoolSize
	if s.sink = o.Sink; s.sink == nil {
		if s.eg, err = egress.New(o.egressOptions(addrs)); err != nil {
			return err
		}
		s.sink = nsqdSink{s.eg}
		senders = len(addrs) * o.ConnsPerNSQD // one batch in flight per connection
		if len(o.LookupdHTTPAddresses) > 0 {
			// Discovered nsqds come and go: at least PoolSize, as for a Sink.
			senders = max(senders, o.PoolSize)
		}
	}
	if s.pool, err = pool.New(o.PoolSize, func(v any) { s.logf("BUG: publish task panicked: %v", v) }); err != nil {
		return err
	}
	send := s.sendDirect
	if s.node != nil && o.Sink == nil {
		// The embedded nsqd keeps its data on the journal's disk: while the
		// journal cannot write, nsqd could not persist a direct publish at
		// a stop either. None is sent; the journal then refuses it (503).
		send = func(topic string, bodies [][]byte) int {
			if !s.j.Writable() {
				return 0
			}
			return s.sendDirect(topic, bodies)
		}
	}
	s.dq = directQ{send: send, max: senders, maxMsgs: o.BatchSize}
	return nil
}

// closeParts closes the parts open started, in reverse order.
func (s *Scheduler) closeParts() {
	if s.eg != nil {
		s.eg.Stop()
	}
	if s.j != nil {
		s.j.Close()
	}
	if s.node != nil {
		s.node.Exit()
	}
}

func (s *Scheduler) goLoop(f func()) {
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		f()
	}()
}

// enter registers a Publish or Cancel call, which Close waits for; false
// if the Scheduler is closing. Every true is followed by one leave.
func (s *Scheduler) enter() bool {
	s.life.RLock()
	defer s.life.RUnlock()
	if s.closed {
		return false
	}
	s.running.Add(1)
	return true
}

func (s *Scheduler) leave() { s.running.Done() }

// Close stops the Scheduler: no new Publish or Cancel is taken (they return
// ErrClosed); those running get up to grace to finish; then the publish
// tasks running get up to grace; then the journal closes with everything
// pending still in it, for the next New on the same DataPath. An embedded
// nsqd is stopped last (it persists what it holds). Close is idempotent;
// it returns the journal's close error, if any, and an error if the
// embedded nsqd could not persist messages it held (a full disk: each
// "failed to write message to backend" line nsqd logs while stopping is
// one message lost, which Close counts and logs).
func (s *Scheduler) Close(grace time.Duration) error {
	s.closeOnce.Do(func() {
		s.life.Lock()
		s.closed = true
		s.life.Unlock()
		close(s.stop)
		// Calls already past enter finish first, so the journal does not
		// close under a request whose records span several group commits
		// (it would get an error with part of it kept).
		if !waitWithin(&s.running, grace) {
			s.logf("stop: publish or cancel calls still running after %v", grace)
		}
		s.stopDelivery(grace)
		s.loops.Wait()
		s.closeErr = s.j.Close()
		if s.node != nil {
			s.node.WaitProducersGone(2 * time.Second) // our egress connections
			before := s.nlog.lost.Load()
			s.node.Exit()
			if lost := s.nlog.lost.Load() - before; lost > 0 {
				err := fmt.Errorf("embedded nsqd: %d messages lost at stop: nsqd could not write them to its disk queue (disk full?)", lost)
				s.logf("ERROR: %v; direct publishes among them are gone for good, messages delivered from the journal whose published marks were not written are delivered again after a restart", err)
				s.closeErr = errors.Join(s.closeErr, err)
			}
		}
	})
	return s.closeErr
}

// stopDelivery stops the pool, then the default sink, within grace each.
func (s *Scheduler) stopDelivery(grace time.Duration) {
	// The pool first: closing it wakes a dispatch blocked submitting the
	// rest of a bucket (its messages stay live in the journal), so the
	// grace bounds the whole wait even when nsqd is down and every worker
	// is retrying.
	poolDeadline := time.Now().Add(grace)
	if err := s.pool.Release(grace); err != nil {
		s.logf("stop: publish tasks still running after %v: %v", grace, err)
	}
	if s.eg == nil {
		return
	}
	// Then egress: what still publishes fails at once and goes back into
	// the wheel, freeing its worker. A publish stuck in go-nsq's connect
	// (IDENTIFY to a hung nsqd, up to its 10s read timeout) cannot be
	// interrupted: egress's Stop is waited for only within the same grace
	// as the pool (at least 100ms). Its messages stay live in the journal.
	var stopped sync.WaitGroup
	stopped.Add(1)
	go func() { s.eg.Stop(); stopped.Done() }()
	if !waitWithin(&stopped, max(time.Until(poolDeadline), 100*time.Millisecond)) {
		s.logf("stop: egress publishes still running after %v (stuck connecting to nsqd); their messages stay in the journal", grace)
	}
}

// waitWithin waits for wg up to d and reports whether it finished. If not,
// the goroutine waiting for wg ends when wg does.
func waitWithin(wg *sync.WaitGroup, d time.Duration) bool {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// Pending is the number of messages accepted and not yet published or
// cancelled. O(1).
func (s *Scheduler) Pending() int64 { return s.pending.Load() }

// Recovery is the journal's report from this Scheduler's start.
func (s *Scheduler) Recovery() journal.Report { return s.recovery }

// NSQDTCPAddresses are the nsqd the default sink publishes to now (the
// embedded one's, with Options.EmbeddedNSQD; the static and discovered
// ones otherwise); nil with Options.Sink. O(nsqds).
func (s *Scheduler) NSQDTCPAddresses() []string {
	if s.node != nil {
		return []string{s.node.TCPAddr}
	}
	if s.eg == nil {
		return nil
	}
	// The static ones and those nsqlookupd lists right now.
	var addrs []string
	for _, n := range s.eg.Stats() {
		addrs = append(addrs, n.Addr)
	}
	return addrs
}

// EmbeddedNSQDHTTPAddress is the embedded nsqd's HTTP address, "" if none.
func (s *Scheduler) EmbeddedNSQDHTTPAddress() string {
	if s.node == nil {
		return ""
	}
	return s.node.HTTPAddr
}

// nsqdLog is the embedded nsqd's log writer: it passes every line to w and
// counts those saying nsqd failed to write a message to its disk queue.
// While nsqd stops, each such line is one message lost (at run time it is
// a refused PUB, which deferd retries). log.Logger hands it whole lines.
type nsqdLog struct {
	w    io.Writer
	lost atomic.Uint64
}

func (l *nsqdLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("failed to write message to backend")) {
		l.lost.Add(1)
	}
	return l.w.Write(p)
}
