package deferd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

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
