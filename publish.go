package deferd

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqname"
	"github.com/deferd/deferd/journal"
)

// Pub is one publish: one or more bodies for a topic, all due at once.
type Pub struct {
	Topic  string   // nsqd's rules: 1..64 bytes of [.a-zA-Z0-9_-], optionally "#ephemeral"
	Bodies [][]byte // each 1..Options.MaxMsgSize bytes; copied before Publish returns
	// Delay is the wait from now; ignored when At is set. Neither: due now.
	Delay time.Duration
	// At is an absolute due time; one in the past is due now.
	At time.Time
	// ID, if set, names the message (Bodies must then hold one): while a
	// message with that id is pending, another Publish with it returns nil
	// and schedules nothing, and Cancel(ID) removes it. 1..128 bytes of
	// printable ASCII.
	ID string
}

// Publish schedules every body of p, or none of them, and returns once
// they are in the journal (written to the OS; to the disk too with
// Options.Fsync "always"): a nil error survives kill -9. A message already
// due and without an id goes straight to the sink instead (DirectPublish):
// nil then means the sink took it. The error is ErrInvalid (wrapped, with
// the reason), ErrOverCapacity, ErrTooManyTopics, ErrJournalUnavailable
// (also when a write or move of the same id under way did not end within
// a second: a stalled disk) or ErrClosed.
//
// Cost: one group commit of the journal (shared with concurrent calls),
// O(len(p.Bodies)) otherwise. Safe for concurrent use.
func (s *Scheduler) Publish(p Pub) error {
	due, err := s.checkPub(&p)
	if err != nil {
		return err
	}
	return s.publish(protoLib, p.Topic, p.Bodies, due, p.ID)
}

// checkPub validates p and returns its due time in unix ms, rounded up
// for a delay (never early) and down for none (already due).
func (s *Scheduler) checkPub(p *Pub) (int64, error) {
	invalid := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if !nsqname.ValidTopic(p.Topic) {
		return 0, invalid("topic %q", p.Topic)
	}
	if len(p.Bodies) == 0 {
		return 0, invalid("no body")
	}
	if p.ID != "" && (!ingest.ValidID(p.ID) || len(p.Bodies) != 1) {
		return 0, invalid("id %q (1..128 printable ASCII bytes, with one body)", p.ID)
	}
	var total int64
	for i, b := range p.Bodies {
		if len(b) == 0 || int64(len(b)) > s.opts.MaxMsgSize {
			return 0, invalid("body %d: %d bytes, want 1..%d", i, len(b), s.opts.MaxMsgSize)
		}
		total += int64(len(b))
	}
	now := s.clk.now()
	d := p.Delay
	if !p.At.IsZero() {
		d = p.At.Sub(now)
	} else if d < 0 {
		return 0, invalid("negative delay %v", d)
	}
	if d > s.opts.MaxDefer {
		return 0, invalid("delay %v beyond MaxDefer %v", d, s.opts.MaxDefer)
	}
	if d <= 0 {
		return now.UnixMilli(), nil
	}
	return ceilMs(now.Add(d).UnixNano()), nil
}

// publish is Publish after validation (ingest validated by nsqd's rules),
// of messages in by protocol proto.
// dueMs is in unix ms; bodies alias the caller's memory, valid during the
// call.
func (s *Scheduler) publish(proto ingestProto, topic string, bodies [][]byte, dueMs int64, id string) error {
	if !s.enter() {
		return ErrClosed
	}
	defer s.leave()
	if len(bodies) == 0 {
		return nil
	}
	if err := s.admitTopic(topic); err != nil { // before an id is looked up (Options.MaxTopics)
		return err
	}
	direct := false // bodies went to the sink first; what is left is journaled below
	if s.opts.DirectPublish && id == "" && dueMs <= s.clk.nowMs() {
		// The short path. Never early: the due time has passed. A client
		// id takes the journal path, where ids are tracked.
		taken := s.dq.publish(topic, bodies)
		if taken > 0 {
			s.publishedDirect(taken, dueMs, proto)
			s.ix.countDirect(topic, taken)
		}
		// What the sink did not take is journaled and retried by the
		// wheel like any due message.
		if bodies = bodies[taken:]; len(bodies) == 0 {
			return nil
		}
		direct = true
	}
	return s.journalAndSchedule(topic, bodies, dueMs, id, direct, proto)
}

// journalAndSchedule appends bodies to the journal, then puts them into
// the wheel: the long path.
func (s *Scheduler) journalAndSchedule(topic string, bodies [][]byte, dueMs int64, id string, direct bool, proto ingestProto) error {
	n := int64(len(bodies))
	var size int64 // in the unit of the pending-bytes counter: journal record bytes
	for _, b := range bodies {
		size += int64(journal.RecordLen(&journal.Message{ID: id, Topic: topic, Body: b, Accepted: 1}))
	}
	full := func() error {
		if s.pending.Load()+n > s.opts.MaxPending || s.pendingBytes.Load()+size > s.opts.MaxPendingBytes {
			return ErrOverCapacity
		}
		return nil
	}
	var reserved chan struct{} // closed when this request's write of its id ends
	if id == "" {
		if err := full(); err != nil {
			return err
		}
	} else {
		// An id already pending answers OK and schedules nothing, even at
		// capacity; two concurrent publishes with it schedule it once.
		var err error
		if reserved, err = s.ix.reserve(id, full); err != nil || reserved == nil {
			return err
		}
		// Whatever ends this call short of scheduling the message (an
		// error, a panic), the id is given up and its waiters go on.
		defer s.ix.release(id, reserved)
	}

	b := getPubBuf(len(bodies))
	defer putPubBuf(b)
	acc := s.clk.nowMs()
	for i, body := range bodies {
		b.msgs[i] = journal.Message{ID: id, Topic: topic, Due: dueMs, Body: body, Accepted: acc}
	}
	if err := s.j.Append(b.msgs, b.pos); err != nil {
		if errors.Is(err, journal.ErrClosed) {
			return ErrClosed
		}
		if s.j.Writable() { // read-only: the journal logs entering and leaving once
			s.logf("journal: append: %v", err)
		}
		return fmt.Errorf("%w: %w", ErrJournalUnavailable, err)
	}
	bytes := s.ix.add(s.wheelDue(dueMs), b.pos[:n], b.hs[:n], topic, id, reserved, proto)
	s.pending.Add(n)
	s.pendingBytes.Add(bytes)
	s.accepted.Add(uint64(n))
	if direct {
		s.directMissed.Add(uint64(n)) // counted once journaled, not when refused
	}
	return nil
}

// movedOverhead is the most bytes a moved record (compaction, Reschedule)
// of a message adds to its body: the frame of an accepted record with the
// longest id (ingest.MaxIDLen) and topic (64 bytes, nsqd's) and an
// accepted time, plus a moved record's old key and origin (8 bytes each).
// Options.Validate keeps MaxMsgSize + movedOverhead within
// journal.MaxRecordBytes, so every accepted message can be moved.
var movedOverhead = int64(journal.RecordLen(&journal.Message{
	ID: strings.Repeat("i", ingest.MaxIDLen), Topic: strings.Repeat("t", 64), Accepted: 1})) + 16

// publishedDirect counts n messages due at dueMs, in by protocol proto,
// that the sink took straight from Publish, and records their lateness.
func (s *Scheduler) publishedDirect(n int, dueMs int64, proto ingestProto) {
	late := s.clk.now().Sub(time.UnixMilli(dueMs)).Seconds()
	for range n {
		s.lateness.Update(late)
	}
	s.lateness.protos[proto].add(time.Duration(late*1e9), n)
	s.accepted.Add(uint64(n))
	s.published.Add(uint64(n))
	s.direct.Add(uint64(n))
}

// sendDirect is DirectPublish's send: one try of the sink (TryPublish
// where the sink has one). A panic counts as nothing taken: the bodies are
// journaled instead.
func (s *Scheduler) sendDirect(topic string, bodies [][]byte) (taken int) {
	defer func() {
		if v := recover(); v != nil {
			s.logf("BUG: direct publish panicked: %v (its messages are journaled instead)", v)
			taken = 0
		}
	}()
	if tp, ok := s.sink.(tryPublisher); ok {
		taken, _ = tp.TryPublish(topic, bodies)
	} else {
		taken, _ = s.sink.Publish(topic, bodies)
	}
	return min(max(taken, 0), len(bodies))
}
