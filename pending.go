package deferd

// ListPending: the pending set in due order, a page at a time, paced so
// that listings take a bounded share of a core.

import (
	"cmp"
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
