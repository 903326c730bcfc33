package deferd

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestOperatorModelFakeClock runs a Scheduler on a fake clock through
// random interleavings of publishes (with and without id, a reused id,
// several bodies, due now, after a delay, at a time past or ahead),
// reschedules (later, earlier, run now), cancels and lookups by id and by
// key, listings in pages with and without a topic, compactions, and
// advances of the clock by random amounts (to just before a due time and
// onto it, and past the id retention), checking after each step against a
// model: every message fires exactly once, at the first poll at or after
// its latest due time and never before it; nothing fires after its cancel
// succeeded or when its id was a duplicate; a listing is every pending
// message exactly once, in due order. Each seed is deterministic;
// DEFERD_MODEL_SEED=n runs seed n alone.
func TestOperatorModelFakeClock(t *testing.T) {
	seeds, steps := []uint64{1, 2, 3, 4, 5, 6, 7, 8}, 700
	if testing.Short() {
		seeds, steps = seeds[:3], 300
	}
	if v := os.Getenv("DEFERD_MODEL_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seeds = []uint64{n}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { runFakeModel(t, seed, steps) })
	}
}

// The states of a fake-model message.
const (
	fmPending   = iota
	fmFired     // handed to the sink, once, at firedNs
	fmCancelled // a cancel returned nil: must never fire
	fmDropped   // published with an id pending or retained: never scheduled
)

// fmMsg is the model of one body published.
type fmMsg struct {
	body, id, topic string
	key             Key   // zero: never journaled (direct or dropped)
	due             int64 // the latest due time acknowledged, unix ms
	state           int
	firedNs         int64
}

// name is the start of msg's body, unique: "m<step>.<i>".
func (msg *fmMsg) name() string { return msg.body[:strings.IndexByte(msg.body, '-')] }

// fakeModel is the model, the Scheduler under test and the random source.
type fakeModel struct {
	t         *testing.T
	seed      uint64
	step      int
	rng       *rand.Rand
	s         *Scheduler
	c         *fakeClock
	f         *fakeSink
	direct    bool
	retention time.Duration
	msgs      []*fmMsg
	byID      map[string]*fmMsg // the latest message published with an id
	byKey     map[Key]*fmMsg
	fired     int // deliveries the model expects so far
}

func runFakeModel(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	m := &fakeModel{t: t, seed: seed, rng: rng, direct: seed%2 == 0, retention: 5 * time.Minute,
		byID: map[string]*fmMsg{}, byKey: map[Key]*fmMsg{}}
	taskSize := []int{1, 3, 1000}[rng.IntN(3)]
	m.s, m.c, m.f = fakeScheduler(t, func(o *Options) {
		o.DirectPublish = m.direct
		o.IDRetention = m.retention
		o.TaskSize = taskSize
		o.PoolSize = 4
		o.SegmentSize = 4 << 10 // compactions have segments to move messages out of
	})
	for m.step = 0; m.step < steps; m.step++ {
		switch op := rng.IntN(100); {
		case op < 30:
			m.publish()
		case op < 45:
			m.reschedule()
		case op < 55:
			m.cancel()
		case op < 68:
			m.lookup()
		case op < 76:
			m.list()
		case op < 79:
			m.compact()
		default:
			m.advanceRandom()
		}
		m.checkCounts()
	}
	m.advance(2 * time.Hour) // past every due time: everything pending fires
	for _, msg := range m.msgs {
		if msg.state == fmPending {
			m.fatalf("%s (due %d) still pending at the end, now %d", msg.name(), msg.due, m.c.nowMs())
		}
	}
	if e := m.s.early.Load(); e != 0 {
		m.fatalf("the scheduler counted %d messages early", e)
	}
	var states [4]int
	for _, msg := range m.msgs {
		states[msg.state]++
	}
	t.Logf("seed %d: %d messages: %d fired (%d direct), %d cancelled, %d dropped as duplicates; %d rescheduled, %d moved by compaction, %d retried",
		seed, len(m.msgs), states[fmFired], m.s.direct.Load(), states[fmCancelled], states[fmDropped],
		m.s.op.rescheduled.Load(), m.s.moved.Load(), m.s.retried.Load())
}

func (m *fakeModel) fatalf(format string, args ...any) {
	m.t.Helper()
	m.t.Fatalf("seed %d step %d (DEFERD_MODEL_SEED=%d to rerun): %s", m.seed, m.step, m.seed, fmt.Sprintf(format, args...))
}

// publish publishes one to three bodies (one with an id) due now, after a
// delay or at a time, and learns their keys.
func (m *fakeModel) publish() {
	rng, now := m.rng, m.c.time()
	p := Pub{Topic: []string{"a", "b", "c"}[rng.IntN(3)]}
	switch rng.IntN(4) {
	case 0:
		p.ID = fmt.Sprint("id-", m.step)
	case 1:
		if old := m.pickMsg(); old != nil && old.id != "" {
			p.ID = old.id // pending, retained or forgotten: the model says which
		}
	}
	n := 1
	if p.ID == "" {
		n = 1 + rng.IntN(3)
	}
	var due int64
	switch rng.IntN(5) {
	case 0: // due now
		due = m.c.nowMs()
	case 1:
		p.Delay = time.Duration(1 + rng.Int64N(int64(3*time.Second)))
		due = ceilMs(now.UnixNano() + int64(p.Delay))
	case 2:
		p.At = now.Add(-time.Duration(rng.Int64N(int64(time.Minute))))
		due = m.c.nowMs()
	case 3:
		p.At = now.Add(time.Duration(1 + rng.Int64N(int64(10*time.Minute))))
		due = ceilMs(p.At.UnixNano())
	default:
		p.Delay = time.Hour
		due = ceilMs(now.UnixNano() + int64(p.Delay))
	}
	var fresh []*fmMsg
	for range n {
		body := fmt.Sprintf("m%d.%d-%s", m.step, len(fresh), strings.Repeat("x", rng.IntN(300)))
		msg := &fmMsg{body: body, id: p.ID, topic: p.Topic, due: due}
		p.Bodies = append(p.Bodies, []byte(body))
		fresh = append(fresh, msg)
		m.msgs = append(m.msgs, msg)
	}
	if err := m.s.Publish(p); err != nil {
		m.fatalf("publish of %d bodies to %s, id %q, delay %v, at %v: %v", len(p.Bodies), p.Topic, p.ID, p.Delay, p.At, err)
	}
	switch {
	case p.ID != "" && m.idTaken(p.ID):
		fresh[0].state = fmDropped
	case m.direct && p.ID == "" && due <= m.c.nowMs():
		for _, msg := range fresh { // the sink took them before Publish returned
			msg.state, msg.firedNs = fmFired, m.c.WallNs()
			m.fired++
		}
	default:
		if p.ID != "" {
			m.byID[p.ID] = fresh[0]
		}
		m.learnKeys(fresh)
	}
	m.checkDeliveries()
}

// idTaken reports whether a Publish with id now schedules nothing: a
// message with it is pending, or was published less than the retention
// ago.
func (m *fakeModel) idTaken(id string) bool {
	old := m.byID[id]
	return old != nil && (old.state == fmPending || m.retained(old))
}

// retained reports whether msg is published and its id still retained.
func (m *fakeModel) retained(msg *fmMsg) bool {
	return msg.state == fmFired && msg.id != "" && m.byID[msg.id] == msg &&
		m.c.nowMs() < msg.firedNs/int64(time.Millisecond)+m.retention.Milliseconds()
}

// learnKeys finds the keys of fresh, just published: by id, or as the
// pending keys at their due time the model does not know yet (a listing
// from a cursor at that due time), told apart by their bodies.
func (m *fakeModel) learnKeys(fresh []*fmMsg) {
	due := fresh[0].due
	if fresh[0].id != "" {
		info, err := m.s.Lookup(Ref{ID: fresh[0].id}, false)
		if err != nil {
			m.fatalf("lookup of %s just published: %v", fresh[0].id, err)
		}
		fresh[0].key = mustKey(m.t, info.Key)
		m.byKey[fresh[0].key] = fresh[0]
		return
	}
	var unknown []Key
	cur := cursor{due - 1, Key{Seg: math.MaxUint32, Ord: math.MaxUint32}}.String() // the page before due
	for cur != "" {
		page, err := m.s.ListPending(PendingQuery{Limit: 1 + m.rng.IntN(MaxPendingLimit), Cursor: cur})
		if err != nil {
			m.fatalf("list from %s: %v", cur, err)
		}
		cur = page.Cursor
		for _, pm := range page.Messages {
			if pm.DueMs != due {
				cur = ""
				break
			}
			if k := mustKey(m.t, pm.Key); m.byKey[k] == nil {
				unknown = append(unknown, k)
			}
		}
	}
	if len(unknown) != len(fresh) {
		m.fatalf("%d unknown keys due at %d, want the %d just published", len(unknown), due, len(fresh))
	}
	for _, k := range unknown {
		info, err := m.s.Lookup(Ref{Key: k}, true)
		if err != nil {
			m.fatalf("lookup of %s: %v", FormatKey(k), err)
		}
		i := slices.IndexFunc(fresh, func(f *fmMsg) bool { return f.body == string(info.Body) })
		if i < 0 || fresh[i].key != (Key{}) {
			m.fatalf("key %s holds %.20q, not one of those just published", FormatKey(k), info.Body)
		}
		fresh[i].key = k
		m.byKey[k] = fresh[i]
	}
}

// pickMsg is a random message of the model, nil if none.
func (m *fakeModel) pickMsg() *fmMsg {
	if len(m.msgs) == 0 {
		return nil
	}
	return m.msgs[m.rng.IntN(len(m.msgs))]
}

// pickRef picks a journaled message, three times in four a pending one,
// and a Ref to it: by id when its id names it (half the time), else by
// key.
func (m *fakeModel) pickRef() (*fmMsg, Ref, bool) {
	msg := m.pickMsg()
	if m.rng.IntN(4) > 0 {
		var pending []*fmMsg
		for _, p := range m.msgs {
			if p.state == fmPending {
				pending = append(pending, p)
			}
		}
		if len(pending) > 0 {
			msg = pending[m.rng.IntN(len(pending))]
		}
	}
	if msg == nil || msg.key == (Key{}) {
		return nil, Ref{}, false
	}
	if msg.id != "" && m.byID[msg.id] == msg && m.rng.IntN(2) == 0 {
		return msg, Ref{ID: msg.id}, true
	}
	return msg, Ref{Key: msg.key}, true
}

// reschedule moves a message later, earlier, into the past or to now.
func (m *fakeModel) reschedule() {
	msg, ref, ok := m.pickRef()
	if !ok {
		return
	}
	now := m.c.time()
	var at time.Time
	switch m.rng.IntN(4) {
	case 0: // run now
	case 1:
		at = now.Add(-time.Duration(m.rng.Int64N(int64(time.Hour))))
	case 2:
		at = now.Add(time.Duration(m.rng.Int64N(int64(3 * time.Second))))
	default:
		at = now.Add(time.Duration(m.rng.Int64N(int64(time.Hour))))
	}
	err := m.s.Reschedule(ref, at)
	switch {
	case msg.state == fmPending && err == nil:
		msg.due = m.c.nowMs()
		if at.After(now) {
			msg.due = ceilMs(at.UnixNano())
		}
	case msg.state != fmPending && errors.Is(err, ErrNotFound):
	default:
		m.fatalf("reschedule of %s (%+v, state %d) to %v: %v", msg.name(), ref, msg.state, at, err)
	}
}

// cancel cancels a message by id or key.
func (m *fakeModel) cancel() {
	msg, ref, ok := m.pickRef()
	if !ok {
		return
	}
	switch err := m.s.CancelRef(ref); {
	case msg.state == fmPending && err == nil:
		msg.state = fmCancelled
	case msg.state != fmPending && errors.Is(err, ErrNotFound):
	default:
		m.fatalf("cancel of %s (%+v, state %d): %v", msg.name(), ref, msg.state, err)
	}
}

// lookup checks what Lookup reports of a message against the model.
func (m *fakeModel) lookup() {
	msg, ref, ok := m.pickRef()
	if !ok {
		return
	}
	info, err := m.s.Lookup(ref, true)
	want := MessageInfo{ID: msg.id, Key: FormatKey(msg.key), Topic: msg.topic, DueMs: msg.due, Size: len(msg.body)}
	switch {
	case msg.state == fmPending:
		want.State, want.Body = StatePending, []byte(msg.body)
	case m.retained(msg):
		want.State = StatePublished // no body: the record is gone
	default:
		if !errors.Is(err, ErrNotFound) {
			m.fatalf("lookup of %s (%+v, state %d): %+v, %v; want not found", msg.name(), ref, msg.state, info, err)
		}
		return
	}
	if err != nil {
		m.fatalf("lookup of %s (%+v): %v; want %s", msg.name(), ref, err, want.State)
	}
	got := info
	got.AcceptedMs, got.Attempts, got.Truncated = 0, 0, nil
	if got.ID != want.ID || got.Key != want.Key || got.Topic != want.Topic || got.State != want.State ||
		got.DueMs != want.DueMs || got.Size != want.Size || string(got.Body) != string(want.Body) || info.AcceptedMs == 0 {
		m.fatalf("lookup of %s (%+v): %+v, want %+v", msg.name(), ref, info, want)
	}
}

// list pages through ListPending, of all topics or one, and checks the
// pages are exactly the model's pending messages in due order.
func (m *fakeModel) list() {
	topic := ""
	if m.rng.IntN(2) == 0 {
		topic = []string{"a", "b", "c"}[m.rng.IntN(3)]
	}
	var want []*fmMsg
	for _, msg := range m.msgs {
		if msg.state == fmPending && (topic == "" || msg.topic == topic) {
			want = append(want, msg)
		}
	}
	slices.SortFunc(want, func(a, b *fmMsg) int {
		return cmp.Or(cmp.Compare(a.due, b.due), cmp.Compare(a.key.Seg, b.key.Seg), cmp.Compare(a.key.Ord, b.key.Ord))
	})
	limit := 1 + m.rng.IntN(25)
	var got []PendingMessage
	for cur, pages := "", 0; ; pages++ {
		page, err := m.s.ListPending(PendingQuery{Topic: topic, Limit: limit, Cursor: cur})
		if err != nil || len(page.Messages) > limit || pages > len(want)+1 {
			m.fatalf("list %q page %d (limit %d): %d messages, %v", topic, pages, limit, len(page.Messages), err)
		}
		got = append(got, page.Messages...)
		if cur = page.Cursor; cur == "" {
			break
		}
	}
	for i := range max(len(got), len(want)) {
		if i >= len(got) || i >= len(want) {
			m.fatalf("list %q (limit %d): %d messages, want %d", topic, limit, len(got), len(want))
		}
		g, w := got[i], want[i]
		if g.Key != FormatKey(w.key) || g.DueMs != w.due || g.Topic != w.topic || g.ID != w.id || g.Size != len(w.body) {
			m.fatalf("list %q (limit %d) #%d: %+v, want %s due %d (%s)", topic, limit, i, g, FormatKey(w.key), w.due, w.name())
		}
	}
}

// compact runs compaction passes; the model does not change.
func (m *fakeModel) compact() {
	if _, err := m.s.compactAll(); err != nil {
		m.fatalf("compact: %v", err)
	}
}

// advanceRandom moves the clock by a random amount: none, under a tick,
// up to seconds, onto the next due time in two steps (a nanosecond short
// of it, then onto it), or past the id retention.
func (m *fakeModel) advanceRandom() {
	switch m.rng.IntN(6) {
	case 0:
		m.advance(0)
	case 1:
		m.advance(time.Duration(m.rng.Int64N(int64(2 * time.Millisecond))))
	case 2, 3:
		m.advance(time.Duration(m.rng.Int64N(int64(3 * time.Second))))
	case 4:
		next := int64(-1)
		for _, msg := range m.msgs {
			if msg.state == fmPending && msg.due > m.c.nowMs() && (next < 0 || msg.due < next) {
				next = msg.due
			}
		}
		if next < 0 {
			return
		}
		d := time.Duration(next*int64(time.Millisecond) - m.c.WallNs())
		m.advance(d - 1)
		m.advance(1)
	default:
		m.advance(m.retention + time.Duration(m.rng.Int64N(int64(time.Minute))))
	}
}

// advance moves the clock by d and polls: the model's pending messages due
// by now fire at now.
func (m *fakeModel) advance(d time.Duration) {
	m.s.advance(d)
	nowMs := m.c.nowMs()
	for _, msg := range m.msgs {
		if msg.state == fmPending && msg.due <= nowMs {
			msg.state, msg.firedNs = fmFired, m.c.WallNs()
			m.fired++
		}
	}
	m.checkDeliveries()
}

// checkDeliveries checks every message's deliveries against the model:
// once at its firing time, no earlier than its due time, or never.
func (m *fakeModel) checkDeliveries() {
	for _, msg := range m.msgs {
		ts := m.f.times(msg.body)
		switch {
		case msg.state == fmFired && (len(ts) != 1 || ts[0] != msg.firedNs):
			m.fatalf("%s (due %d) delivered at %v, want once at %d", msg.name(), msg.due, ts, msg.firedNs)
		case msg.state == fmFired && ts[0] < msg.due*int64(time.Millisecond):
			m.fatalf("%s delivered at %d ns, before its due %d ms", msg.name(), ts[0], msg.due)
		case msg.state != fmFired && len(ts) > 0:
			m.fatalf("%s (state %d, due %d, now %d) delivered at %v", msg.name(), msg.state, msg.due, m.c.nowMs(), ts)
		}
	}
}

// checkCounts checks the total of deliveries and the pending count, after
// every step.
func (m *fakeModel) checkCounts() {
	m.f.mu.Lock()
	n := 0
	for _, ts := range m.f.got {
		n += len(ts)
	}
	m.f.mu.Unlock()
	pending := 0
	for _, msg := range m.msgs {
		if msg.state == fmPending {
			pending++
		}
	}
	if n != m.fired || m.s.Pending() != int64(pending) {
		m.fatalf("%d deliveries and %d pending, model %d and %d", n, m.s.Pending(), m.fired, pending)
	}
}
