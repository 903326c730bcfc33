// Package wheel is a hierarchical, tickless timing wheel for millions of
// pending entries. See Wheel.
//
// # Layout
//
// The wheel has 7 levels of 64 slots (6 bits per level, the Tokio / Linux
// timer-wheel scheme). A slot at level L spans 64^L ticks, so the wheel
// covers 2^42 ticks: 139 years at the default 1 ms tick, 51 days at 1 µs.
// An entry lives in the finest level whose slot still tells it apart from
// the wheel's processed time; when that slot comes up its entries are
// re-inserted (cascaded) one level down, or handed out if due.
//
// # Never early
//
// Every entry keeps its due tick, ceil((due-origin)/tick), and it is handed
// out only once the wheel has processed that tick, that is at a Poll whose
// now >= origin+tick*Tick. So an entry is never early and at most one tick
// (plus scheduling noise) late. Item.Due is that tick's time: the due given
// to Add rounded up to the tick.
//
// # Beyond the range
//
// An entry due more than 2^42 ticks ahead is never dropped: it is parked in
// the top level, in the slot its due time maps to modulo the top level's
// range. When that slot comes up the entry is re-cascaded, its real due time
// is checked again, and it is parked again if still out of range. Due times
// that overflow int64 (AddAfter with a huge duration) are clamped to
// math.MaxInt64; an entry whose tick boundary lies past math.MaxInt64 on the
// wheel clock (292 years after the clock's zero) stays pending, since no
// clock reading can reach it.
//
// # Memory
//
// Entries are value structs in slab chunks of 64Ki entries, linked by uint32
// indices into circular doubly linked lists (one sentinel entry per slot, so
// an entry need not record its slot), with a free list by index. An entry is
// 16 bytes plus T: 24 bytes for T = uint64. It keeps only the low 32 bits of
// its due tick; the rest follows from its slot, since below the top level a
// slot spans at most 2^30 ticks. Entries at the top level (due at least
// 2^36 ticks ahead: 2.2 years at 1 ms, 19 hours at 1 µs) keep their full
// tick in a side slice, 8 bytes more each until they cascade down. A
// pending entry is not a heap object; for a pointer-free T the chunks hold
// no pointers and add no GC scan work. Add and Cancel do not allocate in
// steady state.
//
// # Many goroutines on many cores
//
// One Wheel serialises Add and Cancel on one mutex. Sharded splits the
// wheel into independent Wheels (4 per P by default, at most 16) driven by one Run
// or Poll, with the same timing contract; each goroutine adds to its own
// shard, or to a free one when its shard's lock is held.
package wheel
