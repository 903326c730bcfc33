package wheel

import (
	"math"
	"sync"
	"time"
)

const (
	levelBits = 6
	numSlots  = 1 << levelBits // slots per level
	slotMask  = numSlots - 1
	numLevels = 7
	topLevel  = numLevels - 1

	// List ids: 0..63 are level 0's slots (one tick each); a slot of
	// levels 1 to 5 is 64 lists, one per 64th of its span (sub-list),
	// subBase + ((level-1)*64+slot)*64 + sub; the top level's slots are
	// topBase+slot; readyList holds entries whose tick is already
	// processed. Each list is circular through a sentinel entry, list id +
	// 1 in the slab; index 0 means "none" (the end of the free list) and
	// real entries start at firstEntry.
	subBase    = numSlots
	numSubbed  = (topLevel - 1) * numSlots // slots with sub-lists
	topBase    = subBase + numSubbed*numSlots
	readyList  = topBase + numSlots
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
	// subOcc[(level-1)*64+slot] has bit k set iff that slot's sub-list k
	// holds entries (levels 1 to 5); occupied's bit of the slot is set iff
	// it is non-zero.
	subOcc [numSubbed]uint64
	// visits counts the entries Scan has looked at (for tests).
	visits uint64

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

// New returns an empty wheel. The zero Options are fine. It panics if
// opts.Tick is non-zero and below 1µs. O(1): it allocates the first slab
// chunk (64Ki entries, which also hold the lists' sentinels); safe for
// concurrent use. Tick 0 of the wheel is opts.Clock.Now() at the time of
// the call; on the default clock, the last multiple of the tick before
// it, which falls tickPhase (10µs) past a multiple of the tick in Unix
// time.
func New[T any](opts Options) *Wheel[T] {
	tick, clock := opts.resolve()
	origin := clock.Now()
	if opts.Clock == nil {
		origin = alignOrigin(origin, tick) // ticks on the wall clock's (clock.go)
	}
	return newWheel[T](tick, clock, origin, make(chan struct{}, 1), math.MaxUint32)
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
		clock = newMonoClock(tick)
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

// Len returns the number of pending entries: added, not cancelled and not
// yet handed out in a batch. O(1); safe for concurrent use.
func (w *Wheel[T]) Len() int {
	w.mu.Lock()
	n := w.n
	w.mu.Unlock()
	return n
}
