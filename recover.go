package deferd

import (
	"time"

	"github.com/deferd/deferd/journal"
)

// replay replays journal j into the index and returns the journal's
// report and the messages and record bytes it found pending. Only New calls
// it, before anything else runs, so it holds the lock throughout and reads
// the clocks once: per record it costs one wheel Add and a few slice and
// map updates.
func (x *index) replay(j *journal.Journal) (rep journal.Report, n, bytes int64, err error) {
	wall := x.clk.nowNs() // first: a pause before the wheel read makes messages late, not early
	mono := x.w.Now()
	var (
		lastSeg = ^uint32(0)
		st      *segTable
		topic   string
		topicN  int64
	)
	x.mu.Lock()
	defer x.mu.Unlock()
	nowMs := wall / int64(time.Millisecond)
	rep, err = j.Recover(func(p journal.Pos, m *journal.Message) error {
		if m.Topic == retainTopic {
			x.replayRetainedLocked(p, m, nowMs)
			return nil
		}
		if m.Origin != (journal.Key{}) {
			x.origOf[p.Key()] = m.Origin
			x.curOf[m.Origin] = p
		}
		h := x.w.Add(wheelTime(mono, wall, m.Due), p)
		if p.Seg != lastSeg {
			lastSeg, st = p.Seg, x.segTableLocked(p.Seg)
		}
		st.set(p.Ord, h)
		if m.ID != "" {
			x.ids[m.ID] = idRef{p, m.Topic, true}
		}
		if m.Topic != topic {
			x.topics[topic] += topicN
			topic, topicN = m.Topic, 0
		}
		topicN++
		n++
		bytes += int64(p.Len)
		return nil
	})
	if topicN > 0 {
		x.topics[topic] += topicN
	}
	delete(x.topics, "")
	x.sortRetQLocked()
	return rep, n, bytes, err
}
