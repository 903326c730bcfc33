// Package engine is deferd's scheduler core: it ties the journal (durability),
// the timing wheel (when), the ants pool (who publishes) and egress (to
// nsqd) into the life of a message:
//
//	ingest → journal.Append (group commit; the 200 goes out after it)
//	       → wheel.Add (a 16-byte pointer-free journal.Pos)
//	       → tick → pool task per due bucket → journal.Read → egress MPUB
//	       → journal.Done(Published)
//
// A message leaves the journal's live set only after nsqd answered OK, so
// deferd is at-least-once: a crash between nsqd's OK and the Done record
// reaching the OS publishes that message again after restart.
//
// A message already due when it arrives (and without a client id) takes a
// shorter path by default (Options.DirectPublish): ingest → egress MPUB of
// the request's bodies, and the 200 goes out after nsqd's OK. Only what
// nsqd did not take at once is journaled and scheduled.
package engine

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/deferd/deferd/egress"
	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/journal"
	"github.com/deferd/deferd/pool"
	"github.com/deferd/deferd/wheel"
)

// Options configures an Engine. NewOptions sets every default; the zero
// value is not usable (Journal.Dir and Egress.Addrs are required).
type Options struct {
	Journal journal.Options
	Egress  egress.Options

	// Tick is the timing wheel's resolution: a message is published at
	// most about one tick after its due time. Default 1ms.
	Tick time.Duration
	// PoolSize is the number of ants workers publishing due buckets.
	PoolSize int
	// TaskSize splits a large due bucket into tasks of at most this many
	// messages, so a burst is published on several connections at once.
	TaskSize int
	// MaxPending and MaxPendingBytes bound what deferd holds; past them
	// Publish answers 503 OVER_CAPACITY. Bytes count journal record bytes.
	MaxPending      int64
	MaxPendingBytes int64
	// RetryBackoff is how long a message waits in the wheel after a failed
	// publish before it is tried again; ParkBackoff is the wait after nsqd
	// rejected the message itself (a permanent error).
	RetryBackoff time.Duration
	ParkBackoff  time.Duration
	// CompactEvery is how often the journal is checked for a segment worth
	// compacting. 0 disables compaction.
	CompactEvery time.Duration
	// DirectPublish sends messages that are already due (no delay, or a
	// due time in the past) and carry no client id straight to nsqd before
	// Publish returns, instead of through the journal and the wheel: the
	// 200 then means nsqd acknowledged them, as a /pub to nsqd itself
	// would. Concurrent requests for a topic share MPUBs (see directQ).
	// What nsqd does not acknowledge at once (every nsqd down, an error,
	// no answer within Egress.Timeout) is journaled and scheduled as
	// usual. Default true.
	DirectPublish bool

	Logf func(format string, args ...any)

	// journalOff skips the journal append in Publish, for the benchmark
	// that measures what the journal costs. Messages accepted this way have
	// no body to publish; tests only.
	journalOff bool
	// beforePublish, if set, is called by a publish task before it
	// publishes a topic's messages; beforeAppend by Publish before it
	// journals a request. Tests only (to make them panic).
	beforePublish func(topic string)
	beforeAppend  func(*ingest.PubRequest)
}

// NewOptions returns Options with every default set, for journal directory
// dir and the nsqd TCP addresses addrs.
func NewOptions(dir string, addrs []string) Options {
	return Options{
		Journal: journal.Options{
			Dir:           dir,
			SegmentBytes:  64 << 20,
			Fsync:         journal.FsyncInterval,
			FsyncInterval: 100 * time.Millisecond,
		},
		Egress: egress.Options{
			Addrs:         addrs,
			ConnsPerAddr:  egress.DefaultConnsPerAddr,
			MaxBatchMsgs:  egress.DefaultMaxBatchMsgs,
			MaxBatchBytes: egress.DefaultMaxBatchBytes,
			MaxMsgSize:    egress.DefaultMaxMsgSize,
			Attempts:      egress.DefaultAttempts,
			Backoff:       egress.DefaultBackoff,
		},
		Tick:            time.Millisecond,
		PoolSize:        16,
		TaskSize:        1000,
		MaxPending:      20_000_000,
		MaxPendingBytes: 32 << 30,
		RetryBackoff:    time.Second,
		ParkBackoff:     time.Minute,
		CompactEvery:    10 * time.Second,
		DirectPublish:   true,
	}
}

// ref is what the wheel holds per pending message: where its record lives.
type ref = journal.Pos

// Engine is a running scheduler. Its methods are safe for concurrent use.
// It implements ingest.Backend.
type Engine struct {
	opts Options
	logf func(string, ...any)

	j    *journal.Journal
	w    *wheel.Wheel[ref]
	pool *pool.Pool
	pub  *egress.Publisher
	dq   directQ // DirectPublish's batching

	// mu guards ids, reserving, segs and topics. It is never held across I/O.
	mu sync.Mutex
	// ids maps a client id to its pending message. An idRef that is not
	// ready means "being written" or "being moved": the id is taken but
	// its position is not known yet. The message's wheel handle is in segs,
	// under its position.
	ids map[string]idRef
	// reserving holds, for each id whose message is being written, a
	// channel closed when that write ends (see Publish).
	reserving map[string]chan struct{}
	// segs maps a journal segment to the wheel handles of its messages by
	// ordinal, so compaction can find and move pending ones.
	segs map[uint32]*segTable
	// topics counts pending messages per topic.
	topics map[string]int64
	// backoffDue holds, for messages put back into the wheel after a
	// failed publish or read (reschedule), the wheel time they wait for,
	// so that compaction moves them without cutting their backoff short.
	backoffDue map[journal.Key]int64

	pending      atomic.Int64
	pendingBytes atomic.Int64
	accepted     atomic.Uint64
	published    atomic.Uint64
	direct       atomic.Uint64 // of published: by DirectPublish
	directMissed atomic.Uint64 // due on arrival, but journaled: nsqd did not take them at once
	cancelled    atomic.Uint64
	retried      atomic.Uint64
	failed       atomic.Uint64
	readErrors   atomic.Uint64
	moved        atomic.Uint64
	early        atomic.Uint64

	set      *metrics.Set
	lateness *metrics.Histogram

	recovery journal.Report

	exiting atomic.Bool
	// publishing counts Publish calls running.
	publishing atomic.Int64
	stop       chan struct{}
	wg         sync.WaitGroup
	stopOnce   sync.Once
	startAt    time.Time
}

// idRef is where the pending message of a client id is: its journal
// position (its handle in segs, to cancel it, and its key, to mark it
// cancelled) and its topic (for the topic counters).
type idRef struct {
	p     journal.Pos
	topic string
	ready bool // false while the message is being written or moved
}

// segTable holds the wheel handles of one segment's messages by ordinal (0
// for messages not in the wheel) and how many are set.
type segTable struct {
	h       []wheel.Handle
	pending int
}

// New opens the journal, recovers what it holds into the wheel, connects
// egress and starts publishing. Messages whose due time passed while deferd
// was down go out at once; the others keep their due time.
func New(opts Options) (*Engine, error) {
	if opts.Logf == nil {
		opts.Logf = log.Printf
	}
	if opts.Tick <= 0 {
		opts.Tick = time.Millisecond
	}
	if opts.PoolSize <= 0 {
		return nil, errors.New("--pool-size must be > 0")
	}
	if opts.TaskSize <= 0 {
		return nil, errors.New("--task-size must be > 0")
	}
	if opts.RetryBackoff <= 0 {
		opts.RetryBackoff = time.Second
	}
	if opts.ParkBackoff <= 0 {
		opts.ParkBackoff = time.Minute
	}
	if opts.Journal.Logf == nil {
		opts.Journal.Logf = opts.Logf
	}
	if opts.Egress.Logf == nil {
		opts.Egress.Logf = opts.Logf
	}
	e := &Engine{
		opts:       opts,
		logf:       opts.Logf,
		w:          wheel.New[ref](wheel.Options{Tick: opts.Tick}),
		ids:        make(map[string]idRef),
		reserving:  make(map[string]chan struct{}),
		segs:       make(map[uint32]*segTable),
		topics:     make(map[string]int64),
		backoffDue: make(map[journal.Key]int64),
		stop:       make(chan struct{}),
		startAt:    time.Now(),
	}
	j, err := journal.Open(opts.Journal)
	if err != nil {
		return nil, err
	}
	e.j = j
	rep, err := e.recover()
	if err != nil {
		j.Close()
		return nil, fmt.Errorf("recover journal: %w", err)
	}
	e.recovery = rep
	e.logf("journal: recovered %d live of %d records in %d segments (%d bytes) in %v; torn tails %d (%d bytes truncated); corrupt %d",
		rep.Live, rep.Records, rep.Segments, rep.Bytes, rep.Duration, rep.TornTails, rep.TruncatedBytes, len(rep.Corrupt))
	for _, c := range rep.Corrupt {
		e.logf("journal: CORRUPT: %s", c)
	}

	e.pub, err = egress.New(opts.Egress)
	if err != nil {
		j.Close()
		return nil, err
	}
	e.pool, err = pool.New(opts.PoolSize, func(v any) { e.logf("BUG: publish task panicked: %v", v) })
	if err != nil {
		e.pub.Stop()
		j.Close()
		return nil, err
	}
	e.dq = directQ{
		send: func(topic string, bodies [][]byte) (acked int) {
			defer func() {
				if v := recover(); v != nil {
					e.logf("BUG: direct publish panicked: %v (its messages are journaled instead)", v)
					acked = 0
				}
			}()
			acked, _ = e.pub.TryPublish(topic, bodies)
			return acked
		},
		max:     len(opts.Egress.Addrs) * cmp.Or(opts.Egress.ConnsPerAddr, egress.DefaultConnsPerAddr),
		maxMsgs: cmp.Or(opts.Egress.MaxBatchMsgs, egress.DefaultMaxBatchMsgs),
	}
	e.initMetrics()

	out := make(chan *wheel.Batch[ref], 4)
	e.goFunc(func() { e.w.Run(e.stop, out) })
	e.goFunc(func() { e.dispatch(out) })
	if opts.CompactEvery > 0 {
		e.goFunc(e.compactLoop)
	}
	return e, nil
}

func (e *Engine) goFunc(f func()) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		f()
	}()
}

// wheelDue converts a due time in unix milliseconds to the wheel's clock.
// It reads the wall clock before the wheel's: a pause between the two reads
// then makes the message that much late, never early.
func (e *Engine) wheelDue(dueMs int64) int64 {
	wall := time.Now().UnixNano()
	return wheelTime(e.w.Now(), wall, dueMs)
}

// wheelTime is dueMs (unix ms) on the wheel clock, given a reading mono of
// the wheel clock and one wall (unix ns) of the wall clock, saturated to
// the int64 range: a due time beyond it (292 years after the wheel's zero)
// stays pending instead of wrapping into the past.
func wheelTime(mono, wall, dueMs int64) int64 {
	const maxMs = math.MaxInt64 / int64(time.Millisecond)
	const minMs = math.MinInt64 / int64(time.Millisecond)
	if dueMs > maxMs {
		return math.MaxInt64
	}
	if dueMs < minMs {
		return math.MinInt64
	}
	return satAdd(mono, satAdd(dueMs*int64(time.Millisecond), -wall))
}

// satAdd is a+b clamped to the int64 range.
func satAdd(a, b int64) int64 {
	s := a + b
	if b > 0 && s < a {
		return math.MaxInt64
	}
	if b < 0 && s > a {
		return math.MinInt64
	}
	return s
}

// recover replays the journal into the wheel. Nothing else runs yet, so
// it holds e.mu throughout and reads the clocks once: per record it costs
// one wheel Add and a few slice and map updates.
func (e *Engine) recover() (journal.Report, error) {
	wall := time.Now().UnixNano() // first: a pause before the wheel read makes messages late, not early
	mono := e.w.Now()
	var (
		n, bytes int64
		lastSeg  = ^uint32(0)
		st       *segTable
		topic    string
		topicN   int64
	)
	e.mu.Lock()
	defer e.mu.Unlock()
	rep, err := e.j.Recover(func(p journal.Pos, m *journal.Message) error {
		h := e.w.Add(wheelTime(mono, wall, m.Due), p)
		if p.Seg != lastSeg {
			lastSeg, st = p.Seg, e.segTableLocked(p.Seg)
		}
		st.set(p.Ord, h)
		if m.ID != "" {
			e.ids[m.ID] = idRef{p, m.Topic, true}
		}
		if m.Topic != topic {
			e.topics[topic] += topicN
			topic, topicN = m.Topic, 0
		}
		topicN++
		n++
		bytes += int64(p.Len)
		return nil
	})
	if topicN > 0 {
		e.topics[topic] += topicN
	}
	delete(e.topics, "")
	e.pending.Add(n)
	e.pendingBytes.Add(bytes)
	return rep, err
}

// trackLocked records h as the wheel handle of the message at p.
func (e *Engine) trackLocked(p journal.Pos, h wheel.Handle) {
	e.segTableLocked(p.Seg).set(p.Ord, h)
}

// idAtLocked reports whether id names the ready message at p (not a newer
// message with the same id, nor one being written or moved). Messages are
// matched by position, which a retry keeps, not by wheel handle, which it
// changes. e.mu held.
func (e *Engine) idAtLocked(id string, p journal.Pos) bool {
	r, ok := e.ids[id]
	return ok && r.ready && r.p == p
}

// segTableLocked returns seg's handle table, creating it. e.mu held.
func (e *Engine) segTableLocked(seg uint32) *segTable {
	st := e.segs[seg]
	if st == nil {
		st = &segTable{}
		e.segs[seg] = st
	}
	return st
}

// get returns the handle of ordinal ord, 0 if none; st may be nil.
func (st *segTable) get(ord uint32) wheel.Handle {
	if st == nil || uint32(len(st.h)) <= ord {
		return 0
	}
	return st.h[ord]
}

// set records h as the handle of ordinal ord.
func (st *segTable) set(ord uint32, h wheel.Handle) {
	for uint32(len(st.h)) <= ord {
		st.h = append(st.h, 0)
	}
	if st.h[ord] == 0 {
		st.pending++
	}
	st.h[ord] = h
}

// untrackLocked forgets the handle of a message that left the wheel for
// good (published or cancelled).
func (e *Engine) untrackLocked(p journal.Pos) {
	if len(e.backoffDue) > 0 {
		delete(e.backoffDue, p.Key())
	}
	st := e.segs[p.Seg]
	if st.get(p.Ord) == 0 {
		return
	}
	st.h[p.Ord] = 0
	st.pending--
	if st.pending == 0 {
		delete(e.segs, p.Seg)
	}
}

// Publish implements ingest.Backend: it journals every body of req (or
// none), then schedules them. It returns after the journal's group commit.
// With Options.DirectPublish, bodies already due go to nsqd first and only
// those nsqd did not acknowledge are journaled.
func (e *Engine) Publish(req *ingest.PubRequest) error {
	e.publishing.Add(1) // before the exiting check: Stop waits for it
	defer e.publishing.Add(-1)
	if e.exiting.Load() {
		return ingest.ErrExiting
	}
	bodies := req.Bodies
	if len(bodies) == 0 {
		return nil
	}
	direct := false // bodies went to nsqd first; what is left is journaled below
	if e.opts.DirectPublish && req.ID == "" && req.Due <= time.Now().UnixMilli() {
		// Never early: the due time has passed. A client id takes the
		// journal path, where ids are tracked for dedupe and cancel.
		acked := e.dq.publish(req.Topic, bodies)
		if acked > 0 {
			e.publishedDirect(acked, req.Due)
		}
		// The error, if any, is egress's to log and count; the rest is
		// journaled and retried by the wheel like any due message.
		bodies = bodies[acked:]
		if len(bodies) == 0 {
			return nil
		}
		direct = true
	}
	n := int64(len(bodies))
	// In the unit of the pending-bytes counter: journal record bytes.
	var size int64
	for _, b := range bodies {
		size += int64(journal.RecordLen(&journal.Message{ID: req.ID, Topic: req.Topic, Body: b}))
	}
	overCapacity := func() bool {
		return e.pending.Load()+n > e.opts.MaxPending || e.pendingBytes.Load()+size > e.opts.MaxPendingBytes
	}
	var reserved chan struct{} // closed when this request's write of its id ends
	if req.ID == "" {
		if overCapacity() {
			return ingest.ErrOverCapacity
		}
	} else {
		// An id already pending answers OK and schedules nothing, even at
		// capacity. One being written by another request waits for that
		// write: OK if it landed, else this request writes its own. Else
		// the id is reserved before writing, so two concurrent publishes
		// with it schedule it once.
		for reserved == nil {
			e.mu.Lock()
			if _, ok := e.ids[req.ID]; ok {
				ch := e.reserving[req.ID]
				e.mu.Unlock()
				if ch == nil {
					return nil // pending (or being moved)
				}
				<-ch
				continue
			}
			if overCapacity() {
				e.mu.Unlock()
				return ingest.ErrOverCapacity
			}
			reserved = make(chan struct{})
			e.ids[req.ID] = idRef{}
			e.reserving[req.ID] = reserved
			e.mu.Unlock()
		}
		// Whatever ends this request short of scheduling the message (an
		// error, a panic), the id is given up and its waiters go on.
		defer func() {
			e.mu.Lock()
			if e.reserving[req.ID] == reserved {
				delete(e.reserving, req.ID)
				delete(e.ids, req.ID)
				close(reserved)
			}
			e.mu.Unlock()
		}()
	}

	b := getPubBuf(len(bodies))
	defer putPubBuf(b)
	for i, body := range bodies {
		b.msgs[i] = journal.Message{ID: req.ID, Topic: req.Topic, Due: req.Due, Body: body}
	}
	if e.opts.beforeAppend != nil {
		e.opts.beforeAppend(req)
	}
	if e.opts.journalOff {
		for i := range b.pos {
			b.pos[i] = journal.Pos{Ord: uint32(e.accepted.Load()) + uint32(i), Len: uint32(len(b.msgs[i].Body))}
		}
	} else if err := e.j.Append(b.msgs, b.pos); err != nil {
		// A reserved id is given up (deferred above): a request waiting
		// on it writes its own.
		if errors.Is(err, journal.ErrClosed) {
			return ingest.ErrExiting
		}
		e.logf("journal: append: %v", err)
		return ingest.ErrUnavailable
	}

	due := e.wheelDue(req.Due)
	var bytes int64
	// Into the wheel and the indexes in one critical section: a message
	// due now could otherwise be published (and untracked) before it is
	// tracked.
	e.mu.Lock()
	e.w.AddBatch(due, b.pos[:n], b.hs[:n])
	var st *segTable // of the segment of the message before, usually the same
	for i, p := range b.pos[:n] {
		if st == nil || p.Seg != b.pos[i-1].Seg {
			st = e.segTableLocked(p.Seg)
		}
		st.set(p.Ord, b.hs[i])
		bytes += int64(p.Len)
		if req.ID != "" {
			e.ids[req.ID] = idRef{p, req.Topic, true}
		}
	}
	if reserved != nil {
		delete(e.reserving, req.ID)
		close(reserved)
	}
	e.topics[req.Topic] += n
	e.mu.Unlock()
	e.pending.Add(n)
	e.pendingBytes.Add(bytes)
	e.accepted.Add(uint64(n))
	if direct {
		e.directMissed.Add(uint64(n)) // counted once journaled, not when refused
	}
	return nil
}

// publishedDirect counts n messages due at dueMs that nsqd acknowledged
// straight from Publish, and records their lateness.
func (e *Engine) publishedDirect(n int, dueMs int64) {
	late := time.Now().Sub(time.UnixMilli(dueMs)).Seconds()
	for range n {
		e.lateness.Update(late)
	}
	e.accepted.Add(uint64(n))
	e.published.Add(uint64(n))
	e.direct.Add(uint64(n))
}

// Cancel implements ingest.Backend: it removes the pending message with
// client id and returns nil once the cancel mark is written to the journal
// (so the cancel survives kill -9; fsynced too with FsyncAlways), after one
// group commit as Publish. It returns ingest.ErrNotFound if there is none
// (unknown, published, already cancelled), ingest.ErrInFlight if a publish
// task holds it right now (published if nsqd takes it, else back in the
// wheel and cancellable again), and ingest.ErrUnavailable if the mark could
// not be written (the message is out of the wheel, but may come back after
// a restart).
func (e *Engine) Cancel(id string) error {
	e.publishing.Add(1) // Stop waits for it, as for Publish
	defer e.publishing.Add(-1)
	if e.exiting.Load() {
		return ingest.ErrExiting
	}
	var (
		r  idRef
		ok bool
	)
	// An id not ready means its message is being written or moved; that
	// lasts one group commit, so wait for it rather than answer wrongly.
	for i := 0; ; i++ {
		e.mu.Lock()
		r, ok = e.ids[id]
		if !ok {
			e.mu.Unlock()
			return ingest.ErrNotFound
		}
		if r.ready {
			break
		}
		e.mu.Unlock()
		if i == 5000 {
			return ingest.ErrUnavailable
		}
		time.Sleep(200 * time.Microsecond)
	}
	p := r.p
	if !e.w.Cancel(e.segs[p.Seg].get(p.Ord)) {
		// The id is known and its message not published (that deletes
		// the id), but it is out of the wheel: a publish task holds it.
		// If nsqd does not take it, it comes back and can be cancelled.
		e.mu.Unlock()
		return ingest.ErrInFlight
	}
	delete(e.ids, id)
	e.untrackLocked(p)
	e.mu.Unlock()

	topic := r.topic // kept with the id: the record may not be readable
	var answer error
	// The 200 promises the cancel survives a crash: wait for the mark to
	// be written, as Publish waits for its records.
	if err := e.j.DoneWait(journal.Cancelled, []journal.Key{p.Key()}); err != nil {
		// Out of the wheel now, but without its mark the message comes
		// back after a restart: the client must not take this as done.
		e.logf("journal: cancel mark for %v: %v", p.Key(), err)
		answer = ingest.ErrUnavailable
		if errors.Is(err, journal.ErrClosed) {
			answer = ingest.ErrExiting
		}
	}
	e.mu.Lock()
	e.decTopicLocked(topic, 1)
	e.mu.Unlock()
	e.pending.Add(-1)
	e.pendingBytes.Add(-int64(p.Len))
	e.cancelled.Add(1)
	return answer
}

func (e *Engine) decTopicLocked(topic string, n int64) {
	if v := e.topics[topic] - n; v > 0 {
		e.topics[topic] = v
	} else {
		delete(e.topics, topic)
	}
}

// maxTaskBytes bounds the journal record bytes of one publish task, and so
// the bodies it holds on the heap: PoolSize x maxTaskBytes in all.
const maxTaskBytes = 8 << 20

// dispatch hands due buckets to the pool, split into tasks of at most
// TaskSize messages and maxTaskBytes of records. It returns when out is
// closed or the engine stops.
func (e *Engine) dispatch(out <-chan *wheel.Batch[ref]) {
	for {
		var b *wheel.Batch[ref]
		select {
		case b = <-out:
		case <-e.stop:
			return
		}
		items := b.Items
		for len(items) > 0 {
			// At most TaskSize messages and maxTaskBytes of records (but
			// at least one): a task holds all its bodies on the heap while
			// it publishes, so 1000 messages of 1 MiB held 1 GiB per
			// worker, for as long as a slow nsqd took to answer.
			k, size := 0, int64(0)
			for k < len(items) && k < e.opts.TaskSize {
				l := int64(items[k].Value.Len)
				if k > 0 && size+l > maxTaskBytes {
					break
				}
				size += l
				k++
			}
			t := getTask()
			t.items = append(t.items[:0], items[:k]...)
			items = items[k:]
			if err := e.pool.Submit(func() { e.publishTask(t) }); err != nil {
				// The pool is closed: deferd is stopping. The messages stay
				// live in the journal and go out after restart.
				putTask(t)
			}
		}
		b.Release()
	}
}

// publishTask reads a bucket's bodies from the journal, publishes them per
// topic and marks what nsqd acknowledged as published.
func (e *Engine) publishTask(t *task) {
	defer putTask(t)
	defer func() {
		if v := recover(); v != nil {
			// A bug; but the messages it held must not be lost until a
			// restart.
			n := e.requeueUnhandled(t)
			e.logf("BUG: publish task panicked: %v; its %d messages not yet published or rescheduled go back into the wheel", v, n)
		}
	}()
	t.reset()
	t.ps = t.ps[:0]
	for i := range t.items {
		t.ps = append(t.ps, t.items[i].Value)
	}
	t.requeue = t.requeue[:0]
	e.j.ReadBatch(&t.reader, t.ps, func(i int, m journal.Message, err error) {
		if err != nil {
			e.readErrors.Add(1)
			e.logf("journal: read %v: %v (retrying in %v)", t.ps[i].Key(), err, e.opts.ParkBackoff)
			t.requeue = append(t.requeue, msgRef{item: i}) // an id names it by position, which stays
			return
		}
		start := len(t.arena)
		t.arena = append(t.arena, m.Body...)
		t.add(m.Topic, msgRef{item: i, id: m.ID, due: m.Due, start: start, end: len(t.arena)})
	})
	// A message whose record could not be read stays pending and goes back
	// into the wheel: the error may pass (an I/O error), and until then it
	// is still counted, cancellable and keeps its segment alive.
	if len(t.requeue) > 0 {
		e.reschedule(t, t.requeue, e.opts.ParkBackoff)
	}
	for _, g := range t.groups {
		if e.opts.beforePublish != nil {
			e.opts.beforePublish(g.topic)
		}
		t.bodies = t.bodies[:0]
		for _, r := range g.msgs {
			t.bodies = append(t.bodies, t.arena[r.start:r.end])
		}
		for sent := 0; sent < len(g.msgs); {
			acked, err := e.pub.Publish(g.topic, t.bodies[sent:])
			e.markPublished(t, g.topic, g.msgs[sent:sent+acked])
			sent += acked
			if sent == len(g.msgs) {
				break
			}
			if egress.IsPermanent(err) {
				// nsqd refused this one message (too big for it, empty,
				// bad topic): park it and go on with the others, which
				// were never tried.
				e.failed.Add(1)
				e.logf("egress: nsqd rejected a message for topic %q: %v; retrying it in %v", g.topic, err, e.opts.ParkBackoff)
				e.reschedule(t, g.msgs[sent:sent+1], e.opts.ParkBackoff)
				sent++
				continue
			}
			// nsqd is unreachable or failing: the rest waits in the wheel
			// and is tried again. Never dropped.
			e.reschedule(t, g.msgs[sent:], e.opts.RetryBackoff)
			break
		}
	}
}

// markPublished records msgs, which nsqd acknowledged, as published: the
// journal's Done mark, the indexes, the counters and their lateness.
func (e *Engine) markPublished(t *task, topic string, msgs []msgRef) {
	if len(msgs) == 0 {
		return
	}
	now := time.Now()
	nowMs := now.UnixMilli()
	t.keys = t.keys[:0]
	var bytes int64
	e.mu.Lock()
	for _, r := range msgs {
		it := &t.items[r.item]
		t.keys = append(t.keys, it.Value.Key())
		bytes += int64(it.Value.Len)
		e.untrackLocked(it.Value)
		if r.id != "" && e.idAtLocked(r.id, it.Value) {
			delete(e.ids, r.id)
		}
	}
	e.decTopicLocked(topic, int64(len(msgs)))
	e.mu.Unlock()
	if err := e.j.Done(journal.Published, t.keys); err != nil {
		e.logf("journal: published marks: %v (these may be published again after restart)", err)
	}
	for _, r := range msgs {
		if nowMs < r.due {
			e.early.Add(1)
		}
		late := now.Sub(time.UnixMilli(r.due))
		if late < 0 {
			late = 0
		}
		e.lateness.Update(late.Seconds())
	}
	e.pending.Add(-int64(len(msgs)))
	e.pendingBytes.Add(-bytes)
	e.published.Add(uint64(len(msgs)))
}

// reschedule puts msgs back into the wheel, due after backoff, with the
// same journal position, which their ids name.
func (e *Engine) reschedule(t *task, msgs []msgRef, backoff time.Duration) {
	e.retried.Add(uint64(len(msgs)))
	due := e.w.Now() + int64(backoff)
	e.mu.Lock()
	for _, r := range msgs {
		it := &t.items[r.item]
		e.trackLocked(it.Value, e.w.Add(due, it.Value))
		e.backoffDue[it.Value.Key()] = due
	}
	e.mu.Unlock()
}

// requeueUnhandled puts back into the wheel, due after RetryBackoff, the
// items of t that are neither marked published nor rescheduled: those whose
// message is still tracked under the handle the wheel handed out. It
// returns how many. The task holds them, so nothing else moves them
// between the check and reschedule.
func (e *Engine) requeueUnhandled(t *task) int {
	t.requeue = t.requeue[:0]
	e.mu.Lock()
	for i := range t.items {
		if p := t.items[i].Value; e.segs[p.Seg].get(p.Ord) == t.items[i].Handle {
			t.requeue = append(t.requeue, msgRef{item: i})
		}
	}
	e.mu.Unlock()
	e.reschedule(t, t.requeue, e.opts.RetryBackoff)
	return len(t.requeue)
}

// compactLoop moves the pending messages out of segments that keep the
// journal from reclaiming space, so disk use stays near twice the live data.
func (e *Engine) compactLoop() {
	t := time.NewTicker(e.opts.CompactEvery)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		for !e.exiting.Load() {
			seg, ok := e.j.Compactable()
			if !ok {
				break
			}
			moved, err := e.compact(seg)
			if err != nil {
				e.logf("journal: compact segment %d: %v", seg, err)
				break
			}
			if moved == 0 {
				// What keeps seg alive is being published right now;
				// look again at the next tick instead of rescanning.
				break
			}
		}
	}
}

// compact rewrites the pending messages of segment seg at the journal head.
// Messages being published are left alone; the segment goes away when they
// are marked published.
func (e *Engine) compact(seg uint32) (moved int, err error) {
	err = e.j.ScanLive(seg, func(p journal.Pos, m *journal.Message) error {
		if e.exiting.Load() {
			return ErrStopping
		}
		e.mu.Lock()
		h := e.segs[p.Seg].get(p.Ord)
		if h == 0 || !e.w.Cancel(h) {
			e.mu.Unlock() // not in the wheel, or being published now
			return nil
		}
		backoff, backingOff := e.backoffDue[p.Key()]
		e.untrackLocked(p)
		if m.ID != "" && e.idAtLocked(m.ID, p) {
			e.ids[m.ID] = idRef{} // moving: Cancel waits
		}
		e.mu.Unlock()

		np, err := e.j.AppendMoved(p.Key(), m)
		if err != nil {
			np = p // keep it where it is
		}
		due := e.wheelDue(m.Due)
		if backingOff {
			// Waiting out a retry or park backoff: keep waiting.
			due = max(due, backoff)
		}
		e.mu.Lock()
		nh := e.w.Add(due, np)
		e.trackLocked(np, nh)
		if backingOff {
			e.backoffDue[np.Key()] = backoff
		}
		if m.ID != "" {
			if cur, ok := e.ids[m.ID]; ok && !cur.ready {
				e.ids[m.ID] = idRef{np, m.Topic, true}
			}
		}
		e.mu.Unlock()
		if err != nil {
			return err
		}
		e.pendingBytes.Add(int64(np.Len) - int64(p.Len))
		e.moved.Add(1)
		moved++
		return nil
	})
	return moved, err
}

// ErrStopping is returned by operations interrupted by Stop.
var ErrStopping = errors.New("engine: stopping")

// Stop stops publishing and closes the journal. Pending messages stay in
// the journal and are recovered by the next New on the same directory.
// Publish calls in progress get up to grace to finish, then the tasks
// publishing to nsqd get up to grace. Call it
// after the HTTP server stopped taking requests. Idempotent.
func (e *Engine) Stop(grace time.Duration) error {
	var err error
	e.stopOnce.Do(func() {
		e.exiting.Store(true)
		close(e.stop)
		// Publish calls already past their exiting check finish first, so
		// the journal does not close under a request whose records span
		// several group commits (it would get 503 with part of it kept).
		for deadline := time.Now().Add(grace); e.publishing.Load() > 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				e.logf("stop: %d publish or cancel requests still running after %v", e.publishing.Load(), grace)
				break
			}
		}
		// The pool first: closing it wakes a dispatch blocked submitting
		// the rest of a bucket (its messages stay live in the journal),
		// so the grace bounds the whole wait even when nsqd is down and
		// every worker is retrying.
		poolDeadline := time.Now().Add(grace)
		if perr := e.pool.Release(grace); perr != nil {
			e.logf("stop: publish tasks still running after %v: %v", grace, perr)
		}
		// Then egress: what still publishes fails at once and goes back
		// into the wheel, freeing its worker; a dispatch that slipped past
		// the pool's closed check into a wait for a worker gets one.
		// A publish stuck in go-nsq's connect (IDENTIFY to a hung nsqd,
		// up to its 10s read timeout, serialised per Producer) cannot be
		// interrupted: egress's Stop is waited for only within the same
		// grace as the pool (at least 100ms), so the whole stop stays
		// within the documented bound. Its messages stay live in the
		// journal.
		pubStopped := make(chan struct{})
		go func() { e.pub.Stop(); close(pubStopped) }()
		select {
		case <-pubStopped:
		case <-time.After(max(time.Until(poolDeadline), 100*time.Millisecond)):
			e.logf("stop: egress publishes still running after %v (stuck connecting to nsqd); their messages stay in the journal", grace)
		}
		e.wg.Wait()
		err = e.j.Close()
		metrics.UnregisterSet(e.set, true)
		metrics.UnregisterSet(e.pub.Metrics(), true)
	})
	return err
}

// Pending is the number of messages accepted and not yet published or
// cancelled.
func (e *Engine) Pending() int64 { return e.pending.Load() }

// Recovery is the journal's report from this engine's start.
func (e *Engine) Recovery() journal.Report { return e.recovery }

func (e *Engine) initMetrics() {
	s := metrics.NewSet()
	e.set = s
	e.lateness = s.NewHistogram("deferd_delivery_lateness_seconds")
	gauge := func(name string, f func() float64) { s.NewGauge(name, f) }
	gauge("deferd_pending_messages", func() float64 { return float64(e.pending.Load()) })
	gauge("deferd_pending_bytes", func() float64 { return float64(e.pendingBytes.Load()) })
	gauge("deferd_wheel_entries", func() float64 { return float64(e.w.Len()) })
	gauge("deferd_pool_running", func() float64 { return float64(e.pool.Running()) })
	gauge("deferd_pool_waiting", func() float64 { return float64(e.pool.Waiting()) })
	counter := func(name string, v *atomic.Uint64) {
		s.NewGauge(name, func() float64 { return float64(v.Load()) })
	}
	counter("deferd_accepted_total", &e.accepted)
	counter("deferd_published_total", &e.published)
	counter("deferd_published_direct_total", &e.direct)
	counter("deferd_direct_journaled_total", &e.directMissed)
	counter("deferd_cancelled_total", &e.cancelled)
	counter("deferd_retried_total", &e.retried)
	counter("deferd_failed_total", &e.failed)
	counter("deferd_journal_read_errors_total", &e.readErrors)
	counter("deferd_journal_moved_total", &e.moved)
	counter("deferd_delivered_early_total", &e.early)
	gauge("deferd_journal_corrupt_records", func() float64 { return float64(len(e.recovery.Corrupt)) })
	gauge("deferd_journal_recovery_seconds", func() float64 { return e.recovery.Duration.Seconds() })
	s.RegisterMetricsWriter(e.writeMetrics)
	metrics.RegisterSet(s)
	metrics.RegisterSet(e.pub.Metrics())
}

// writeMetrics writes what /stats has beyond the fixed gauges: the
// journal's state (one Stats call per scrape, O(segments)) and the pending
// messages per topic (one series per topic with pending messages; nsqd's
// topic names need no escaping in a label).
func (e *Engine) writeMetrics(w io.Writer) {
	js := e.j.Stats()
	metrics.WriteGaugeUint64(w, "deferd_journal_segments", uint64(js.Segments))
	metrics.WriteGaugeUint64(w, "deferd_journal_disk_bytes", uint64(max(js.DiskBytes, 0)))
	metrics.WriteGaugeUint64(w, "deferd_journal_live_messages", uint64(max(js.Live, 0)))
	metrics.WriteCounterUint64(w, "deferd_journal_appends_total", js.Appends)
	metrics.WriteCounterUint64(w, "deferd_journal_done_records_total", js.DoneRecords)
	metrics.WriteCounterUint64(w, "deferd_journal_groups_total", js.Groups)
	metrics.WriteCounterUint64(w, "deferd_journal_fsyncs_total", js.Fsyncs)
	metrics.WriteCounterUint64(w, "deferd_journal_write_errors_total", js.WriteErrors)
	metrics.WriteCounterUint64(w, "deferd_journal_corrupt_total", js.Corrupt)
	metrics.WriteCounterUint64(w, "deferd_journal_deleted_segments_total", js.Deleted)
	type topicCount struct {
		topic string
		n     int64
	}
	e.mu.Lock()
	tcs := make([]topicCount, 0, len(e.topics))
	for t, n := range e.topics {
		tcs = append(tcs, topicCount{t, n})
	}
	e.mu.Unlock()
	slices.SortFunc(tcs, func(a, b topicCount) int { return strings.Compare(a.topic, b.topic) })
	for _, tc := range tcs {
		metrics.WriteGaugeUint64(w, `deferd_pending_by_topic{topic="`+tc.topic+`"}`, uint64(max(tc.n, 0)))
	}
}

// Percentiles returns the delivery lateness at the given quantiles (0..1),
// in seconds, from the lateness histogram (bucket upper bounds: about 12%
// resolution).
func (e *Engine) Percentiles(qs ...float64) []float64 {
	type bucket struct {
		upper float64
		n     uint64
	}
	var bs []bucket
	var total uint64
	e.lateness.VisitNonZeroBuckets(func(vmrange string, n uint64) {
		var upper float64
		if i := strings.Index(vmrange, "..."); i >= 0 {
			fmt.Sscan(vmrange[i+3:], &upper)
		}
		bs = append(bs, bucket{upper, n})
		total += n
	})
	out := make([]float64, len(qs))
	if total == 0 {
		return out
	}
	// VisitNonZeroBuckets visits in increasing order of bucket.
	for qi, q := range qs {
		want := uint64(q*float64(total) + 0.5)
		if want < 1 {
			want = 1
		}
		var seen uint64
		for _, b := range bs {
			seen += b.n
			if seen >= want {
				out[qi] = b.upper
				break
			}
		}
	}
	return out
}
