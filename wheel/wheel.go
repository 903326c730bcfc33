package wheel

import (
	"math"
	"math/bits"
	"sync"
	"time"

	"github.com/deferd/deferd/internal/sat"
)

const (
	levelBits = 6
	numSlots  = 1 << levelBits // slots per level
	slotMask  = numSlots - 1
	numLevels = 7
	topLevel  = numLevels - 1

	// List ids: 0..numLevels*numSlots-1 are wheel slots (level*64+slot),
	// readyList holds entries whose tick is already processed. Each list is
	// circular through a sentinel entry, list id + 1 in the slab; index 0
	// means "none" (the end of the free list) and real entries start at
	// firstEntry.
	readyList  = numLevels * numSlots
	numLists   = readyList + 1
	firstEntry = numLists + 1

	// Bits of entry.gen: genLive while the entry is pending; genFar when
	// its due field indexes Wheel.far (top-level entries, whose tick does
	// not fit in 32 bits). The generation proper counts in steps of genStep.
	genLive = 1
	genFar  = 2
	genStep = 4

	chunkBits = 16
	chunkSize = 1 << chunkBits
	chunkMask = chunkSize - 1

	// maxPooledBatch bounds the capacity of a batch kept for reuse, so one
	// huge burst does not pin its memory forever.
	maxPooledBatch = 1 << 16
)

// Handle identifies one Add. It is generation<<32 | index; the zero Handle is
// never valid, and a Handle whose entry has fired or been cancelled is stale:
// Cancel returns false for it. Generations are 30 bits, so a Handle kept
// across 2^30 reuses of the same entry may alias a newer entry.
type Handle uint64

// Clock is a monotonic clock in nanoseconds; only differences matter. It must
// be safe for concurrent use.
type Clock interface{ Now() int64 }

// Options configure a Wheel. The zero Options are fine: 1 ms tick, real
// monotonic clock.
type Options struct {
	Tick  time.Duration // default 1ms; must be >= 1µs
	Clock Clock         // default: real monotonic clock (time.Since(a fixed base))
}

// Item is one handed-out entry: a plain value, copied out of the wheel.
type Item[T any] struct {
	Handle Handle
	// Due is the due time given to Add rounded up to its tick (wheel
	// clock ns): the time the entry became due for the wheel, at most one
	// Tick after the time given. (An entry added already due more than
	// 2^32 ticks in the past reports 2^32 ticks before its hand-out tick.)
	Due   int64
	Value T
}

// Batch is a group of items that became due in the same tick bucket (one
// level-0 slot, or the entries added already due). The receiver owns it
// until it calls Release, and may use it from any goroutine meanwhile.
// Batches come from a wheel; Release of a zero Batch is a no-op.
type Batch[T any] struct {
	Items []Item[T]
	w     *Wheel[T]
}

// Release gives the batch back to its wheel for reuse. O(len(Items)) (the
// items are zeroed so pooled batches keep no references). Don't touch the
// batch or its Items afterwards. Release of a nil batch is a no-op. Safe for
// concurrent use with the wheel's other methods.
func (b *Batch[T]) Release() {
	if b == nil || b.w == nil {
		return
	}
	if cap(b.Items) > maxPooledBatch {
		b.Items = nil
		return
	}
	clear(b.Items)
	b.Items = b.Items[:0]
	b.w.batches.Put(b)
}

// entry is one pending (or free) entry: 16 bytes plus T, so 24 bytes for
// T = uint64. It does not record its list: lists are circular through
// sentinels, so unlinking needs only the neighbours. Its tick is kept in 32
// bits: the bits above follow from the slot it sits in (below the top
// level a slot spans at most 2^30 ticks) or, on the ready list, from the
// processed tick; top-level entries keep the full tick in Wheel.far.
type entry[T any] struct {
	next, prev uint32 // circular list links by index (free list: next, 0-terminated)
	due        uint32 // low 32 bits of the due tick, or (genFar) an index into Wheel.far
	gen        uint32 // genLive | genFar | generation (bumped by genStep when freed)
	value      T
}

// Wheel is a hierarchical timing wheel. Add and Cancel are O(1); handing out
// due entries costs O(1) amortised per entry (each entry cascades at most
// once per level). All methods are safe for concurrent use from many
// goroutines; one mutex guards the wheel and is never held while user code
// runs. The zero Wheel is not usable: create one with New.
type Wheel[T any] struct {
	mu sync.Mutex

	tick    uint64 // ns per tick
	tickInv uint64 // floor((2^64-1)/tick), to divide by tick with a multiply
	origin  int64  // wheel clock at tick 0
	clock   Clock

	elapsed  uint64 // last processed tick
	n        int    // pending entries
	occupied [numLevels]uint64

	chunks [][]entry[T]          // chunks[0] holds the list sentinels
	sent   *[firstEntry]entry[T] // chunks[0][:firstEntry], for direct access to the sentinels
	free   uint32                // head of the free list (linked by next); 0 = empty
	used   uint32                // slab indices in use or freed (index 0 and the sentinels included)
	limit  uint32                // slab indices stay below it

	// far holds the full due tick of top-level entries (genFar); farFree
	// lists its free slots.
	far     []uint64
	farFree []uint32

	// planned is the tick the sleeping driver will wake at; 0 when no driver
	// sleeps. An Add due before it wakes the driver.
	planned uint64
	wake    chan struct{}

	batches sync.Pool

	// The shards of a Sharded wheel are separate objects that may sit
	// next to each other: keep another shard's mutex off this one's
	// cache lines.
	_ [128]byte
}

type monoClock struct{ base time.Time }

func (c monoClock) Now() int64 { return int64(time.Since(c.base)) }

// New returns an empty wheel. The zero Options are fine. It panics if
// opts.Tick is non-zero and below 1µs. O(1): it allocates the first slab
// chunk (64Ki entries, which also hold the lists' sentinels); safe for
// concurrent use. Tick 0 of the wheel is opts.Clock.Now() at the time of
// the call.
func New[T any](opts Options) *Wheel[T] {
	tick, clock := opts.resolve()
	return newWheel[T](tick, clock, clock.Now(), make(chan struct{}, 1), math.MaxUint32)
}

// resolve applies the defaults and checks the tick.
func (opts Options) resolve() (time.Duration, Clock) {
	tick := opts.Tick
	if tick == 0 {
		tick = time.Millisecond
	}
	if tick < time.Microsecond {
		panic("wheel: Options.Tick must be >= 1µs")
	}
	clock := opts.Clock
	if clock == nil {
		clock = monoClock{base: time.Now()}
	}
	return tick, clock
}

// newWheel is New with the origin, the driver's wake channel and the bound
// on slab indices given (a shard of a Sharded wheel shares the first two
// with its siblings and keeps its indices below 2^(32-shard bits)).
func newWheel[T any](tick time.Duration, clock Clock, origin int64, wake chan struct{}, limit uint32) *Wheel[T] {
	w := &Wheel[T]{
		tick:    uint64(tick),
		tickInv: math.MaxUint64 / uint64(tick),
		clock:   clock,
		origin:  origin,
		used:    firstEntry, // index 0 is reserved: the zero Handle is never valid
		limit:   limit,
		wake:    wake,
		chunks:  [][]entry[T]{make([]entry[T], chunkSize)},
	}
	w.sent = (*[firstEntry]entry[T])(w.chunks[0][:firstEntry])
	for sn := uint32(1); sn <= numLists; sn++ { // empty lists
		e := &w.sent[sn]
		e.next, e.prev = sn, sn
	}
	w.batches.New = func() any { return &Batch[T]{w: w} }
	return w
}

// Now returns the wheel clock in nanoseconds. O(1); safe for concurrent use.
func (w *Wheel[T]) Now() int64 { return w.clock.Now() }

// dueTick is ceil((due-origin)/tick), 0 for a due at or before the origin.
func (w *Wheel[T]) dueTick(due int64) uint64 {
	if due <= w.origin {
		return 0
	}
	t, r := w.divTick(uint64(due) - uint64(w.origin)) // exact: due > origin
	if r != 0 {
		t++
	}
	return t
}

// divTick is d/tick and d%tick. Fast path of Add: a multiply by the
// precomputed inverse instead of a 64-bit DIV. The estimate is at most 2
// below the quotient and never above it, so a short fix-up makes it exact.
func (w *Wheel[T]) divTick(d uint64) (q, r uint64) {
	q, _ = bits.Mul64(d, w.tickInv)
	r = d - q*w.tick
	for r >= w.tick {
		q++
		r -= w.tick
	}
	return q, r
}

// nowTick is floor((now-origin)/tick): the last tick whose time has come.
func (w *Wheel[T]) nowTick(now int64) uint64 {
	if now <= w.origin {
		return 0
	}
	q, _ := w.divTick(uint64(now) - uint64(w.origin))
	return q
}

// tickTime is the wheel-clock time of tick t, clamped to math.MaxInt64.
func (w *Wheel[T]) tickTime(t uint64) int64 {
	hi, lo := bits.Mul64(t, w.tick)
	if hi != 0 {
		return math.MaxInt64
	}
	if w.origin < 0 {
		neg := -uint64(w.origin) // |origin|, 2^63 included
		if lo < neg {
			return w.origin + int64(lo) // lo < 2^63: no overflow
		}
		lo -= neg
		if lo > math.MaxInt64 {
			return math.MaxInt64
		}
		return int64(lo)
	}
	if lo > math.MaxInt64-uint64(w.origin) {
		return math.MaxInt64
	}
	return w.origin + int64(lo)
}

func (w *Wheel[T]) at(i uint32) *entry[T] {
	return &w.chunks[i>>chunkBits][i&chunkMask]
}

// alloc takes an entry off the free list or the slab and marks it live.
// Caller holds mu.
func (w *Wheel[T]) alloc() (uint32, *entry[T]) {
	if i := w.free; i != 0 {
		e := w.at(i)
		w.free = e.next
		e.gen |= genLive
		return i, e
	}
	i := w.used
	if i >= w.limit { // Add and AddBatch check first, so this is a bug
		panic("BUG: " + errFull)
	}
	if int(i>>chunkBits) == len(w.chunks) {
		w.chunks = append(w.chunks, make([]entry[T], chunkSize))
	}
	w.used++
	e := w.at(i)
	e.gen = genLive
	return i, e
}

// release puts an unlinked entry on the free list, with a new generation.
// Caller holds mu.
func (w *Wheel[T]) release(i uint32, e *entry[T]) {
	if e.gen&genFar != 0 {
		w.farFree = append(w.farFree, e.due)
	}
	var zero T
	e.value = zero
	e.gen = e.gen&^(genLive|genFar) + genStep
	e.prev = 0
	e.next = w.free
	w.free = i
}

// handle is the Handle of entry i (the genFar bit is not part of it: it
// changes when the entry cascades).
func handle(gen, i uint32) Handle {
	return Handle(uint64(gen&^genFar)<<32 | uint64(i))
}

// setTick records tick t in e for the list it is going to: the low 32 bits,
// or for the top level a slot of far. Caller holds mu.
func (w *Wheel[T]) setTick(e *entry[T], t uint64, top bool) {
	if top {
		if e.gen&genFar == 0 {
			if n := len(w.farFree); n > 0 {
				e.due = w.farFree[n-1]
				w.farFree = w.farFree[:n-1]
			} else {
				e.due = uint32(len(w.far))
				w.far = append(w.far, 0)
			}
			e.gen |= genFar
		}
		w.far[e.due] = t
		return
	}
	if e.gen&genFar != 0 {
		w.farFree = append(w.farFree, e.due)
		e.gen &^= genFar
	}
	e.due = uint32(t)
}

// slotTick is the due tick of an entry of a slot starting at tick start.
func (w *Wheel[T]) slotTick(e *entry[T], start uint64) uint64 {
	if e.gen&genFar != 0 {
		return w.far[e.due]
	}
	return start + uint64(e.due-uint32(start)) // below the top level: t-start < 2^30
}

// readyTick is the due tick of an entry of the ready list (or of the level-0
// slot being handed out): at most elapsed, and at most 2^32-1 ticks before
// it (place clamps). Caller holds mu.
func (w *Wheel[T]) readyTick(e *entry[T]) uint64 {
	return w.elapsed - uint64(uint32(w.elapsed)-e.due)
}

// levelFor is the level an entry due at tick `when` belongs in while the
// wheel has processed `elapsed` (when > elapsed).
func levelFor(elapsed, when uint64) int {
	masked := (elapsed ^ when) | slotMask
	l := (63 - bits.LeadingZeros64(masked)) / levelBits
	if l > topLevel {
		l = topLevel
	}
	return l
}

// place links entry i (due at tick t) at the tail of its slot, or of the
// ready list if its tick is already processed. Caller holds mu.
func (w *Wheel[T]) place(i uint32, e *entry[T], t uint64) {
	list, top, t := w.listFor(t)
	if top || e.gen&genFar != 0 {
		w.setTick(e, t, top)
	} else {
		e.due = uint32(t) // the common case, inline
	}
	sn := uint32(list + 1)
	sent := &w.sent[sn]
	e.next, e.prev = sn, sent.prev
	w.at(e.prev).next = i
	sent.prev = i
}

// listFor is the list for an entry due at tick t, whether it is the top
// level, and the tick to record (clamped for the ready list, see
// readyTick). It marks the slot occupied. Caller holds mu.
func (w *Wheel[T]) listFor(t uint64) (list int, top bool, rec uint64) {
	if t <= w.elapsed {
		if w.elapsed-t > math.MaxUint32 {
			t = w.elapsed - math.MaxUint32
		}
		return readyList, false, t
	}
	l := levelFor(w.elapsed, t)
	s := int(t>>(levelBits*l)) & slotMask
	w.occupied[l] |= 1 << s
	return l*numSlots + s, l == topLevel, t
}

// unlink removes e from its list, clearing the slot's occupancy bit
// if the list is left empty. Caller holds mu.
func (w *Wheel[T]) unlink(e *entry[T]) {
	p, n := e.prev, e.next
	w.at(p).next = n
	w.at(n).prev = p
	if p == n && p < firstEntry { // only the sentinel is left
		if list := int(p) - 1; list < readyList {
			w.occupied[list/numSlots] &^= 1 << (list % numSlots)
		}
	}
}

// empty reports whether list has no entries. Caller holds mu.
func (w *Wheel[T]) empty(list int) bool {
	sn := uint32(list + 1)
	return w.sent[sn].next == sn
}

// detach empties list and returns its first entry and its sentinel; the
// detached entries still end at the sentinel. Caller holds mu.
func (w *Wheel[T]) detach(list int) (first, sn uint32) {
	sn = uint32(list + 1)
	sent := &w.sent[sn]
	first = sent.next
	sent.next, sent.prev = sn, sn
	if list < readyList {
		w.occupied[list/numSlots] &^= 1 << (list % numSlots)
	}
	return first, sn
}

// Add schedules v to be handed out at or after due (wheel clock ns), at most
// one tick plus scheduling noise late. A due in the past fires at the next
// Poll. O(1); no allocation in steady state (the slab grows by a 64Ki-entry
// chunk when full, the side slice of top-level ticks by append). Safe for
// concurrent use. If due is earlier than the sleeping Run driver's planned
// wake-up, the driver is woken. It panics if 2^32-1 entries are pending,
// with the wheel left as it was.
func (w *Wheel[T]) Add(due int64, v T) Handle {
	h, _ := w.add(due, v, false, false) // a wrapper the compiler inlines
	return h
}

// errFull is the panic of an Add to a full wheel (raised after the lock is
// released, so a recovered panic leaves the wheel usable).
const errFull = "wheel: full (2^32-1 entries per Wheel, about 2^32/shards per shard of a Sharded one)"

// add is Add. With try set it only TryLocks, and returns false if the lock
// is held (a Sharded wheel then tries another shard). If the wheel is full
// it releases the lock and, with mayFail set, returns false, else panics.
func (w *Wheel[T]) add(due int64, v T, try, mayFail bool) (Handle, bool) {
	t := w.dueTick(due)
	if !try {
		w.mu.Lock()
	} else if !w.mu.TryLock() {
		return 0, false
	}
	var (
		i uint32
		e *entry[T]
	)
	if i = w.free; i != 0 { // alloc's common case, inline
		e = w.at(i)
		w.free = e.next
		e.gen |= genLive
	} else {
		if w.used >= w.limit { // full
			w.mu.Unlock()
			if !mayFail {
				panic(errFull)
			}
			return 0, false
		}
		i, e = w.alloc()
	}
	e.value = v
	if l := levelFor(w.elapsed, t); t > w.elapsed && l < topLevel {
		// place's common case, inline: a slot below the top level. A newly
		// allocated entry has genFar clear.
		s := int(t>>(levelBits*l)) & slotMask
		w.occupied[l] |= 1 << s
		e.due = uint32(t)
		sn := uint32(l*numSlots + s + 1)
		sent := &w.sent[sn]
		e.next, e.prev = sn, sent.prev
		w.at(e.prev).next = i
		sent.prev = i
	} else {
		w.place(i, e, t)
	}
	w.n++
	h := handle(e.gen, i)
	wake := w.planLocked(t)
	w.mu.Unlock()
	if wake {
		w.wakeDriver()
	}
	return h, true
}

// planLocked notes that tick t now has an entry and reports whether the
// Run driver sleeps past it and must be woken. Caller holds mu.
func (w *Wheel[T]) planLocked(t uint64) bool {
	if t >= w.planned {
		return false
	}
	w.planned = t
	return true
}

// wakeDriver wakes the Run driver if it sleeps; it never blocks.
func (w *Wheel[T]) wakeDriver() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// AddBatch schedules every values[i] at due, as len(values) calls of Add
// would, in that order, and stores their handles in hs[i]; it panics if
// len(hs) < len(values). It takes the lock once and computes the slot once,
// so it costs less per entry than Add (deferd adds each /mpub request's
// messages with one call). O(len(values)); no allocation in steady state;
// safe for concurrent use. Like Add it panics, adding none of values, if
// they do not all fit.
func (w *Wheel[T]) AddBatch(due int64, values []T, hs []Handle) {
	if !w.addBatch(due, values, hs) {
		panic(errFull)
	}
}

// roomLocked reports whether n more entries fit: in the slab below the
// limit, then on the free list (walked only that close to the limit).
// Caller holds mu.
func (w *Wheel[T]) roomLocked(n int) bool {
	left := uint64(w.limit - w.used) // used never passes limit
	if uint64(n) <= left {
		return true
	}
	need := uint64(n) - left
	for i := w.free; i != 0 && need > 0; i = w.at(i).next {
		need--
	}
	return need == 0
}

// addBatch is AddBatch; it returns false, with nothing added and the lock
// released, if the wheel has no room for all of values.
func (w *Wheel[T]) addBatch(due int64, values []T, hs []Handle) bool {
	if len(hs) < len(values) {
		panic("wheel: AddBatch: len(hs) < len(values)")
	}
	if len(values) == 0 {
		return true
	}
	t := w.dueTick(due)
	w.mu.Lock()
	if !w.roomLocked(len(values)) {
		w.mu.Unlock()
		return false
	}
	// Add's steps with the list found once, and the new entries chained
	// to each other before the chain is closed on the sentinel.
	list, top, rec := w.listFor(t)
	sn := uint32(list + 1)
	sent := &w.sent[sn] // chunk arrays never move, so these pointers stay valid
	prev := sent.prev
	pe := w.at(prev)
	for k, v := range values {
		i, e := w.alloc() // genFar is clear on a newly allocated entry
		e.value = v
		if top {
			w.setTick(e, rec, true)
		} else {
			e.due = uint32(rec)
		}
		e.prev = prev
		pe.next = i
		hs[k] = handle(e.gen, i)
		prev, pe = i, e
	}
	pe.next = sn
	sent.prev = prev
	w.n += len(values)
	wake := w.planLocked(t)
	w.mu.Unlock()
	if wake {
		w.wakeDriver()
	}
	return true
}

// AddAfter is Add(w.Now()+d, v), with the sum clamped to math.MaxInt64 (and
// math.MinInt64) on overflow. O(1); safe for concurrent use.
func (w *Wheel[T]) AddAfter(d time.Duration, v T) Handle {
	return w.Add(sat.Add(w.Now(), int64(d)), v)
}

// Cancel removes a pending entry. It returns true iff it removed one, false
// if h is zero, stale, already handed out (in a batch) or already cancelled,
// like time.Timer.Stop. O(1); safe for concurrent use.
func (w *Wheel[T]) Cancel(h Handle) bool {
	i := uint32(h)
	if i == 0 {
		return false
	}
	w.mu.Lock()
	if i >= w.used {
		w.mu.Unlock()
		return false
	}
	e := w.at(i)
	if e.gen&^genFar != uint32(h>>32) || e.gen&genLive == 0 { // stale, free or a sentinel
		w.mu.Unlock()
		return false
	}
	w.unlink(e)
	w.release(i, e)
	w.n--
	w.mu.Unlock()
	return true
}

// Len returns the number of pending entries: added, not cancelled and not
// yet handed out in a batch. O(1); safe for concurrent use.
func (w *Wheel[T]) Len() int {
	w.mu.Lock()
	n := w.n
	w.mu.Unlock()
	return n
}

// nextExpiration finds the earliest occupied slot: the lowest level with an
// occupied slot, and in it the first occupied slot after the current one.
// (Below the top level the current slot is never occupied; at the top level
// the current slot holds only entries a full rotation or more ahead, so it
// comes last.) Caller holds mu.
func (w *Wheel[T]) nextExpiration() (deadline uint64, level, slot int, ok bool) {
	for l := range numLevels {
		occ := w.occupied[l]
		if occ == 0 {
			continue
		}
		shift := uint(levelBits * l)
		cur := int(w.elapsed>>shift) & slotMask
		start := (cur + 1) & slotMask
		s := (start + bits.TrailingZeros64(bits.RotateLeft64(occ, -start))) & slotMask
		levelRange := uint64(1) << (shift + levelBits)
		levelStart := w.elapsed &^ (levelRange - 1)
		deadline = levelStart + uint64(s)<<shift
		if deadline <= w.elapsed {
			deadline += levelRange // top-level wrap
		}
		return deadline, l, s, true
	}
	return 0, 0, 0, false
}

// Next returns the earliest time (wheel clock ns) anything may be due, and
// false if nothing is pending. The time may be earlier than any entry's due
// (it can be a cascade point of a coarser level) and may be in the past
// (entries wait for the next Poll). O(levels); safe for concurrent use.
func (w *Wheel[T]) Next() (due int64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.empty(readyList) {
		return w.tickTime(w.elapsed), true
	}
	d, _, _, ok := w.nextExpiration()
	if !ok {
		return 0, false
	}
	return w.tickTime(d), true
}

func (w *Wheel[T]) newBatch() *Batch[T] {
	return w.batches.Get().(*Batch[T])
}

// drain moves every entry of list (the ready list, or the level-0 slot of
// tick elapsed) into a new batch and frees the entries. Caller holds mu.
func (w *Wheel[T]) drain(list int) *Batch[T] {
	b := w.newBatch()
	i, sn := w.detach(list)
	for i != sn {
		e := w.at(i)
		next := e.next
		b.Items = append(b.Items, Item[T]{Handle: handle(e.gen, i), Due: w.tickTime(w.readyTick(e)), Value: e.value})
		w.release(i, e)
		w.n--
		i = next
	}
	return b
}

// collect returns the next batch due at nowTick, or nil after advancing the
// processed time to nowTick. Caller holds mu.
func (w *Wheel[T]) collect(nowTick uint64) *Batch[T] {
	for {
		if !w.empty(readyList) {
			return w.drain(readyList)
		}
		deadline, l, s, ok := w.nextExpiration()
		if !ok || deadline > nowTick {
			if nowTick > w.elapsed {
				w.elapsed = nowTick
			}
			return nil
		}
		w.elapsed = deadline
		list := l*numSlots + s
		if l == 0 {
			return w.drain(list)
		}
		// Cascade: re-insert each entry at a finer level; those due now land
		// on the ready list, handed out on the next iteration.
		i, sn := w.detach(list)
		for i != sn {
			e := w.at(i)
			next := e.next
			w.place(i, e, w.slotTick(e, deadline))
			i = next
		}
	}
}

// Poll hands out everything due at now (wheel clock ns): entries whose tick
// time origin+ceil((due-origin)/Tick)*Tick is <= now. Each tick bucket goes
// out as one batch, passed to fn; fn runs without the lock held (it may call
// Add and Cancel) and owns the batch (call Release when done). The lock is
// taken once per batch, so Adds interleave with a large burst. Cost:
// O(due entries) amortised plus O(levels) per batch. Safe for concurrent
// use, though concurrent Polls hand out batches in no defined order. now
// should not go backwards between calls (it never does when read from the
// wheel's monotonic clock just before the call).
func (w *Wheel[T]) Poll(now int64, fn func(*Batch[T])) {
	nowTick := w.nowTick(now)
	for {
		w.mu.Lock()
		b := w.collect(nowTick)
		w.mu.Unlock()
		if b == nil {
			return
		}
		fn(b)
	}
}

// maxSleep bounds one driver sleep; the driver simply re-plans after it.
const maxSleep = time.Hour

// sleepFor is how long the driver sleeps to wake at tick d (maxSleep if
// !ok: nothing pending): 0 if d's time has come. It reads the Clock, so
// call it without the lock held.
func (w *Wheel[T]) sleepFor(d uint64, ok bool) time.Duration {
	if !ok {
		return maxSleep
	}
	wakeAt, now := w.tickTime(d), w.Now()
	switch {
	case wakeAt <= now:
		return 0 // already due: go round again
	case wakeAt-now > 0 && wakeAt-now < int64(maxSleep): // else overflow or far
		return time.Duration(wakeAt - now)
	}
	return maxSleep
}

// Run is the tickless driver. The owner calls it on its own goroutine; it
// sends each due batch on out (blocking send, so a slow consumer means
// backpressure, not loss) until stop is closed. It returns the batch it could
// not send because stop closed (nil if none) so the owner decides its fate.
//
// Between batches it sleeps on one time.Timer until the next occupied slot's
// deadline (found through per-level occupancy bitmaps), so pending entries
// far ahead cost no CPU; an Add due before the planned wake-up wakes it. Run
// sleeps in real time: with an injected Clock it assumes that clock runs at
// real speed. Cost: O(due entries) amortised plus O(levels) per wake-up; no
// CPU while nothing is due. Safe to run concurrently with every other method;
// run at most one driver per wheel.
func (w *Wheel[T]) Run(stop <-chan struct{}, out chan<- *Batch[T]) *Batch[T] {
	return drive([]*Wheel[T]{w}, nil, stop, out)
}

// drive is Run for wheels that share a clock, origin, tick and wake
// channel: a Wheel alone, or the shards of a Sharded wheel, whose batches
// recode turns to the Sharded handles. It drains every wheel up to now,
// then sleeps until the earliest tick any of them needs.
func drive[T any](shards []*Wheel[T], recode func(*Batch[T], uint32), stop <-chan struct{}, out chan<- *Batch[T]) *Batch[T] {
	timer := time.NewTimer(maxSleep)
	defer timer.Stop()
	first := shards[0]
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		nowTick := first.nowTick(first.Now())
		for s, sh := range shards {
			for {
				sh.mu.Lock()
				sh.planned = 0 // awake: Adds need not wake us until we plan again
				b := sh.collect(nowTick)
				sh.mu.Unlock()
				if b == nil {
					break
				}
				if recode != nil {
					recode(b, uint32(s))
				}
				select {
				case out <- b:
				case <-stop:
					return b
				}
			}
		}
		// Plan the wake-up at the earliest tick any shard needs. Pass one
		// sets each shard's planned to its own next tick under its lock, so
		// from then on an Add due before it wakes us; pass two lowers them
		// all to the earliest, so Adds between it and a shard's own next do
		// not wake us for nothing.
		d, ok := uint64(math.MaxUint64), false
		for _, sh := range shards {
			sh.mu.Lock()
			sd, sok := sh.elapsed, true
			if sh.empty(readyList) { // an Add since the drain may have put entries there
				sd, _, _, sok = sh.nextExpiration()
			}
			if sok {
				sh.planned = sd
				d, ok = min(d, sd), true
			} else {
				sh.planned = math.MaxUint64
			}
			sh.mu.Unlock()
		}
		for _, sh := range shards {
			sh.mu.Lock()
			sh.planned = min(sh.planned, d)
			sh.mu.Unlock()
		}
		if sleep := first.sleepFor(d, ok); sleep > 0 {
			timer.Reset(sleep)
			select {
			case <-stop:
				for _, sh := range shards {
					sh.mu.Lock()
					sh.planned = 0
					sh.mu.Unlock()
				}
				return nil
			case <-timer.C:
			case <-first.wake:
			}
			timer.Stop()
		}
	}
}
