package deferd

import (
	"sync"
	"time"
)

// topicsRefresh is how often admitTopic re-reads the embedded nsqd's
// topics (at most; only for a publish to a topic new to deferd).
const topicsRefresh = 100 * time.Millisecond

// topicsHeld is what admitTopic keeps between calls: the embedded nsqd's
// topics as of at, plus those admitted since. Its zero value is ready;
// mu guards it.
type topicsHeld struct {
	mu   sync.Mutex
	nsqd map[string]struct{}
	at   time.Time
}

// admitTopic returns ErrTooManyTopics if a publish to topic would make the
// topics deferd holds more than Options.MaxTopics; nil otherwise. The
// topics held are those with messages pending in the index and, with the
// embedded nsqd, those that nsqd holds (it keeps a topic until it is
// deleted there: its memory is deferd's). A topic already held always
// passes.
//
// Cost: O(1) for a held topic (a map look-up under the index's lock and,
// with the embedded nsqd, under nsqd's); for a new one O(topics held),
// plus nsqd's stats (O(its topics and channels)) every topicsRefresh. The
// count is checked, not reserved: concurrent publishes of new topics can
// pass the cap by as many as run at once. Safe for concurrent use.
func (s *Scheduler) admitTopic(topic string) error {
	if s.ix.hasTopic(topic) {
		return nil
	}
	if s.node != nil {
		if _, err := s.node.NSQD.GetExistingTopic(topic); err == nil {
			return nil
		}
	}
	h := &s.topics
	h.mu.Lock()
	defer h.mu.Unlock()
	var held int
	if s.node == nil {
		held = s.ix.topicsNotIn(nil)
	} else {
		if now := time.Now(); h.nsqd == nil || now.Sub(h.at) >= topicsRefresh {
			h.nsqd, h.at = s.nsqdTopics(), now
		}
		if _, ok := h.nsqd[topic]; ok { // admitted since the refresh
			return nil
		}
		held = len(h.nsqd) + s.ix.topicsNotIn(h.nsqd)
	}
	if held >= s.opts.MaxTopics {
		return ErrTooManyTopics
	}
	if s.node != nil {
		// Counted from now on: a burst of new topics within one refresh
		// is not let through on a stale count.
		h.nsqd[topic] = struct{}{}
	}
	return nil
}

// nsqdTopics is the set of the embedded nsqd's topics.
func (s *Scheduler) nsqdTopics() map[string]struct{} {
	st := s.node.NSQD.GetStats("", "", false)
	m := make(map[string]struct{}, len(st.Topics))
	for _, t := range st.Topics {
		m[t.TopicName] = struct{}{}
	}
	return m
}

// hasTopic reports whether topic has messages pending. O(1).
func (x *index) hasTopic(topic string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.topics[topic] > 0
}

// topicsNotIn counts the topics with messages pending that are not in
// except (nil: all of them). O(1) for nil, else O(pending topics).
func (x *index) topicsNotIn(except map[string]struct{}) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	if except == nil {
		return len(x.topics)
	}
	n := 0
	for t := range x.topics {
		if _, ok := except[t]; !ok {
			n++
		}
	}
	return n
}
