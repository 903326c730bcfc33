package deferd

import (
	"encoding/binary"
	"slices"
	"time"

	"github.com/deferd/deferd/journal"
)

// Id retention (Options.IDRetention). When a message with a client id is
// published, a retention record goes to the journal before the id is given
// up: a message record of the reserved topic retainTopic (never a valid
// nsqd topic), id = the id, Due = the publish time (unix ms), Accepted =
// the message's, and a body holding its Key, due time, size, attempts and
// topic. It stays live until the window ends, so its segment is kept (and
// compaction moves it like a pending message); then it is marked done.
// Replay puts the live ones back into the index. While retained, a
// Publish with the id answers OK and schedules nothing, and Lookup reports
// the message published.
//
// Memory per retained id, measured (TestRetainedMemory): about 190 bytes
// plus the id's length, for the index entry (its map slot and
// retainedRef), its expiry queue entry and the key map's slot.

// retainTopic is the topic of retention records.
const retainTopic = "\x00retained"

// retainedRef is what the index keeps of a published, retained message.
type retainedRef struct {
	p         journal.Pos // its retention record
	key       Key
	topic     string
	due       int64 // unix ms
	accepted  int64
	published int64
	size      uint32
	attempts  uint32
}

// retExpiry is one entry of the expiry queue, in publish order.
type retExpiry struct {
	id        string
	published int64
}

// retainBody encodes r's fields beyond the record's own.
func retainBody(r *retainedRef) []byte {
	b := make([]byte, 0, 24+len(r.topic))
	b = binary.LittleEndian.AppendUint32(b, r.key.Seg)
	b = binary.LittleEndian.AppendUint32(b, r.key.Ord)
	b = binary.LittleEndian.AppendUint64(b, uint64(r.due))
	b = binary.LittleEndian.AppendUint32(b, r.size)
	b = binary.LittleEndian.AppendUint32(b, r.attempts)
	return append(b, r.topic...)
}

// parseRetained decodes a retention record; ok is false if malformed.
func parseRetained(p journal.Pos, m *journal.Message) (r retainedRef, ok bool) {
	b := m.Body
	if len(b) < 24 {
		return r, false
	}
	r = retainedRef{
		p:         p,
		key:       Key{Seg: binary.LittleEndian.Uint32(b), Ord: binary.LittleEndian.Uint32(b[4:])},
		due:       int64(binary.LittleEndian.Uint64(b[8:])),
		size:      binary.LittleEndian.Uint32(b[16:]),
		attempts:  binary.LittleEndian.Uint32(b[20:]),
		topic:     string(b[24:]),
		accepted:  m.Accepted,
		published: m.Due,
	}
	return r, true
}

// retainedLocked reports whether id is retained: published less than
// IDRetention ago.
func (x *index) retainedLocked(id string) bool {
	if len(x.retained) == 0 {
		return false
	}
	r, ok := x.retained[id]
	return ok && x.clk.nowMs() < r.published+x.retention.Milliseconds()
}

// retainLocked keeps r for id; a retention record it replaces is marked
// done by the next expiry.
func (x *index) retainLocked(id string, r retainedRef) {
	if old, ok := x.retained[id]; ok {
		x.retDead = append(x.retDead, old.p.Key())
		delete(x.retByKey, old.key)
	}
	x.retained[id] = r
	x.retByKey[r.key] = id
	x.retQ = append(x.retQ, retExpiry{id, r.published})
}

// retainedInfo is Lookup of a retained message, by id or key.
func (x *index) retainedInfo(ref Ref) (MessageInfo, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	id := ref.ID
	if id == "" {
		id = x.retByKey[ref.Key]
	}
	if id == "" || !x.retainedLocked(id) {
		return MessageInfo{}, false
	}
	r := x.retained[id]
	return MessageInfo{ID: id, Key: FormatKey(r.key), Topic: r.topic, State: StatePublished, DueMs: r.due,
		AcceptedMs: r.accepted, Size: int(r.size), Attempts: r.attempts}, true
}

// expire forgets the ids published at or before cutoff (unix ms) and
// returns the keys of their retention records (and of replaced ones), to
// mark done. O(expired).
func (x *index) expire(cutoff int64, keys []journal.Key) []journal.Key {
	x.mu.Lock()
	defer x.mu.Unlock()
	keys = append(keys, x.retDead...)
	x.retDead = x.retDead[:0]
	n := 0
	for ; n < len(x.retQ) && x.retQ[n].published <= cutoff; n++ {
		e := x.retQ[n]
		if r, ok := x.retained[e.id]; ok && r.published == e.published {
			keys = append(keys, r.p.Key())
			delete(x.retained, e.id)
			delete(x.retByKey, r.key)
		}
	}
	x.retQ = x.retQ[n:]
	if cap(x.retQ) > 1024 && len(x.retQ) < cap(x.retQ)/4 {
		x.retQ = slices.Clone(x.retQ) // let the queue's old array go
	}
	return keys
}

// replayRetainedLocked takes a retention record found by replay.
func (x *index) replayRetainedLocked(p journal.Pos, m *journal.Message, nowMs int64) {
	r, ok := parseRetained(p, m)
	if !ok || x.retention <= 0 || r.published+x.retention.Milliseconds() <= nowMs {
		x.retDead = append(x.retDead, p.Key())
		return
	}
	if old, ok := x.retained[m.ID]; ok && old.published > r.published {
		x.retDead = append(x.retDead, p.Key())
		return
	}
	x.retainLocked(m.ID, r)
}

// sortRetQLocked puts the expiry queue in publish order (replay finds
// moved records out of order).
func (x *index) sortRetQLocked() {
	slices.SortStableFunc(x.retQ, func(a, b retExpiry) int {
		switch {
		case a.published < b.published:
			return -1
		case a.published > b.published:
			return 1
		}
		return 0
	})
}

// retain journals the retention records of the messages with an id among
// msgs, which the sink took (in their order), and returns their entries
// for index.published; nil without retention or if the journal cannot
// take them (their ids are then not retained; logged). Cost: one group
// commit, for tasks with ids only.
func (s *Scheduler) retain(t *task, topic string, msgs []msgRef) []retainedRef {
	if s.opts.IDRetention <= 0 {
		return nil
	}
	n := 0
	for _, r := range msgs {
		if r.id != "" {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	now := s.clk.nowMs()
	ret := make([]retainedRef, 0, n)
	jm := make([]journal.Message, 0, n)
	ps := make([]journal.Pos, 0, n)
	for _, r := range msgs {
		if r.id == "" {
			continue
		}
		ps = append(ps, t.items[r.item].Value)
	}
	keys := s.ix.keysOf(ps, nil)
	atts := s.ix.attempts(ps, nil)
	k := 0
	for _, r := range msgs {
		if r.id == "" {
			continue
		}
		rr := retainedRef{key: keys[k], topic: topic, due: r.due, accepted: r.accepted, published: now,
			size: uint32(len(r.body)), attempts: atts[k] + 1}
		ret = append(ret, rr)
		jm = append(jm, journal.Message{ID: r.id, Topic: retainTopic, Due: now, Accepted: r.accepted, Body: retainBody(&rr)})
		k++
	}
	pos := make([]journal.Pos, len(jm))
	if err := s.j.Append(jm, pos); err != nil {
		s.logf("journal: retention records for %d ids: %v (not retained)", len(jm), err)
		return nil
	}
	for i := range ret {
		ret[i].p = pos[i]
	}
	return ret
}

// retentionLoop ends the retention of ids every second (or tenth of
// IDRetention). It returns when the Scheduler stops.
func (s *Scheduler) retentionLoop() {
	every := min(time.Second, max(s.opts.IDRetention/10, 10*time.Millisecond))
	t := time.NewTicker(every)
	defer t.Stop()
	var keys []journal.Key
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.expireRetained(keys[:0])
	}
}

// expireRetained marks done the retention records whose window ended.
func (s *Scheduler) expireRetained(keys []journal.Key) {
	s.op.retMu.Lock()
	defer s.op.retMu.Unlock()
	keys = s.ix.expire(s.clk.nowMs()-s.opts.IDRetention.Milliseconds(), keys)
	if len(keys) > 0 {
		if err := s.j.Done(journal.Published, keys); err != nil {
			s.logf("journal: end of id retention for %d records: %v", len(keys), err)
		}
	}
}

// moveRetained is compaction of a retention record at p: it is written
// anew at the head and the index follows it (unless it expired meanwhile).
// moved reports whether it was written anew.
func (s *Scheduler) moveRetained(p journal.Pos, m *journal.Message) (moved bool, err error) {
	s.op.retMu.Lock()
	defer s.op.retMu.Unlock()
	s.ix.mu.Lock()
	r, ok := s.ix.retained[m.ID]
	s.ix.mu.Unlock()
	if !ok || r.p != p {
		return false, nil // expired or replaced: the expiry marks it done
	}
	np, err := s.j.AppendMoved(p.Key(), m)
	if err != nil {
		return false, err
	}
	s.ix.mu.Lock()
	if r2, ok := s.ix.retained[m.ID]; ok && r2.p == p {
		r2.p = np
		s.ix.retained[m.ID] = r2
	} else {
		s.ix.retDead = append(s.ix.retDead, np.Key())
	}
	s.ix.mu.Unlock()
	return true, nil
}
