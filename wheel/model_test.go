package wheel

import (
	"container/heap"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
	"time"
)

// refEntry is the reference model's view of one Add.
type refEntry struct {
	h      Handle
	due    int64
	fireAt int64 // origin + ceil((due-origin)/tick)*tick; valid if !never
	item   int64 // the Item.Due expected (itemDue at Add)
	never  bool  // fireAt overflows int64: no Poll can reach it
	done   bool  // fired or cancelled
	idx    int   // heap index
}

// refHeap orders pending model entries by fireAt (never last).
type refHeap []*refEntry

func (h refHeap) Len() int { return len(h) }
func (h refHeap) Less(i, j int) bool {
	if h[i].never != h[j].never {
		return !h[i].never
	}
	return h[i].fireAt < h[j].fireAt
}
func (h refHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i]; h[i].idx = i; h[j].idx = j }
func (h *refHeap) Push(x any)   { e := x.(*refEntry); e.idx = len(*h); *h = append(*h, e) }
func (h *refHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// wheelAPI is what the model drives: a *Wheel or a *Sharded.
type wheelAPI interface {
	Add(due int64, v int64) Handle
	AddBatch(due int64, values []int64, hs []Handle)
	Cancel(h Handle) bool
	Poll(now int64, fn func(*Batch[int64]))
	Len() int
	Next() (int64, bool)
}

// spread is a Sharded wheel whose Adds go to every shard in turn: from the
// model's one goroutine, Sharded's own pick would use a single shard.
type spread struct {
	*Sharded[int64]
	next uint32
}

func (w *spread) shard() uint32 {
	w.next++
	return w.next % uint32(w.Shards())
}

func (w *spread) Add(due int64, v int64) Handle { return w.addOn(w.shard(), due, v) }

func (w *spread) AddBatch(due int64, values []int64, hs []Handle) {
	if !w.addBatchOn(w.shard(), due, values, hs) {
		panic("full")
	}
}

// harness drives a Wheel (or a Sharded wheel) and the reference model side
// by side.
type harness struct {
	tb      testing.TB
	clock   *fakeClock
	w       wheelAPI
	tick    int64
	origin  int64
	pending refHeap
	all     map[Handle]*refEntry
	handles []Handle // every handle ever returned, for Cancel picks
	fired   int
	lastNow int64 // time of the last Poll
}

func newHarness(tb testing.TB, tick time.Duration, start int64) *harness {
	return newShardedHarness(tb, tick, start, 0)
}

// newShardedHarness drives a Sharded wheel of the given shards (0: a plain
// Wheel).
func newShardedHarness(tb testing.TB, tick time.Duration, start int64, shards int) *harness {
	c := &fakeClock{}
	c.ns.Store(start)
	var w wheelAPI = New[int64](Options{Tick: tick, Clock: c})
	if shards > 0 {
		w = &spread{Sharded: NewSharded[int64](Options{Tick: tick, Clock: c}, shards)}
	}
	return &harness{
		tb:      tb,
		clock:   c,
		w:       w,
		tick:    int64(tick),
		origin:  start,
		all:     map[Handle]*refEntry{},
		lastNow: start,
	}
}

// fireAt computes, independently of the wheel's integer tricks, the first
// wheel-clock time at which an entry due at due must be handed out.
func (h *harness) fireAt(due int64) (int64, bool) {
	if due <= h.origin {
		return math.MinInt64, false // fires at the next Poll
	}
	d := new(big.Int).Sub(big.NewInt(due), big.NewInt(h.origin))
	t := big.NewInt(h.tick)
	q, r := new(big.Int).QuoRem(d, t, new(big.Int))
	if r.Sign() != 0 {
		q.Add(q, big.NewInt(1))
	}
	q.Mul(q, t).Add(q, big.NewInt(h.origin))
	if !q.IsInt64() {
		return 0, true
	}
	return q.Int64(), false
}

// itemDue is the Item.Due the model expects for an entry due at due, added
// after a Poll at h.lastNow: the due rounded up to its tick (the origin for a
// due at or before it), but at most 2^32-1 ticks before the last processed
// tick (the wheel keeps ticks in 32 bits).
func (h *harness) itemDue(due int64) int64 {
	f, never := h.fireAt(due)
	if never {
		return math.MaxInt64
	}
	var t uint64 // due tick
	if due > h.origin {
		t = (uint64(f) - uint64(h.origin)) / uint64(h.tick)
	}
	var e uint64 // processed tick
	if h.lastNow > h.origin {
		e = (uint64(h.lastNow) - uint64(h.origin)) / uint64(h.tick)
	}
	if t <= e && e-t > math.MaxUint32 {
		t = e - math.MaxUint32
	}
	return int64(uint64(h.origin) + t*uint64(h.tick))
}

func (h *harness) add(due int64) {
	h.register(h.w.Add(due, due), due)
}

// register records hd, just returned for an entry due at due, in the model.
func (h *harness) register(hd Handle, due int64) {
	if hd == 0 {
		h.tb.Fatalf("Add(%d) returned the zero Handle", due)
	}
	if _, dup := h.all[hd]; dup {
		h.tb.Fatalf("Add(%d) returned handle %#x again while it is still known", due, hd)
	}
	f, never := h.fireAt(due)
	e := &refEntry{h: hd, due: due, fireAt: f, never: never, item: h.itemDue(due)}
	h.all[hd] = e
	heap.Push(&h.pending, e)
	h.handles = append(h.handles, hd)
}

// addBatch adds n entries due at due with one AddBatch.
func (h *harness) addBatch(due int64, n int) {
	vals := make([]int64, n)
	for i := range vals {
		vals[i] = due
	}
	hs := make([]Handle, n)
	h.w.AddBatch(due, vals, hs)
	for _, hd := range hs {
		h.register(hd, due)
	}
}

func (h *harness) cancel(hd Handle) {
	e := h.all[hd]
	want := e != nil && !e.done
	if got := h.w.Cancel(hd); got != want {
		h.tb.Fatalf("Cancel(%#x) = %v, model says %v (entry %+v)", hd, got, want, e)
	}
	if want {
		e.done = true
		heap.Remove(&h.pending, e.idx)
	}
}

// advance moves the clock to now and polls, checking the handed-out set.
func (h *harness) advance(now int64) {
	h.clock.ns.Store(now)
	h.lastNow = now
	got := map[Handle]int64{}
	h.w.Poll(now, func(b *Batch[int64]) {
		if len(b.Items) == 0 {
			h.tb.Fatalf("Poll handed out an empty batch")
		}
		for _, it := range b.Items {
			if now < it.Due {
				h.tb.Fatalf("Poll(%d): item %#x handed out before its Due %d", now, it.Handle, it.Due)
			}
			if _, dup := got[it.Handle]; dup {
				h.tb.Fatalf("item %#x handed out twice in one Poll", it.Handle)
			}
			got[it.Handle] = it.Due
		}
		b.Release()
	})
	want := 0
	for len(h.pending) > 0 && !h.pending[0].never && h.pending[0].fireAt <= now {
		e := heap.Pop(&h.pending).(*refEntry)
		e.done = true
		want++
		due, ok := got[e.h]
		if !ok {
			h.tb.Fatalf("Poll(%d): entry %#x due %d (fire at %d) not handed out", now, e.h, e.due, e.fireAt)
		}
		if due != e.item {
			h.tb.Fatalf("Poll(%d): entry %#x due %d: Item.Due %d, want %d (rounded up to its tick)", now, e.h, e.due, due, e.item)
		}
		if now < e.due {
			h.tb.Fatalf("Poll(%d): entry %#x fired early, due %d", now, e.h, e.due)
		}
		delete(got, e.h)
	}
	for hd, due := range got {
		e := h.all[hd]
		h.tb.Fatalf("Poll(%d): handed out %#x due %d that the model keeps pending or never had (%+v)", now, hd, due, e)
	}
	h.fired += want
}

func (h *harness) checkLen() {
	if got, want := h.w.Len(), len(h.pending); got != want {
		h.tb.Fatalf("Len() = %d, model has %d pending", got, want)
	}
	if due, ok := h.w.Next(); ok != (len(h.pending) > 0) {
		h.tb.Fatalf("Next() ok = %v with %d pending", ok, len(h.pending))
	} else if ok && !h.pending[0].never && due > max(h.pending[0].fireAt, h.lastNow) {
		h.tb.Fatalf("Next() = %d, later than the earliest fire time %d (last Poll %d)", due, h.pending[0].fireAt, h.lastNow)
	}
}

// checkLists checks the wheel's lists against its occupancy bits and every
// entry's place (see Wheel.checkLists).
func (h *harness) checkLists() {
	var shards []*Wheel[int64]
	switch w := h.w.(type) {
	case *Wheel[int64]:
		shards = []*Wheel[int64]{w}
	case *spread:
		shards = w.shards
	}
	for s, sh := range shards {
		if msg := sh.checkLists(); msg != "" {
			h.tb.Fatalf("shard %d: %s", s, msg)
		}
	}
}

// ops is a source of random choices: a PRNG in the property test, bytes in
// the fuzz target.
type ops interface {
	Uint64() uint64
}

// spanDelay picks a delay spanning every level: from 0 ns to beyond the
// wheel's range, log-uniformly, plus the odd negative and huge value.
func spanDelay(r ops, tick int64) int64 {
	x := r.Uint64()
	switch x % 16 {
	case 0:
		return -int64(x>>8) % (10 * tick) // past
	case 1:
		return math.MaxInt64 // clamps / overflows the range
	case 2:
		return int64(x>>4) % (3 * tick) // within a few ticks, exact boundaries
	case 3:
		return (int64(x>>8) % 200) * tick // exact multiples
	}
	exp := (x >> 8) % 63 // 2^0 .. 2^62 ns: up to 146 years
	return int64((x >> 16) & (1<<exp - 1))
}

// spanStep picks how far to advance the clock: mostly small, sometimes
// across levels, rarely years.
func spanStep(r ops, tick int64) int64 {
	x := r.Uint64()
	switch x % 8 {
	case 0:
		return 0
	case 1:
		return tick
	case 2, 3:
		return int64(x>>8) % (4 * tick)
	}
	exp := (x >> 8) % 61
	return int64((x >> 16) & (1<<exp - 1))
}

// runModel performs steps random operations and then drains everything.
// shards > 0 runs it on a Sharded wheel.
func runModel(tb testing.TB, r ops, tick time.Duration, start int64, steps, shards int) *harness {
	h := newShardedHarness(tb, tick, start, shards)
	now := start
	for i := 0; i < steps; i++ {
		x := r.Uint64()
		switch {
		case x%100 < 50:
			due := now + spanDelay(r, h.tick)
			if d := spanDelay(r, h.tick); d > 0 && due > now && due > math.MaxInt64-d {
				due = math.MaxInt64
			}
			h.add(due)
		case x%100 < 70 && len(h.handles) > 0:
			// Mostly recent handles (likely pending), sometimes old ones
			// (likely fired or cancelled), sometimes garbage.
			var hd Handle
			switch y := r.Uint64(); y % 8 {
			case 0:
				hd = Handle(r.Uint64())
			case 1:
				hd = h.handles[int(y>>3)%len(h.handles)]
			default:
				n := min(len(h.handles), 64)
				hd = h.handles[len(h.handles)-1-int(y>>3)%n]
			}
			h.cancel(hd)
		case x%100 < 72:
			// Two Adds at the very same due: FIFO within the slot.
			due := now + spanDelay(r, h.tick)
			h.add(due)
			h.add(due)
		case x%100 < 75:
			// A batch at one due, as deferd adds an /mpub request.
			h.addBatch(now+spanDelay(r, h.tick), 1+int(x>>32)%6)
		default:
			step := spanStep(r, h.tick)
			if now > math.MaxInt64-step {
				step = 0
			}
			now += step
			h.advance(now)
		}
		if i%16 == 0 {
			h.checkLen()
		}
		if i%512 == 0 {
			h.checkLists()
		}
		if len(h.handles) > 1<<16 {
			h.handles = h.handles[len(h.handles)-1024:]
		}
	}
	h.checkLen()
	h.checkLists()
	// Drain: jump to the end of time; everything but never-reachable
	// entries must come out, each exactly once.
	h.advance(math.MaxInt64)
	h.checkLen()
	h.checkLists()
	for _, e := range h.pending {
		if !e.never {
			tb.Fatalf("after draining, %+v still pending", e)
		}
	}
	return h
}

// modelCase is one configuration of the property test; shards > 0 runs it
// on a Sharded wheel whose Adds go to each shard in turn.
type modelCase struct {
	tick   time.Duration
	start  int64
	shards int
}

// runModelCases runs total random steps, split over cases x seeds, each
// against the reference model.
func runModelCases(t *testing.T, total, seeds int, seedBase uint64, cases []modelCase) {
	if raceEnabled {
		total /= 5
	}
	if testing.Short() {
		total /= 4
	}
	per := total / (len(cases) * seeds)
	for _, c := range cases {
		for seed := range seeds {
			t.Run(fmt.Sprintf("tick=%v/start=%d/shards=%d/seed=%d", c.tick, c.start, c.shards, seed), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(seed)+seedBase, uint64(c.tick)))
				h := runModel(t, r, c.tick, c.start, per, c.shards)
				if h.fired == 0 {
					t.Fatalf("nothing fired in %d steps", per)
				}
				if c.shards == 0 {
					return
				}
				perShard := make([]int, h.w.(*spread).Shards())
				for _, hd := range h.handles {
					perShard[uint32(hd)&h.w.(*spread).mask]++
				}
				for s, n := range perShard {
					if n == 0 {
						t.Fatalf("shard %d of %d got no entries: %v", s, len(perShard), perShard)
					}
				}
			})
		}
	}
}

func TestModel(t *testing.T) {
	runModelCases(t, 1_200_000, 4, 0, []modelCase{
		{time.Millisecond, 0, 0},
		{time.Microsecond, 0, 0},                     // 2^42 µs = 51 days: years are beyond range
		{time.Millisecond, -5 * int64(time.Hour), 0}, // negative clock
		{7 * time.Microsecond, 1 << 40, 0},           // odd tick
		{time.Second, math.MaxInt64 - int64(50*365*24*time.Hour), 0},
		{time.Microsecond, math.MaxInt64 - int64(10*time.Millisecond), 0},
	})
}

// TestModelSharded runs the model on Sharded wheels, each Add on the next
// shard in turn.
func TestModelSharded(t *testing.T) {
	runModelCases(t, 400_000, 2, 100, []modelCase{
		{time.Millisecond, 0, 2},
		{time.Microsecond, 0, 4},
		{time.Millisecond, -5 * int64(time.Hour), 3}, // rounded up to 4
		{time.Second, math.MaxInt64 - int64(50*365*24*time.Hour), MaxShards},
		{time.Microsecond, math.MaxInt64 - int64(10*time.Millisecond), 2},
	})
}

// TestLevels places one entry at each level boundary and checks each fires
// at exactly its tick, never earlier and never a tick later.
func TestLevels(t *testing.T) {
	for _, tick := range []time.Duration{time.Microsecond, time.Millisecond} {
		h := newHarness(t, tick, 0)
		tk := int64(tick)
		var dues []int64
		for l := 0; l <= numLevels; l++ {
			span := int64(1) << (levelBits * l)
			for _, d := range []int64{span - 1, span, span + 1, 63 * span, 64*span - 1} {
				if d <= 0 || d > math.MaxInt64/tk-1 {
					continue
				}
				dues = append(dues, d*tk, d*tk-1, d*tk+1)
			}
		}
		dues = append(dues, int64(10*365*24*time.Hour), int64(150*365*24*time.Hour))
		for _, d := range dues {
			h.add(d)
		}
		// Visit every fire time and the instant before it.
		for len(h.pending) > 0 && !h.pending[0].never {
			f := h.pending[0].fireAt
			h.advance(f - 1)
			h.advance(f)
			h.checkLen()
		}
	}
}
