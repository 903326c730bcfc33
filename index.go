package deferd

import (
	"fmt"
	"sync"
	"time"

	"github.com/deferd/deferd/internal/sat"
	"github.com/deferd/deferd/journal"
	"github.com/deferd/deferd/wheel"
)

// ref is what the wheel holds per pending message: where its record lives.
type ref = journal.Pos

// index is the pending set: the timing wheel and what deferd knows of each
// pending message, kept consistent behind its methods (as nsqd keeps a
// channel's in-flight map and priority queue behind push, pop and remove).
// Its invariants, all under mu:
//   - a message is pending iff segs holds a handle for its position, or a
//     publish task holds it (taken out of the wheel by the tick);
//   - an id in ids is pending, being written (reserved) or being moved; an
//     idRef that is not ready has a channel in waits, closed when it ends;
//   - topics counts pending messages per topic.
//
// Every method is safe for concurrent use and costs O(1) per message
// (amortised, map and slab operations) unless it says otherwise. mu is
// never held across I/O. The zero index is not usable: see newIndex.
type index struct {
	w   *wheel.Wheel[ref]
	clk clocks // the Scheduler's wall clock

	mu sync.Mutex
	// ids maps a client id to its pending message.
	ids map[string]idRef
	// waits holds, for each id being written or moved, a channel closed
	// when that ends.
	waits map[string]chan struct{}
	// segs maps a journal segment to the wheel handles of its messages by
	// ordinal, so compaction can find and move pending ones.
	segs map[uint32]*segTable
	// topics counts pending messages per topic.
	topics map[string]int64
	// backoffDue holds, for messages put back into the wheel after a
	// failed publish or read, the wheel time they wait for, so that
	// compaction moves them without cutting their backoff short, and
	// their failed attempts (what Lookup reports).
	backoffDue map[journal.Key]backoff

	// origOf maps the current key of a message that was moved (compacted
	// or rescheduled) to its Key, the key of its first record; curOf maps
	// that Key back to its current position. Messages never moved are in
	// neither (their key is their record's). moving holds, by Key, a
	// channel closed when a move under way ends.
	origOf map[journal.Key]journal.Key
	curOf  map[journal.Key]journal.Pos
	moving map[journal.Key]chan struct{}

	// retained holds the published messages whose id is retained
	// (Options.IDRetention), by id; retQ lists them in publish order, for
	// expiry (see retention.go).
	retained  map[string]retainedRef
	retByKey  map[Key]string // the ids of retained, by Key
	retQ      []retExpiry
	retDead   []journal.Key // retention records replaced or expired at replay: to mark done
	retention time.Duration // Options.IDRetention

	// counts are the cumulative accepted and published counts per topic
	// (journaled and direct), for the per-second rates.
	counts map[string]*topicCount2
}

// backoff is what index.backoffDue keeps of a message waiting out a
// retry or park: the wheel time it waits for and its failed attempts.
type backoff struct {
	due      int64
	attempts uint32
	origDue  int64  // its due time, unix ms (0 if unknown)
	topic    string // "" if unknown
	retryMs  int64  // due in unix ms (ceiled; ListPending's order), 0 if not a retry
}

// topicCount2 is one topic's cumulative accepted and published counts,
// and how many rate samples in a row found them unchanged (sampleRates
// drops a topic quiet for a whole window with nothing pending).
type topicCount2 struct {
	accepted, published uint64
	quiet               int
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
// for messages not in the wheel) and how many are set, and their ingest
// protocols by ordinal: one byte each, up to the last ordinal set to
// another than protoRecovered (a segment replayed at start has none).
type segTable struct {
	h       []wheel.Handle
	proto   []ingestProto
	pending int
}

func newIndex(w *wheel.Wheel[ref]) *index {
	return &index{
		w:          w,
		ids:        make(map[string]idRef),
		waits:      make(map[string]chan struct{}),
		segs:       make(map[uint32]*segTable),
		topics:     make(map[string]int64),
		backoffDue: make(map[journal.Key]backoff),
		origOf:     make(map[journal.Key]journal.Key),
		curOf:      make(map[journal.Key]journal.Pos),
		moving:     make(map[journal.Key]chan struct{}),
		retained:   make(map[string]retainedRef),
		retByKey:   make(map[Key]string),
		counts:     make(map[string]*topicCount2),
	}
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

// protoOf returns the ingest protocol of ordinal ord; st may be nil.
func (st *segTable) protoOf(ord uint32) ingestProto {
	if st == nil || uint32(len(st.proto)) <= ord {
		return protoRecovered
	}
	return st.proto[ord]
}

// setProto records p as the ingest protocol of ordinal ord.
func (st *segTable) setProto(ord uint32, p ingestProto) {
	if p == protoRecovered && uint32(len(st.proto)) <= ord {
		return
	}
	for uint32(len(st.proto)) <= ord {
		st.proto = append(st.proto, protoRecovered)
	}
	st.proto[ord] = p
}

// segTableLocked returns seg's handle table, creating it.
func (x *index) segTableLocked(seg uint32) *segTable {
	st := x.segs[seg]
	if st == nil {
		st = &segTable{}
		x.segs[seg] = st
	}
	return st
}

// handleLocked is the wheel handle of the message at p, 0 if it is not in
// the wheel.
func (x *index) handleLocked(p journal.Pos) wheel.Handle { return x.segs[p.Seg].get(p.Ord) }

// untrackLocked forgets the handle of a message that left the wheel for
// good (published, cancelled) or for a move.
func (x *index) untrackLocked(p journal.Pos) {
	if len(x.backoffDue) > 0 {
		delete(x.backoffDue, p.Key())
	}
	if len(x.origOf) > 0 {
		if o, ok := x.origOf[p.Key()]; ok {
			delete(x.origOf, p.Key())
			delete(x.curOf, o)
		}
	}
	st := x.segs[p.Seg]
	if st.get(p.Ord) == 0 {
		return
	}
	st.h[p.Ord] = 0
	st.pending--
	if st.pending == 0 {
		delete(x.segs, p.Seg)
	}
}

// idAtLocked reports whether id names the ready message at p (not a newer
// message with the same id, nor one being written or moved). Messages are
// matched by position, which a retry keeps, not by wheel handle, which it
// changes.
func (x *index) idAtLocked(id string, p journal.Pos) bool {
	r, ok := x.ids[id]
	return ok && r.ready && r.p == p
}

func (x *index) decTopicLocked(topic string, n int64) {
	if v := x.topics[topic] - n; v > 0 {
		x.topics[topic] = v
	} else {
		delete(x.topics, topic)
	}
}

// waitBound bounds how long Cancel, Lookup, Reschedule and a Publish with
// an id wait for a write or move of the same message to end (one group
// commit, normally): on a stalled disk they answer ErrJournalUnavailable
// instead of piling up.
const waitBound = time.Second

// errWaitBound is the answer when waitBound passed.
var errWaitBound = fmt.Errorf("%w: a write or move of the message did not end within %v", ErrJournalUnavailable, waitBound)

// waitEnd waits for ch to be closed until *deadline (set to waitBound from
// now on the first wait of a call); false if the deadline passed first.
func waitEnd(ch chan struct{}, deadline *time.Time) bool {
	select {
	case <-ch:
		return true
	default:
	}
	if deadline.IsZero() {
		*deadline = time.Now().Add(waitBound)
	}
	d := time.Until(*deadline)
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// reserve takes id for a message about to be written. It returns
// (nil, false) if id is pending already (the caller answers OK and
// schedules nothing), waiting first for another write or move of id to end
// (ErrJournalUnavailable if that takes longer than waitBound);
// else the reservation, to hand to add or release. full, called under the
// lock, refuses a new reservation with its error (capacity).
func (x *index) reserve(id string, full func() error) (chan struct{}, error) {
	var deadline time.Time
	for {
		x.mu.Lock()
		if _, ok := x.ids[id]; ok {
			ch := x.waits[id]
			x.mu.Unlock()
			if ch == nil {
				return nil, nil // pending
			}
			if !waitEnd(ch, &deadline) { // being written or moved: see how that ends
				return nil, errWaitBound
			}
			continue
		}
		if x.retainedLocked(id) {
			x.mu.Unlock()
			return nil, nil // published within IDRetention
		}
		if err := full(); err != nil {
			x.mu.Unlock()
			return nil, err
		}
		ch := make(chan struct{})
		x.ids[id] = idRef{}
		x.waits[id] = ch
		x.mu.Unlock()
		return ch, nil
	}
}

// release gives up reservation ch of id if add did not take it, so that
// callers waiting on it go on. Idempotent; a no-op after add.
func (x *index) release(id string, ch chan struct{}) {
	x.mu.Lock()
	if x.waits[id] == ch {
		delete(x.waits, id)
		delete(x.ids, id)
		close(ch)
	}
	x.mu.Unlock()
}

// add puts the messages at ps, all of topic, due at wheel time due and in
// by protocol proto, into
// the wheel and the index in one critical section (a message due now could
// otherwise be published, and untracked, before it is tracked). hs is
// scratch of len(ps). With id set, the (single) message gets it and
// reservation ch ends. It returns the record bytes added.
func (x *index) add(due int64, ps []journal.Pos, hs []wheel.Handle, topic, id string, ch chan struct{}, proto ingestProto) (bytes int64) {
	x.mu.Lock()
	x.w.AddBatch(due, ps, hs)
	var st *segTable // of the segment of the message before, usually the same
	for i, p := range ps {
		if st == nil || p.Seg != ps[i-1].Seg {
			st = x.segTableLocked(p.Seg)
		}
		st.set(p.Ord, hs[i])
		st.setProto(p.Ord, proto)
		bytes += int64(p.Len)
		if id != "" {
			x.ids[id] = idRef{p, topic, true}
		}
	}
	if ch != nil {
		delete(x.waits, id)
		close(ch)
	}
	x.topics[topic] += int64(len(ps))
	x.countLocked(topic).accepted += uint64(len(ps))
	x.mu.Unlock()
	return bytes
}

// countLocked returns topic's cumulative counts, creating them.
func (x *index) countLocked(topic string) *topicCount2 {
	c := x.counts[topic]
	if c == nil {
		c = &topicCount2{}
		x.counts[topic] = c
	}
	return c
}

// countDirect counts n messages of topic accepted and published at once
// (DirectPublish).
func (x *index) countDirect(topic string, n int) {
	x.mu.Lock()
	c := x.countLocked(topic)
	c.accepted += uint64(n)
	c.published += uint64(n)
	x.mu.Unlock()
}

// remove takes the pending message of id out of the wheel and the index,
// for a cancel. It waits for a write or move of id to end (at most
// waitBound: then ErrJournalUnavailable). It returns
// ErrNotFound if id names no pending message, ErrInFlight if a publish
// task holds it right now (it comes back if the sink does not take it).
func (x *index) remove(id string) (idRef, error) {
	var deadline time.Time
	for {
		x.mu.Lock()
		r, ok := x.ids[id]
		if !ok {
			x.mu.Unlock()
			return idRef{}, ErrNotFound
		}
		if !r.ready {
			ch := x.waits[id]
			x.mu.Unlock()
			if !waitEnd(ch, &deadline) { // lasts one group commit, normally
				return idRef{}, errWaitBound
			}
			continue
		}
		if !x.w.Cancel(x.handleLocked(r.p)) {
			// Known and not published (that deletes the id), but out of
			// the wheel: a publish task holds it.
			x.mu.Unlock()
			return idRef{}, ErrInFlight
		}
		delete(x.ids, id)
		x.untrackLocked(r.p)
		x.decTopicLocked(r.topic, 1)
		x.mu.Unlock()
		return r, nil
	}
}

// published forgets msgs of topic, which the sink took: positions, ids
// (where they still name these messages) and the topic count. keys gets
// their journal keys appended; it returns it and their record bytes. It
// sets each msgs[i].proto to that message's ingest protocol.
//
// ret, if not nil, holds the retention entries of those msgs that have an
// id (in order), to keep in the same critical section that gives the id
// up, so that no Publish with it sees it neither pending nor retained.
func (x *index) published(topic string, items []wheel.Item[ref], msgs []msgRef, keys []journal.Key, ret []retainedRef) ([]journal.Key, int64) {
	var bytes int64
	x.mu.Lock()
	k := 0
	for i, r := range msgs {
		p := items[r.item].Value
		keys = append(keys, p.Key())
		bytes += int64(p.Len)
		msgs[i].proto = x.segs[p.Seg].protoOf(p.Ord) // before untrackLocked drops it
		x.untrackLocked(p)
		if r.id != "" && x.idAtLocked(r.id, p) {
			delete(x.ids, r.id)
			if k < len(ret) {
				x.retainLocked(r.id, ret[k])
			}
		} else if r.id != "" && k < len(ret) {
			// The id names another message now (two records with one id
			// after a crash lost a published mark): this one's retention
			// record is not kept, so the next expiry marks it done.
			x.retDead = append(x.retDead, ret[k].p.Key())
		}
		if r.id != "" {
			k++
		}
	}
	x.decTopicLocked(topic, int64(len(msgs)))
	x.countLocked(topic).published += uint64(len(msgs))
	x.mu.Unlock()
	return keys, bytes
}

// attempts returns the failed attempts of the messages at ps, which a
// publish task holds, into dst (0 for most). O(len(ps)).
func (x *index) attempts(ps []journal.Pos, dst []uint32) []uint32 {
	dst = dst[:0]
	x.mu.Lock()
	for _, p := range ps {
		dst = append(dst, x.backoffDue[p.Key()].attempts)
	}
	x.mu.Unlock()
	return dst
}

// keyOfLocked is the Key of the message whose record is at p.
func (x *index) keyOfLocked(p journal.Pos) journal.Key {
	if len(x.origOf) > 0 {
		if o, ok := x.origOf[p.Key()]; ok {
			return o
		}
	}
	return p.Key()
}

// listKeys returns the Keys of the messages at ps into keys and, for those
// waiting out a retry, their retry time in unix ms into retry (0 for the
// others). O(len(ps)).
func (x *index) listKeys(ps []journal.Pos, keys []journal.Key, retry []int64) ([]journal.Key, []int64) {
	keys, retry = keys[:0], retry[:0]
	x.mu.Lock()
	for _, p := range ps {
		keys = append(keys, x.keyOfLocked(p))
		var r int64
		if len(x.backoffDue) > 0 {
			r = x.backoffDue[p.Key()].retryMs
		}
		retry = append(retry, r)
	}
	x.mu.Unlock()
	return keys, retry
}

// keysOf returns the Keys of the messages at ps into dst. O(len(ps)).
func (x *index) keysOf(ps []journal.Pos, dst []journal.Key) []journal.Key {
	dst = dst[:0]
	x.mu.Lock()
	for _, p := range ps {
		dst = append(dst, x.keyOfLocked(p))
	}
	x.mu.Unlock()
	return dst
}

// requeue puts msgs back into the wheel at wheel time due, at the same
// journal positions, which their ids name, and remembers the backoff for
// compaction.
//
// topic is theirs, "" if unknown.
func (x *index) requeue(due int64, items []wheel.Item[ref], msgs []msgRef, topic string) {
	wall := x.clk.nowNs()
	retryMs := ceilMs(sat.Add(due, wall-x.w.Now())) // due on the wall clock
	x.mu.Lock()
	for _, r := range msgs {
		p := items[r.item].Value
		x.segTableLocked(p.Seg).set(p.Ord, x.w.Add(due, p))
		b := x.backoffDue[p.Key()]
		b.due, b.attempts, b.retryMs = due, b.attempts+1, retryMs
		if r.due != 0 {
			b.origDue = r.due
		}
		if topic != "" {
			b.topic = topic
		}
		x.backoffDue[p.Key()] = b
	}
	x.mu.Unlock()
}

// unhandled appends to dst the items that are neither published nor
// requeued: those whose message is still tracked under the handle the
// wheel handed out. Cost O(len(items)).
func (x *index) unhandled(items []wheel.Item[ref], dst []msgRef) []msgRef {
	x.mu.Lock()
	for i := range items {
		if x.handleLocked(items[i].Value) == items[i].Handle {
			dst = append(dst, msgRef{item: i})
		}
	}
	x.mu.Unlock()
	return dst
}

// move is a pending message taken out of the wheel by moveOut, to be put
// back by moveIn at its new position.
type move struct {
	backoff    backoff
	backingOff bool
	proto      ingestProto   // the message's ingest protocol
	key        journal.Key   // the message's Key
	wait       chan struct{} // closed by moveIn: lookups by key wait for it
	ch         chan struct{} // the id's wait, if it has one
}

// moveOut takes the message at p (with id, "" if none) out of the wheel for
// compaction. ok is false if it is not in the wheel, or a publish task
// holds it: then it stays where it is. Its id waits for moveIn meanwhile.
func (x *index) moveOut(p journal.Pos, id string) (mv move, ok bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	h := x.handleLocked(p)
	if h == 0 || !x.w.Cancel(h) {
		return move{}, false
	}
	mv.backoff, mv.backingOff = x.backoffDue[p.Key()]
	mv.proto = x.segs[p.Seg].protoOf(p.Ord)
	mv.key = x.keyOfLocked(p)
	mv.wait = make(chan struct{})
	x.moving[mv.key] = mv.wait
	x.untrackLocked(p)
	if id != "" && x.idAtLocked(id, p) {
		mv.ch = make(chan struct{})
		x.ids[id] = idRef{} // moving: Cancel and Publish wait for moveIn
		x.waits[id] = mv.ch
	}
	return mv, true
}

// moveIn puts back at np, due at wheel time due (or its backoff, if later),
// a message moveOut took out.
// With reset set (a reschedule), due replaces a backoff instead.
func (x *index) moveIn(mv move, np journal.Pos, due int64, topic, id string, reset bool) {
	if mv.backingOff && !reset {
		due = max(due, mv.backoff.due) // waiting out a retry or park: keep waiting
	}
	x.mu.Lock()
	st := x.segTableLocked(np.Seg)
	st.set(np.Ord, x.w.Add(due, np))
	st.setProto(np.Ord, mv.proto)
	if mv.backingOff {
		b := mv.backoff
		if reset {
			// A new due time: not overdue since the old one any more
			// (Due); its failed attempts stay (Lookup).
			b.due, b.origDue, b.retryMs = due, 0, 0
		}
		x.backoffDue[np.Key()] = b
	}
	if np.Key() != mv.key {
		x.origOf[np.Key()] = mv.key
		x.curOf[mv.key] = np
	}
	if x.moving[mv.key] == mv.wait {
		delete(x.moving, mv.key)
	}
	close(mv.wait)
	if mv.ch != nil && x.waits[id] == mv.ch {
		x.ids[id] = idRef{np, topic, true}
		delete(x.waits, id)
		close(mv.ch)
	}
	x.mu.Unlock()
}

// topicCounts returns a copy of the pending count per topic. O(topics).
func (x *index) topicCounts() map[string]int64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	m := make(map[string]int64, len(x.topics))
	for k, v := range x.topics {
		m[k] = v
	}
	return m
}
