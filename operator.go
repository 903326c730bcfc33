package deferd

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/deferd/deferd/internal/sat"
	"github.com/deferd/deferd/journal"
)

// Key is deferd's own name for an accepted message: the journal key
// (segment, ordinal) of its first record. It stays the same across
// restarts, compaction and Reschedule, which move the message to new
// records that carry it. Its text form (String, ParseKey) is "SEG-ORD",
// e.g. "12-3456". The zero Key names no message.
type Key = journal.Key

// FormatKey is k's text form, "SEG-ORD". O(1).
func FormatKey(k Key) string {
	return strconv.FormatUint(uint64(k.Seg), 10) + "-" + strconv.FormatUint(uint64(k.Ord), 10)
}

// ParseKey parses FormatKey's form; an error wraps ErrInvalid. O(len(s)).
func ParseKey(s string) (Key, error) {
	a, b, ok := strings.Cut(s, "-")
	seg, err1 := strconv.ParseUint(a, 10, 32)
	ord, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil || seg == 0 {
		return Key{}, fmt.Errorf("%w: key %q (want SEG-ORD)", ErrInvalid, s)
	}
	return Key{Seg: uint32(seg), Ord: uint32(ord)}, nil
}

// Ref names one message: by its client ID, or by its Key when ID is "".
// The zero Ref names none.
type Ref struct {
	ID  string
	Key Key
}

// The states of MessageInfo.State.
const (
	StatePending   = "pending"   // in the wheel, waiting for its due time (or a retry)
	StateInFlight  = "in_flight" // a publish task is handing it to the sink right now
	StatePublished = "published" // the sink took it; known only while its id is retained (Options.IDRetention)
)

// MaxLookupBody is the most body bytes Lookup returns.
const MaxLookupBody = 64 << 10

// MessageInfo is what Lookup reports of a message (GET /message), a plain
// value. Size is the body's length in bytes; AcceptedMs 0 means unknown (a
// message journaled by a deferd before keys existed); Attempts counts the
// hand-overs to the sink that did not take it (plus the one that did, once
// published). Body and Truncated are set only when asked for.
type MessageInfo struct {
	ID         string `json:"id"`
	Key        string `json:"key"`
	Topic      string `json:"topic"`
	State      string `json:"state"`
	DueMs      int64  `json:"due_ms"`
	AcceptedMs int64  `json:"accepted_ms"`
	Size       int    `json:"size"`
	Attempts   uint32 `json:"attempts"`
	Body       []byte `json:"body,omitempty"` // base64 in JSON; at most MaxLookupBody bytes
	Truncated  *bool  `json:"truncated,omitempty"`
}

// found is what the index knows of one pending message.
type found struct {
	p        journal.Pos // its current record (Off and Len 0: unknown, in flight and named by key)
	key      Key
	inWheel  bool
	attempts uint32
}

// find resolves ref to a pending message, waiting out a write or move of
// it (at most waitBound: then ErrJournalUnavailable). ErrNotFound if none
// is pending. O(1).
func (x *index) find(ref Ref) (found, error) {
	var deadline time.Time
	for {
		x.mu.Lock()
		f, wait, err := x.findLocked(ref)
		x.mu.Unlock()
		if wait == nil {
			return f, err
		}
		if !waitEnd(wait, &deadline) { // one group commit, normally
			return found{}, errWaitBound
		}
	}
}

func (x *index) findLocked(ref Ref) (f found, wait chan struct{}, err error) {
	if ref.ID != "" {
		r, ok := x.ids[ref.ID]
		if !ok {
			return f, nil, ErrNotFound
		}
		if !r.ready {
			if ch := x.waits[ref.ID]; ch != nil {
				return f, ch, nil
			}
			return f, nil, ErrNotFound
		}
		f.p = r.p
		f.key = x.keyOfLocked(r.p)
	} else {
		if ref.Key == (Key{}) {
			return f, nil, ErrNotFound
		}
		if ch := x.moving[ref.Key]; ch != nil {
			return f, ch, nil
		}
		if _, moved := x.origOf[ref.Key]; moved {
			return f, nil, ErrNotFound // the record of a moved message, not a Key
		}
		if p, ok := x.curOf[ref.Key]; ok {
			f.p = p
		} else {
			f.p = journal.Pos{Seg: ref.Key.Seg, Ord: ref.Key.Ord}
		}
		f.key = ref.Key
	}
	h := x.handleLocked(f.p)
	if h == 0 {
		return f, nil, ErrNotFound
	}
	if v, ok := x.w.Get(h); ok {
		f.p, f.inWheel = v, true
	}
	f.attempts = x.backoffDue[f.p.Key()].attempts
	return f, nil, nil
}

// Lookup reports the message ref names: pending, in flight, or published
// while its id is retained (Options.IDRetention; by id or key). With body
// set it adds up to MaxLookupBody bytes of the body. ErrNotFound if there
// is none; ErrJournalUnavailable if a write or move of it under way did not
// end within a second (a stalled disk; as for Reschedule and CancelRef);
// ErrClosed while closing. A message in flight named by key is
// reported with its key and state only when its record is not at hand.
// Cost: O(1) in the index and one read of its record (page cache). Safe
// for concurrent use.
func (s *Scheduler) Lookup(ref Ref, body bool) (MessageInfo, error) {
	if !s.enter() {
		return MessageInfo{}, ErrClosed
	}
	defer s.leave()
	for try := 0; ; try++ {
		f, err := s.ix.find(ref)
		if errors.Is(err, ErrNotFound) {
			if r, ok := s.ix.retainedInfo(ref); ok {
				return r, nil
			}
		}
		if err != nil {
			return MessageInfo{}, err
		}
		info := MessageInfo{ID: ref.ID, Key: FormatKey(f.key), State: StatePending, Attempts: f.attempts}
		if !f.inWheel {
			info.State = StateInFlight
		}
		if f.p.Len == 0 {
			return info, nil
		}
		m, _, err := s.j.Read(f.p, nil)
		if err != nil {
			if try < 3 {
				continue // moved meanwhile: look again
			}
			return MessageInfo{}, fmt.Errorf("%w: %w", ErrJournalUnavailable, err)
		}
		info.ID, info.Topic, info.DueMs, info.AcceptedMs, info.Size = m.ID, m.Topic, m.Due, m.Accepted, len(m.Body)
		if body {
			b := m.Body
			tr := len(b) > MaxLookupBody
			if tr {
				b = b[:MaxLookupBody]
			}
			info.Body, info.Truncated = b, &tr
		}
		return info, nil
	}
}

// Reschedule moves the pending message ref names to a new due time: due,
// or now if due is zero or past ("run now"), never earlier. It returns nil
// once the move is in the journal (one Moved record, written to the OS as
// a Publish's records are, so it survives kill -9; on the disk too with
// Fsync "always"); the message keeps its Key, id, body and accepted time,
// and a retry backoff it was waiting out is replaced. ErrNotFound if none
// is pending; ErrInFlight if a publish task holds it right now (ask
// again); ErrInvalid (wrapped) if due is beyond MaxDefer;
// ErrJournalUnavailable if the move could not be written (the message
// keeps its old due time); ErrClosed while closing. Cost: one read of its
// record and one group commit. Safe for concurrent use.
func (s *Scheduler) Reschedule(ref Ref, due time.Time) error {
	now := s.clk.now()
	dueMs := now.UnixMilli()
	if !due.IsZero() && due.After(now) {
		if due.Sub(now) > s.opts.MaxDefer {
			return fmt.Errorf("%w: due %v beyond MaxDefer %v", ErrInvalid, due.Sub(now), s.opts.MaxDefer)
		}
		dueMs = ceilMs(due.UnixNano())
	}
	if !s.enter() {
		return ErrClosed
	}
	defer s.leave()
	for try := 0; ; try++ {
		f, m, again, err := s.readPending(ref, try)
		if again {
			continue
		}
		if err != nil {
			return err
		}
		mv, ok := s.ix.moveOut(f.p, m.ID)
		if !ok {
			if try < 3 {
				continue // moved or taken meanwhile: look again
			}
			return ErrInFlight
		}
		oldDue := m.Due
		m.Due, m.Origin = dueMs, mv.key
		np, err := s.j.AppendMoved(f.p.Key(), &m)
		if err != nil {
			s.ix.moveIn(mv, f.p, s.wheelDue(oldDue), m.Topic, m.ID, false)
			s.logf("journal: reschedule %s: %v", FormatKey(mv.key), err)
			if errors.Is(err, journal.ErrClosed) {
				return ErrClosed
			}
			return fmt.Errorf("%w: %w", ErrJournalUnavailable, err)
		}
		s.ix.moveIn(mv, np, s.wheelDue(dueMs), m.Topic, m.ID, true)
		s.pendingBytes.Add(int64(np.Len) - int64(f.p.Len))
		s.op.rescheduled.Add(1)
		return nil
	}
}

// readPending finds the message ref names, waiting in the wheel, and
// reads its record: ErrNotFound (or find's other errors) if none is
// pending, ErrInFlight if a publish task holds it, ErrJournalUnavailable
// (wrapped) if the read failed on the last try. again: the read failed
// and try < 3 (moved meanwhile: look again).
func (s *Scheduler) readPending(ref Ref, try int) (f found, m journal.Message, again bool, err error) {
	f, err = s.ix.find(ref)
	if err != nil {
		return f, m, false, err
	}
	if !f.inWheel || f.p.Len == 0 {
		return f, m, false, ErrInFlight
	}
	m, _, err = s.j.Read(f.p, nil)
	if err != nil {
		if try < 3 {
			return f, m, true, nil
		}
		return f, m, false, fmt.Errorf("%w: %w", ErrJournalUnavailable, err)
	}
	return f, m, false, nil
}

// CancelRef is Cancel of the message ref names, by id or by Key, with
// Cancel's results. By key it reads the message's record first (its id
// and topic). Safe for concurrent use.
func (s *Scheduler) CancelRef(ref Ref) error {
	if ref.ID != "" {
		return s.Cancel(ref.ID)
	}
	if !s.enter() {
		return ErrClosed
	}
	defer s.leave()
	for try := 0; ; try++ {
		f, m, again, err := s.readPending(ref, try)
		if again {
			continue
		}
		if err != nil {
			return err
		}
		p, err := s.ix.removeAt(ref.Key, f.p, m.ID, m.Topic)
		if errors.Is(err, errMoved) {
			if try < 3 {
				continue
			}
			return ErrInFlight // moved again and again: ask again
		}
		if err != nil {
			return err
		}
		return s.cancelled1(p)
	}
}

// errMoved: the message left the position looked at (moved, or taken by a
// publish task) between find and remove.
var errMoved = errors.New("deferd: moved")

// removeAt removes the pending message with Key key if its record is
// still at p, for a cancel by key; id and topic are its record's.
func (x *index) removeAt(key Key, p journal.Pos, id, topic string) (journal.Pos, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.moving[key] != nil || x.keyOfLocked(p) != key {
		return p, errMoved
	}
	if cur, ok := x.curOf[key]; ok && cur.Key() != p.Key() {
		return p, errMoved // moved since find: look again
	}
	h := x.handleLocked(p)
	if h == 0 {
		if f, wait, err := x.findLocked(Ref{Key: key}); wait != nil || err == nil && f.p.Key() != p.Key() {
			return p, errMoved // pending elsewhere now
		}
		return p, ErrNotFound
	}
	if !x.w.Cancel(h) {
		return p, ErrInFlight
	}
	if id != "" && x.idAtLocked(id, p) {
		delete(x.ids, id)
	}
	x.untrackLocked(p)
	x.decTopicLocked(topic, 1)
	return p, nil
}

// The bounds of ListPending.
const (
	// listSlack bounds the jitter of the conversion of a due time to the
	// wheel's clock that ListPending allows for (plus a tick).
	listSlack = 10 * time.Millisecond

	DefaultPendingLimit = 100
	MaxPendingLimit     = 1000
	// MaxPendingPass is the most pending messages one ListPending call
	// passes over (reads) looking for its topic, before it returns what it
	// found with a cursor to go on from.
	MaxPendingPass = 100_000
)

// PendingQuery is one ListPending call: up to Limit (default
// DefaultPendingLimit, at most MaxPendingLimit) messages of Topic (all
// topics if ""), after the Cursor of the page before ("" from the start).
type PendingQuery struct {
	Topic  string
	Limit  int
	Cursor string
}

// PendingMessage is one message of a PendingPage. Size is the body's
// length in bytes; DueMs its due time (unix ms).
type PendingMessage struct {
	Key   string `json:"key"`
	ID    string `json:"id,omitempty"`
	Topic string `json:"topic"`
	DueMs int64  `json:"due_ms"`
	Size  int    `json:"size"`
}

// PendingPage is ListPending's answer (GET /pending). Cursor, if not "",
// gives the next page; "" means the listing is complete.
type PendingPage struct {
	Messages []PendingMessage `json:"messages"`
	Cursor   string           `json:"cursor"`
}

// cursor is a position in ListPending's order: due time (unix ms; a
// message waiting out a retry at its retry time), then Key. Both survive
// compaction's moves, which give a message a new record and wheel time.
type cursor struct {
	due int64
	key Key
}

func (c cursor) String() string {
	return strconv.FormatInt(c.due, 10) + "_" + FormatKey(c.key)
}

func parseCursor(s string) (cursor, error) {
	if s == "" {
		return cursor{due: math.MinInt64}, nil
	}
	a, b, ok := strings.Cut(s, "_")
	due, err := strconv.ParseInt(a, 10, 64)
	if !ok || err != nil {
		return cursor{}, fmt.Errorf("%w: cursor %q", ErrInvalid, s)
	}
	k, err := ParseKey(b)
	if err != nil {
		return cursor{}, fmt.Errorf("%w: cursor %q", ErrInvalid, s)
	}
	return cursor{due, k}, nil
}

func (c cursor) before(o cursor) bool {
	if c.due != o.due {
		return c.due < o.due
	}
	if c.key.Seg != o.key.Seg {
		return c.key.Seg < o.key.Seg
	}
	return c.key.Ord < o.key.Ord
}

// ListPending lists pending messages in the order they will be handed to
// the sink (due order, in unix ms; a message waiting out a retry backoff
// comes at its retry time; messages due in the same millisecond by Key),
// from q.Cursor on. In-flight messages are not listed. The listing is
// complete and never repeats a message across pages for messages that stay
// pending with the same due time while it is paged through (compaction may
// move them meanwhile: they keep their due time and Key); messages added,
// rescheduled or published meanwhile may or may not appear. A step of the
// wall clock while paging may make it skip or repeat some.
//
// Cost: the wheel slots it passes, of a coarse slot only the 64ths of its
// span it reaches, walked twice however crowded the slot (see wheel.Scan:
// at the default 1 ms tick that is the messages due within 64 ms of the
// page for those due 4 s to 4.4 min ahead, within 4 s for 4.4 min to 4.7
// h, within 4.4 min beyond), in one scan per call, plus one record read
// (page cache, batched) per message it passes. Without a topic that is what it
// returns (plus the messages due within listSlack after the page's last
// one); with a topic it also passes the other topics' messages due before
// the page's last one, at most MaxPendingPass per call: then the page may
// be short, with a cursor to go on from. Its latency adds the wait of
// the pacing, which bounds what listings cost ingest: calls run one at a
// time, and together take at most ListShare of one core. A call that took
// c (wall time) lets the next one start only c*(1-ListShare)/ListShare
// (3c) after it ended: a client listing back to back gets a page every
// 4c (20-60 ms for the first page of 12M messages in one coarse slot,
// which costs 4-16 ms), one listing once per 100 ms waits only for pages
// over 25 ms, and a pass over everything (the cluster's hand-off) takes 4
// times the pages' cost. The wheel's lock, held by a call for at most 1024 entries
// at a time, is held by listings at most ListShare of the time.
// ErrInvalid (wrapped) for a bad cursor; ErrClosed while closing (also
// while waiting its turn). Safe for concurrent use.
func (s *Scheduler) ListPending(q PendingQuery) (PendingPage, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultPendingLimit
	}
	limit = min(limit, MaxPendingLimit)
	after, err := parseCursor(q.Cursor)
	if err != nil {
		return PendingPage{}, err
	}
	if !s.enter() {
		return PendingPage{}, ErrClosed
	}
	defer s.leave()
	if !s.op.list.start(s.stop) {
		return PendingPage{}, ErrClosed
	}
	defer s.op.list.end()
	return s.listPending(q, limit, after), nil
}

// ListShare is the most of one core that ListPending's calls take
// together (see its Pacing).
const ListShare = 0.25

// listPacer runs ListPending's calls one at a time, each started no
// sooner than next. The zero value is ready (no call before).
type listPacer struct {
	mu    sync.Mutex
	next  time.Time // the earliest start of the next call
	began time.Time // of the call running
}

// start waits for the calls before to end and for next, and reports true,
// or false if stop is closed meanwhile (then it holds nothing). A true is
// followed by one end.
func (p *listPacer) start(stop <-chan struct{}) bool {
	p.mu.Lock()
	if d := time.Until(p.next); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-stop:
			p.mu.Unlock()
			return false
		}
	}
	select {
	case <-stop:
		p.mu.Unlock()
		return false
	default:
	}
	p.began = time.Now()
	return true
}

// end sets next by the cost of the call that ends, and lets the next one
// in.
func (p *listPacer) end() {
	now := time.Now()
	c := now.Sub(p.began)
	p.next = now.Add(time.Duration(float64(c) * (1 - ListShare) / ListShare))
	p.mu.Unlock()
}

// listPending is ListPending's page, after its checks.
func (s *Scheduler) listPending(q PendingQuery, limit int, after cursor) PendingPage {
	page := PendingPage{Messages: []PendingMessage{}}
	chunk := max(limit, 256)
	// The wheel is scanned in its order (wheel time); the listing is in
	// due order (unix ms), which differs from it by the jitter of the
	// conversion of a due time to wheel time (slack): a message found is
	// given out once the scan is slack past its due time.
	slack := s.opts.Tick + listSlack
	off := s.wheelDue(0) // the wheel time of unix 0
	msOf := func(w int64) int64 { return sat.Add(w, -off) / int64(time.Millisecond) }
	type cand struct {
		c cursor
		m PendingMessage
	}
	var (
		held   []cand // found, not yet given out
		ps     []journal.Pos
		keys   []Key
		retry  []int64
		reader journal.BatchReader
		passed int
	)
	// flush gives out what ps found, up to the wheel time from if more
	// follow; it reports whether the page is done.
	var from int64
	flush := func(more bool) bool {
		keys, retry = s.ix.listKeys(ps, keys, retry)
		s.j.ReadBatch(&reader, ps, func(i int, m journal.Message, err error) {
			if err != nil {
				return // moved or published meanwhile
			}
			c := cursor{max(m.Due, retry[i]), keys[i]}
			if !after.before(c) {
				return // on a page before
			}
			held = append(held, cand{c, PendingMessage{Key: FormatKey(keys[i]), ID: m.ID, Topic: m.Topic, DueMs: m.Due, Size: len(m.Body)}})
		})
		ps = ps[:0]
		slices.SortFunc(held, func(a, b cand) int {
			return cmp.Or(cmp.Compare(a.c.due, b.c.due), cmp.Compare(a.c.key.Seg, b.c.key.Seg), cmp.Compare(a.c.key.Ord, b.c.key.Ord))
		})
		safe := int64(math.MaxInt64) // given out below this due time
		if more {
			safe = msOf(sat.Add(from, -int64(slack)))
		}
		n := 0
		for ; n < len(held) && held[n].c.due < safe; n++ {
			c := held[n]
			if !after.before(c.c) {
				continue // found twice (moved during the scan)
			}
			after = c.c
			passed++
			if q.Topic == "" || c.m.Topic == q.Topic {
				page.Messages = append(page.Messages, c.m)
				if len(page.Messages) == limit {
					if n < len(held)-1 || more {
						page.Cursor = after.String()
					}
					return true
				}
			}
			if passed >= MaxPendingPass {
				page.Cursor = after.String()
				return true
			}
		}
		held = append(held[:0], held[n:]...)
		return false
	}
	// One scan, flushed every chunk entries (at a due time's end), so a
	// crowded stretch of the wheel is walked once per call.
	start := int64(math.MinInt64)
	if after.due != math.MinInt64 {
		start = sat.Add(s.wheelDue(after.due), -int64(slack))
	}
	done := false
	var last int64
	s.w.Scan(start, func(due int64, p journal.Pos) bool {
		if len(ps) >= chunk && due != last {
			if from = due; flush(true) {
				done = true
				return false
			}
		}
		last = due
		ps = append(ps, p)
		return true
	})
	if !done {
		flush(false)
	}
	return page
}
