package wheel

import (
	"math"
	"math/bits"
	"runtime"
	"time"
	"unsafe"

	"github.com/deferd/deferd/internal/sat"
)

// MaxShards bounds the shards of a Sharded wheel, so that each shard can
// still hold about 2^28 entries (2^28 less its 450 list sentinels).
const MaxShards = 16

// Sharded is a timing wheel split into shards, each a Wheel with its own
// lock, slab and levels, for programs that Add and Cancel from many
// goroutines on many cores at once: one Wheel serialises them on its mutex,
// whose cache line then moves between cores on every call. Add goes to the
// shard the calling goroutine's stack address maps to, so a goroutine keeps
// using the same shard (its cache lines stay with it) and different
// goroutines spread over the shards; if that shard's lock is held, Add
// takes the next shard whose lock is free (and waits for its own only when
// all are held). One driver (Run or Poll) serves every shard, with the same
// origin, tick and clock, so the timing contract is Wheel's: never early,
// at most one tick plus scheduling noise late.
//
// Differences from Wheel: a Handle carries its shard in its low index bits;
// batches come per shard (a tick's due entries may arrive as one batch per
// shard that holds some); each shard holds at most 2^32/shards entries, and
// which shard an Add lands in is a hint, not a choice the caller can make.
// For one goroutine adding (or callers that already serialise their Adds
// under a lock of their own) a plain Wheel is cheaper: Sharded adds a shard
// pick and a handle encoding to every call. Costs are Wheel's, times the
// shards where a method visits each (Len, Next, and per wake-up Poll and
// Run).
//
// All methods are safe for concurrent use. The zero Sharded is not usable:
// create one with NewSharded.
type Sharded[T any] struct {
	shards []*Wheel[T]
	bits   uint // log2(len(shards))
	mask   uint32
	wake   chan struct{} // shared by the shards: any of them wakes the one driver
}

// NewSharded returns an empty wheel of n shards, n rounded up to a power of
// two and capped at MaxShards; n <= 0 means 4 * runtime.GOMAXPROCS(0), so
// capped too (goroutines pick shards by a hash, and with one shard per P
// two busy goroutines would often share one). opts as for New (it panics
// on the same bad Tick). O(n): each shard allocates its first slab chunk
// (64Ki entries, 1.5 MiB for T = uint64). Safe for concurrent use.
func NewSharded[T any](opts Options, n int) *Sharded[T] {
	if n <= 0 {
		n = 4 * runtime.GOMAXPROCS(0)
	}
	n = min(n, MaxShards)
	b := uint(bits.Len(uint(n - 1)))
	tick, clock := opts.resolve()
	origin := clock.Now()
	limit := uint32(math.MaxUint32)
	if b > 0 {
		limit = 1 << (32 - b)
	}
	w := &Sharded[T]{bits: b, mask: 1<<b - 1, wake: make(chan struct{}, 1)}
	for range 1 << b {
		w.shards = append(w.shards, newWheel[T](tick, clock, origin, w.wake, limit))
	}
	return w
}

// Shards returns the number of shards. O(1); safe for concurrent use.
func (w *Sharded[T]) Shards() int { return len(w.shards) }

// pick maps the calling goroutine's stack address to a shard (Fibonacci
// hashing of the address above its low 10 bits: goroutine stacks start at
// 2 KiB, so two of them may share a 4 KiB page). It is only a hint for
// spreading goroutines: nothing depends on which shard an entry is in.
func (w *Sharded[T]) pick() uint32 {
	var x byte
	p := uint64(uintptr(unsafe.Pointer(&x))) >> 10
	return uint32(p * 0x9E3779B97F4A7C15 >> (64 - w.bits))
}

// outer turns shard s's handle into this wheel's: the shard goes into the
// low bits of the index, which stays below 2^(32-bits) in a shard.
func (w *Sharded[T]) outer(h Handle, s uint32) Handle {
	return h&^math.MaxUint32 | Handle(uint32(h)<<w.bits|s)
}

// recode turns the handles of shard s's batch into this wheel's.
func (w *Sharded[T]) recode(b *Batch[T], s uint32) {
	for k := range b.Items {
		b.Items[k].Handle = w.outer(b.Items[k].Handle, s)
	}
}

// Now returns the wheel clock, shared by the shards: as Wheel.Now, not Unix
// time. O(1); safe for concurrent use.
func (w *Sharded[T]) Now() int64 { return w.shards[0].Now() }

// Add is Wheel.Add on the calling goroutine's shard, or on the next shard
// whose lock is free if that one's is held. due is on the wheel clock (see
// Now), NOT Unix time: time.Now().UnixNano() schedules v some 56 years out.
// For a time.Time use AddAt; for a delay use AddAfter. O(1) (O(shards) lock attempts
// at worst); no allocation in steady state; safe for concurrent use.
func (w *Sharded[T]) Add(due int64, v T) Handle {
	s := w.pick()
	for k := range uint32(len(w.shards)) {
		i := (s + k) & w.mask
		if h, ok := w.shards[i].add(due, v, true, true); ok {
			return w.outer(h, i)
		}
	}
	// Every lock was held, or every shard with a free lock full: wait for
	// each in turn, skipping full ones.
	for k := range uint32(len(w.shards)) {
		i := (s + k) & w.mask
		if h, ok := w.shards[i].add(due, v, false, true); ok {
			return w.outer(h, i)
		}
	}
	panic(errFull)
}

// AddAfter is Wheel.AddAfter: Add(w.Now()+d, v), the sum saturating
// instead of wrapping. O(1); no allocation in steady state; safe for
// concurrent use.
func (w *Sharded[T]) AddAfter(d time.Duration, v T) Handle {
	return w.Add(sat.Add(w.Now(), int64(d)), v)
}

// AddAt is Wheel.AddAt: Add at t converted to the wheel clock, never handed
// out before time.Now() reaches t, saturating instead of wrapping for a t
// far ahead; a t in the past fires at the next Poll. O(1); no allocation in
// steady state; safe for concurrent use.
func (w *Sharded[T]) AddAt(t time.Time, v T) Handle {
	return w.Add(wheelTime(w.shards[0].clock, t), v)
}

// AddBatch is Wheel.AddBatch (due on the wheel clock) on the calling
// goroutine's shard (all of values in that one shard, waiting for its lock
// if held), or, if they do not fit there, on the next shard where they do;
// it panics, adding none, if none has room. O(len(values)); no allocation
// in steady state; safe for concurrent use.
func (w *Sharded[T]) AddBatch(due int64, values []T, hs []Handle) {
	s := w.pick()
	for k := range uint32(len(w.shards)) {
		if w.addBatchOn((s+k)&w.mask, due, values, hs) {
			return
		}
	}
	panic(errFull)
}

// addBatchOn is AddBatch on shard s; false if they do not all fit there.
func (w *Sharded[T]) addBatchOn(s uint32, due int64, values []T, hs []Handle) bool {
	if !w.shards[s].addBatch(due, values, hs) {
		return false
	}
	for k := range values {
		hs[k] = w.outer(hs[k], s)
	}
	return true
}

// Cancel is Wheel.Cancel: true iff it removed a pending entry. O(1); safe
// for concurrent use.
func (w *Sharded[T]) Cancel(h Handle) bool {
	i := uint32(h)
	return w.shards[i&w.mask].Cancel(h&^math.MaxUint32 | Handle(i>>w.bits))
}

// Len returns the number of pending entries, summed over the shards one
// after another (not one atomic snapshot while others Add and Cancel).
// O(shards); safe for concurrent use.
func (w *Sharded[T]) Len() int {
	n := 0
	for _, sh := range w.shards {
		n += sh.Len()
	}
	return n
}

// Next is Wheel.Next over all shards: the earliest time anything may be
// due, false if nothing is pending. The shards are asked one after another,
// not in one atomic snapshot: with Adds and Cancels running it may miss an
// entry that moves between them. O(shards * levels); safe for concurrent
// use.
func (w *Sharded[T]) Next() (due int64, ok bool) {
	due = math.MaxInt64
	for _, sh := range w.shards {
		if d, sok := sh.Next(); sok {
			due, ok = min(due, d), true
		}
	}
	if !ok {
		return 0, false
	}
	return due, true
}

// Poll is Wheel.Poll over all shards: each shard's due batches in tick
// order, shard after shard; now is on the wheel clock. fn runs without any
// lock held and owns each batch. Cost: O(due entries) amortised plus
// O(shards * levels). Safe for concurrent use (concurrent Polls hand out
// batches in no defined order).
func (w *Sharded[T]) Poll(now int64, fn func(*Batch[T])) {
	nowTick := w.shards[0].nowTick(now)
	for s, sh := range w.shards {
		for {
			sh.mu.Lock()
			b := sh.collect(nowTick)
			sh.mu.Unlock()
			if b == nil {
				break
			}
			w.recode(b, uint32(s))
			fn(b)
		}
	}
}

// Run is Wheel.Run over all shards: one driver sends every shard's due
// batches on out (each shard's in tick order, shard after shard, so not in
// tick order across shards when it is behind) until stop closes, and
// returns the batch it could not send because stop closed (nil if none).
// It sleeps until the earliest occupied slot of any shard; an Add due
// before that wakes it. Cost per wake-up: O(shards * levels) plus the due
// entries. Safe to run concurrently with every other method; run at most
// one driver per wheel.
func (w *Sharded[T]) Run(stop <-chan struct{}, out chan<- *Batch[T]) *Batch[T] {
	return drive(w.shards, w.recode, stop, out)
}
