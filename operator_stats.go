package deferd

import (
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/deferd/deferd/journal"
)

// operatorState is the Scheduler's state for the operator API (Lookup,
// Reschedule, ListPending, id retention, the due-time figures).
type operatorState struct {
	rescheduled atomic.Uint64
	retMu       sync.Mutex // serialises retention expiry with compaction's moves of retention records
	list        listPacer  // paces ListPending (operator.go)
	sampleMu    sync.Mutex // serialises sampleRates

	mu    sync.Mutex
	ring  [rateWindow + 1]rateSnap // per-second counts, ring by second
	nring int                      // snapshots taken
	cache DueReport                // the last report, reused for a second
	at    time.Time
}

// rateWindow is the window of the per-second rates, in seconds.
const rateWindow = 60

// rateSnap is the cumulative counts at one second.
type rateSnap struct {
	at                  time.Time
	accepted, published uint64
	topics              map[string]topicCount2
}

// startOperator starts what the operator API runs in the background (the
// rate sampler, the end of id retention) and marks done the retention
// records replay found expired. New calls it once, after open.
func (s *Scheduler) startOperator() {
	s.expireRetained(nil)
	s.sampleRates()
	s.goLoop(func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.sampleRates()
			}
		}
	})
	s.goLoop(s.retentionLoop)
}

// sampleRates takes this second's snapshot of the counts. It drops the
// counts of a topic with nothing pending that stayed unchanged for a whole
// rate window (its rates are 0), here and in the snapshots, so topics that
// go quiet cost nothing after a minute and one that comes back is counted
// anew. O(topics), plus O(rateWindow) per topic dropped.
func (s *Scheduler) sampleRates() {
	s.op.sampleMu.Lock()
	defer s.op.sampleMu.Unlock()
	snap := rateSnap{at: time.Now(), accepted: s.accepted.Load(), published: s.published.Load()}
	var prev map[string]topicCount2 // the last snapshot
	s.op.mu.Lock()
	if s.op.nring > 0 {
		prev = s.op.ring[(s.op.nring-1)%len(s.op.ring)].topics
	}
	s.op.mu.Unlock()
	var dropped []string
	s.ix.mu.Lock()
	snap.topics = make(map[string]topicCount2, len(s.ix.counts))
	for t, c := range s.ix.counts {
		if p, ok := prev[t]; ok && p.accepted == c.accepted && p.published == c.published {
			c.quiet++
		} else {
			c.quiet = 0
		}
		if c.quiet > rateWindow && s.ix.topics[t] == 0 {
			delete(s.ix.counts, t)
			dropped = append(dropped, t)
			continue
		}
		snap.topics[t] = *c
	}
	s.ix.mu.Unlock()
	s.op.mu.Lock()
	for _, t := range dropped {
		for i := range s.op.ring {
			delete(s.op.ring[i].topics, t)
		}
	}
	s.op.ring[s.op.nring%len(s.op.ring)] = snap
	s.op.nring++
	s.op.mu.Unlock()
}

// DueBuckets counts pending messages by how far ahead they are due:
// within 1 s (and not overdue), 1-10 s, 10 s-1 min, 1-10 min, 10 min-1 h,
// 1 h-1 d, later.
type DueBuckets struct {
	S1    int64 `json:"1s"`
	S10   int64 `json:"10s"`
	M1    int64 `json:"1m"`
	M10   int64 `json:"10m"`
	H1    int64 `json:"1h"`
	D1    int64 `json:"1d"`
	Later int64 `json:"later"`
}

// dueBounds are DueBuckets' upper bounds in ms, and their names in
// /metrics.
var (
	dueBounds = [...]int64{1e3, 10e3, 60e3, 600e3, 3600e3, 86400e3}
	dueNames  = [...]string{"1s", "10s", "1m", "10m", "1h", "1d", "later"}
)

func (b *DueBuckets) slots() [7]*int64 {
	return [7]*int64{&b.S1, &b.S10, &b.M1, &b.M10, &b.H1, &b.D1, &b.Later}
}

// DueFigures are the due-time figures of a set of pending messages (all,
// or one topic's): Overdue is the messages past their due time and not
// yet published (waiting for a worker, being handed over, or waiting out
// a retry); OldestOverdueSeconds how long past due the oldest of them is
// (0 if none: the delivery lag to alert on); the rates are per second over
// the last minute (journaled and direct).
type DueFigures struct {
	Pending              int64      `json:"pending"`
	Overdue              int64      `json:"overdue"`
	OldestOverdueSeconds float64    `json:"oldest_overdue_seconds"`
	DueWithin            DueBuckets `json:"due_within"`
	AcceptedPerSecond    float64    `json:"accepted_per_second"`
	PublishedPerSecond   float64    `json:"published_per_second"`
}

// DueReport is the due-time figures in /stats ("due"): in all and per
// topic. Overdue and DueWithin are estimated from a uniform sample of
// Sampled pending messages (exact when Sampled is all of them): each
// topic's pending count, which is exact, is split by its share of the
// sample (a topic with no message in the sample shows all as Later... see
// Unsampled). OldestOverdueSeconds looks at the sample, the earliest
// messages in the wheel and the messages waiting out a retry.
type DueReport struct {
	DueFigures
	Sampled int `json:"sampled"`
	// Unsampled lists topics with pending messages none of which is in
	// the sample: their DueWithin and Overdue are zero (unknown).
	Unsampled []string              `json:"unsampled_topics,omitempty"`
	Topics    map[string]DueFigures `json:"topics"`
}

// dueSample is how many pending messages a DueReport samples.
const dueSample = 4096

// earliestLook is how many of the earliest wheel entries DueReport reads
// for the oldest overdue message.
const earliestLook = 64

// Due returns the due-time report, computed at most once a second (a
// cached copy otherwise). Cost when computed: a sample of up to 4096 wheel
// entries (O(4096) under the wheel lock), one batched read of their
// records (page cache, about 2 MB at 500 B messages), when something in
// the wheel may be due already a scan of its first 64 entries (see
// wheel.Scan: its first slot), O(retrying messages) under the index lock (at most
// 10,000 looked at), and O(topics). Safe for concurrent use.
func (s *Scheduler) Due() DueReport {
	s.op.mu.Lock()
	if !s.op.at.IsZero() && time.Since(s.op.at) < time.Second {
		r := s.op.cache
		s.op.mu.Unlock()
		return r
	}
	s.op.mu.Unlock()
	r := s.computeDue()
	s.op.mu.Lock()
	s.op.cache, s.op.at = r, time.Now()
	s.op.mu.Unlock()
	return r
}

func (s *Scheduler) computeDue() DueReport {
	now := s.clk.now()
	nowMs := now.UnixMilli()
	var ps []journal.Pos
	s.w.Sample(dueSample, rand.Uint64, func(p journal.Pos) { ps = append(ps, p) })
	wheelN := int64(s.w.Len())
	type tally struct {
		b       [8]int64 // overdue, then DueBuckets
		n       int64
		oldest  int64 // earliest overdue due, unix ms (0: none)
		pending int64
	}
	all := &tally{}
	byTopic := map[string]*tally{}
	get := func(topic string) *tally {
		t := byTopic[topic]
		if t == nil {
			t = &tally{}
			byTopic[topic] = t
		}
		return t
	}
	overdue := func(t *tally, due int64) {
		if due <= nowMs && (t.oldest == 0 || due < t.oldest) {
			t.oldest = due
		}
	}
	var reader journal.BatchReader
	s.j.ReadBatch(&reader, ps, func(_ int, m journal.Message, err error) {
		if err != nil {
			return
		}
		d := m.Due - nowMs
		k := 0
		if d > 0 {
			k = 1 + sort.Search(len(dueBounds), func(i int) bool { return d <= dueBounds[i] })
		}
		for _, t := range [2]*tally{all, get(m.Topic)} {
			t.b[k]++
			t.n++
			overdue(t, m.Due)
		}
	})
	// The earliest entries of the wheel (what goes out next, or waits),
	// if anything in it may be due already (else none is overdue but
	// those waiting out a retry, below): a scan of the wheel's first slot.
	var early []journal.Pos
	if next, ok := s.w.Next(); ok && next <= s.w.Now() {
		s.w.Scan(0, func(_ int64, p journal.Pos) bool {
			early = append(early, p)
			return len(early) < earliestLook
		})
	}
	s.j.ReadBatch(&reader, early, func(_ int, m journal.Message, err error) {
		if err == nil {
			overdue(all, m.Due)
			overdue(get(m.Topic), m.Due)
		}
	})
	// Messages waiting out a retry are overdue since their due time.
	s.ix.mu.Lock()
	looked := 0
	for _, b := range s.ix.backoffDue {
		if looked++; looked > 10_000 {
			break
		}
		if b.origDue != 0 {
			overdue(all, b.origDue)
			if b.topic != "" {
				overdue(get(b.topic), b.origDue)
			}
		}
	}
	counts := make(map[string]int64, len(s.ix.topics))
	for t, n := range s.ix.topics {
		counts[t] = n
	}
	s.ix.mu.Unlock()

	rep := DueReport{Sampled: len(ps), Topics: make(map[string]DueFigures, len(counts))}
	fill := func(f *DueFigures, t *tally, pending, extraOverdue int64) {
		f.Pending = pending
		if t != nil && t.n > 0 {
			scaled := pending - extraOverdue
			f.Overdue = extraOverdue + t.b[0]*scaled/t.n
			for i, p := range f.DueWithin.slots() {
				*p = t.b[i+1] * scaled / t.n
			}
		} else {
			f.Overdue = extraOverdue
		}
		if t != nil && t.oldest != 0 {
			f.OldestOverdueSeconds = float64(nowMs-t.oldest) / 1e3
		}
	}
	pending := s.pending.Load()
	// Out of the wheel (in a publish task or on its way to one) is overdue.
	outOfWheel := max(pending-wheelN, 0)
	fill(&rep.DueFigures, all, pending, outOfWheel)
	acc, pub, tacc, tpub := s.rates(now)
	rep.AcceptedPerSecond, rep.PublishedPerSecond = acc, pub
	for topic, n := range counts {
		var f DueFigures
		t := byTopic[topic]
		if t == nil || t.n == 0 {
			rep.Unsampled = append(rep.Unsampled, topic)
		}
		fill(&f, t, n, 0)
		f.AcceptedPerSecond, f.PublishedPerSecond = tacc[topic], tpub[topic]
		rep.Topics[topic] = f
	}
	for topic, r := range tacc { // topics with traffic but none pending
		if _, ok := rep.Topics[topic]; !ok && (r > 0 || tpub[topic] > 0) {
			rep.Topics[topic] = DueFigures{AcceptedPerSecond: r, PublishedPerSecond: tpub[topic]}
		}
	}
	slices.Sort(rep.Unsampled)
	return rep
}

// rates are the accepted and published rates per second over the last
// minute (or since start), in all and per topic. O(topics).
func (s *Scheduler) rates(now time.Time) (acc, pub float64, tacc, tpub map[string]float64) {
	s.op.mu.Lock()
	defer s.op.mu.Unlock()
	tacc, tpub = map[string]float64{}, map[string]float64{}
	if s.op.nring == 0 {
		return
	}
	newest := s.op.ring[(s.op.nring-1)%len(s.op.ring)]
	oldIdx := 0
	if s.op.nring > len(s.op.ring) {
		oldIdx = s.op.nring % len(s.op.ring)
	}
	oldest := s.op.ring[oldIdx]
	dt := newest.at.Sub(oldest.at).Seconds()
	if dt <= 0 {
		return
	}
	acc = float64(newest.accepted-oldest.accepted) / dt
	pub = float64(newest.published-oldest.published) / dt
	for t, c := range newest.topics {
		o := oldest.topics[t]
		tacc[t] = float64(c.accepted-o.accepted) / dt
		tpub[t] = float64(c.published-o.published) / dt
	}
	return
}

// writeDueMetrics writes the due-time figures (Due) to /metrics.
func (s *Scheduler) writeDueMetrics(w io.Writer) {
	r := s.Due()
	metrics.WriteGaugeUint64(w, "deferd_overdue_messages", uint64(max(r.Overdue, 0)))
	fmt.Fprintf(w, "deferd_oldest_overdue_seconds %g\n", r.OldestOverdueSeconds)
	fmt.Fprintf(w, "deferd_accepted_per_second %g\n", r.AcceptedPerSecond)
	fmt.Fprintf(w, "deferd_published_per_second %g\n", r.PublishedPerSecond)
	for i, p := range r.DueWithin.slots() {
		fmt.Fprintf(w, "deferd_pending_due_within{within=%q} %d\n", dueNames[i], *p)
	}
	metrics.WriteCounterUint64(w, "deferd_rescheduled_total", s.op.rescheduled.Load())
	topics := make([]string, 0, len(r.Topics))
	for t := range r.Topics {
		topics = append(topics, t)
	}
	slices.Sort(topics)
	for _, t := range topics {
		f := r.Topics[t]
		fmt.Fprintf(w, "deferd_topic_overdue_messages{topic=%q} %d\n", t, f.Overdue)
		fmt.Fprintf(w, "deferd_topic_oldest_overdue_seconds{topic=%q} %g\n", t, f.OldestOverdueSeconds)
		fmt.Fprintf(w, "deferd_topic_accepted_per_second{topic=%q} %g\n", t, f.AcceptedPerSecond)
		fmt.Fprintf(w, "deferd_topic_published_per_second{topic=%q} %g\n", t, f.PublishedPerSecond)
		for i, p := range f.DueWithin.slots() {
			fmt.Fprintf(w, "deferd_topic_pending_due_within{topic=%q,within=%q} %d\n", t, dueNames[i], *p)
		}
	}
}

func init() { maps.Copy(help, dueHelp) }

// dueHelp is the # HELP text of the due-time families.
var dueHelp = map[string]string{
	"deferd_overdue_messages":             "Pending messages past their due time, not yet published (estimated from a sample of pending messages, plus those in publish tasks).",
	"deferd_oldest_overdue_seconds":       "How long past due the oldest unpublished message is (0 if none): the delivery lag.",
	"deferd_accepted_per_second":          "Messages accepted per second over the last minute.",
	"deferd_published_per_second":         "Messages published per second over the last minute.",
	"deferd_pending_due_within":           "Pending messages by how far ahead they are due (disjoint ranges up to the bound; estimated from a sample).",
	"deferd_rescheduled_total":            "Messages moved to a new due time by /reschedule.",
	"deferd_topic_overdue_messages":       "Per topic: pending messages past their due time (estimated from a sample).",
	"deferd_topic_oldest_overdue_seconds": "Per topic: how long past due its oldest unpublished message seen is.",
	"deferd_topic_accepted_per_second":    "Per topic: messages accepted per second over the last minute.",
	"deferd_topic_published_per_second":   "Per topic: messages published per second over the last minute.",
	"deferd_topic_pending_due_within":     "Per topic: pending messages by how far ahead they are due (estimated from a sample).",
}
