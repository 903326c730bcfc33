// Package wheel is a hierarchical, tickless timing wheel for programs that
// keep many pending timed entries (millions of them) and want each handed
// back, in batches, once its time has come: Add is O(1), Cancel is O(1),
// handing out costs O(1) amortised per entry, and a pending entry is not a
// heap object. See Wheel, and Sharded for many goroutines adding on many
// cores.
//
// The package owns the wheel and nothing else: its clock arithmetic, its
// slab of entries and its driver (Run). It imports nothing of the module
// it lives in except internal/sat (saturating arithmetic), so it can be
// embedded on its own.
//
// # Time
//
// A wheel keeps time on its own clock: int64 nanoseconds of Options.Clock,
// by default a monotonic clock that starts near 0 when New is called. The
// due of Add and Item.Due are on that clock, not Unix time; AddAt takes a
// time.Time and AddAfter a time.Duration, and convert.
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
// that overflow int64 (AddAfter with a huge duration, AddAt with a time
// centuries ahead) are clamped to math.MaxInt64; an entry whose tick
// boundary lies past math.MaxInt64 on the wheel clock (292 years after the
// clock's zero) stays pending, since no clock reading can reach it.
//
// # Memory
//
// Entries are value structs in slab chunks of 64Ki entries, linked by uint32
// indices into circular doubly linked lists (one sentinel entry per list, so
// an entry need not record its list), with a free list by index. A slot of
// levels 1 to 5 is 64 lists, one per 64th of its span (so Scan can stop
// early in a crowded slot): 20,609 lists in all, whose sentinels take that
// many entries of the first chunk (480 KiB for T = uint64), once per Wheel
// and per shard of a Sharded one. An entry is
// 16 bytes plus T: 24 bytes for T = uint64. It keeps only the low 32 bits of
// its due tick; the rest follows from its slot, since below the top level a
// slot spans at most 2^30 ticks. Entries at the top level (due at least
// 2^36 ticks ahead: 2.2 years at 1 ms, 19 hours at 1 µs) keep their full
// tick in a side slice, 8 bytes more each until they cascade down. A
// pending entry is not a heap object; for a pointer-free T the chunks hold
// no pointers and add no GC scan work. Add and Cancel do not allocate in
// steady state.
//
// # Concurrency
//
// Every method of Wheel and Sharded is safe for concurrent use, and no lock
// is held while user code runs (Poll's callback, Run's receiver). One Wheel
// serialises Add and Cancel on one mutex. Sharded splits the wheel into
// independent Wheels (4 per P by default, at most 16) driven by one Run or
// Poll, with the same timing contract; each goroutine adds to its own
// shard, or to a free one when its shard's lock is held. Run at most one
// driver per wheel.
//
// # Zero values
//
// The zero Options are usable (1 ms tick, monotonic clock). The zero Wheel
// and the zero Sharded are not: create them with New and NewSharded. The
// zero Handle is never valid (Cancel returns false for it), and Release of
// a nil or zero Batch is a no-op.
package wheel
