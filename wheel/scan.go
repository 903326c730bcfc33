package wheel

import (
	"cmp"
	"math/bits"
	"runtime"
	"slices"
)

// Scan calls fn for the pending entries due at or after from (wheel clock
// ns, as Add's due; due is Item.Due: the due rounded up to its tick), in
// nondecreasing due order, until fn returns false. Entries due in the same
// tick come in no defined order. The ready list (entries already due, not
// yet handed out) comes first, then the wheel's slots in time order: level
// 0's after the current tick, then level 1's after the current level-1
// slot, and so on up (the slots of one level below the top cover
// disjoint, increasing time ranges, all after those of the level below).
//
// Cost: O(levels) per slot it visits, plus, per step, the entries it
// walks, and copies and sorts (k log k) before passing them to fn. A
// level-0 slot (one tick) is copied whole. A coarser slot (a level-L slot
// spans 64^L ticks: at 1 ms, level 1 64 ms, level 2 4 s, level 3 4.4 min,
// level 4 4.7 h) keeps its entries in 64 sub-lists, one per 64th of its
// span, which a step takes one at a time, in order, skipping empty ones
// through a bitmap: a sub-list of one tick (level 1) is copied whole, a
// wider one is walked twice, once to count its entries per 64th of its
// span, once to copy those of its earliest 64ths holding at least 4096
// entries (or all of them). So a scan that stops early costs the entries
// due within the 64ths of coarse slots it reaches (64^(L-1) ticks each: 1
// ms at level 1, 64 ms at level 2, 4 s at level 3, 4.4 min at level 4),
// walked twice, plus what it passes; not the whole slot, however crowded
// (12M entries in one level-3 slot spread over 120 s: about 200-400k
// entries walked for a first page). Top level entries (due 2^36 ticks or
// more ahead) are copied all at once. Memory: one slice of what a step
// copies, reused.
//
// Concurrency: safe for concurrent use with every other method. The lock is
// held for at most scanChunk (1024) entries at a time (then the scan
// yields the processor), and never while fn
// runs, so fn may call Add and Cancel and a scan of a crowded slot does not
// stall Adds for long. Scan is not a snapshot: an entry added, cancelled,
// handed out or cascaded while Scan runs may or may not be passed; every
// entry that stays pending, with the same due, throughout the scan is
// passed exactly once (each step starts from the next tick not yet passed,
// wherever cascading has moved its entries meanwhile; a step whose slot is
// cascaded or whose place in it is freed while it walks starts over).
func (w *Wheel[T]) Scan(from int64, fn func(due int64, v T) bool) {
	fromTick := w.dueTick(from)
	var buf []scanItem[T]
	for {
		var next uint64
		var more bool
		buf, next, more = w.scanStep(fromTick, buf[:0])
		slices.SortStableFunc(buf, func(a, b scanItem[T]) int { return cmp.Compare(a.tick, b.tick) })
		for i := range buf {
			if !fn(w.tickTime(buf[i].tick), buf[i].v) {
				return
			}
		}
		if !more {
			return
		}
		fromTick = next
	}
}

// scanItem is an entry copied by Scan: its due tick and value.
type scanItem[T any] struct {
	tick uint64
	v    T
}

// scanChunk is the most entries Scan walks per hold of the lock; scanBatch
// the entries a step of a coarse slot copies at least (see Scan).
const (
	scanChunk = 1024
	scanBatch = 4096
)

// scanStep appends to buf the entries with tick >= from of the earliest
// list (the ready list, a level-0 slot or a sub-list of a coarser slot)
// that holds ticks >= from, or of the first part of it, and returns the
// first tick after what it covered; more is false if no list holds such
// ticks. A step that found its slot changed under it returns nothing,
// from and true: Scan tries again.
func (w *Wheel[T]) scanStep(from uint64, buf []scanItem[T]) (_ []scanItem[T], next uint64, more bool) {
	w.mu.Lock()
	if from <= w.elapsed {
		if !w.empty(readyList) {
			sn := uint32(readyList + 1)
			for i := w.sent[sn].next; i != sn; {
				e := w.at(i)
				if t := w.readyTick(e); t >= from {
					buf = append(buf, scanItem[T]{t, e.value})
				}
				w.visits++
				i = e.next
			}
		}
		next = w.elapsed + 1
		w.mu.Unlock()
		return buf, next, true
	}
	l, s, start, found := w.scanSlotLocked(from)
	if !found {
		if w.occupied[topLevel] != 0 {
			// The top level: its entries keep their full tick; take them all.
			for s := range numSlots {
				sn := uint32(topBase + s + 1)
				for i := w.sent[sn].next; i != sn; {
					e := w.at(i)
					if t := w.slotTick(e, 0); t >= from {
						buf = append(buf, scanItem[T]{t, e.value})
					}
					w.visits++
					i = e.next
				}
			}
		}
		w.mu.Unlock()
		return buf, 0, false
	}
	shift := uint(levelBits * l)
	end := start + uint64(1)<<shift
	if l == 0 { // one tick
		w.mu.Unlock()
		if !w.walkSlot(s, start, func(e *entry[T]) { buf = append(buf, scanItem[T]{start, e.value}) }) {
			return buf[:0], from, true
		}
		return buf, end, true
	}
	// The slot's first sub-list that holds ticks >= from (sub-list k
	// spans [start+k<<sub, +1<<sub)).
	sub := shift - levelBits
	ls := (l-1)*numSlots + s
	k := 0
	if from > start {
		k = int((from - start) >> sub) // < 64: from < end
	}
	m := w.subOcc[ls] &^ (uint64(1)<<k - 1)
	w.mu.Unlock()
	if m == 0 {
		return buf, end, true // nothing at ticks >= from left in the slot
	}
	k = bits.TrailingZeros64(m)
	return w.scanList(subBase+ls*numSlots+k, start, start+uint64(k)<<sub, sub, from, buf)
}

// scanList appends to buf the entries with tick >= from of list, a
// sub-list spanning [lo, lo+1<<span) of the slot whose first tick is
// start, or those of its earliest 64ths holding at least scanBatch such
// entries (so it walks list twice), and returns the first tick after what
// it covered. A list of one tick is copied whole in one walk. If the slot
// changed under it, it returns nothing and from.
func (w *Wheel[T]) scanList(list int, start, lo uint64, span uint, from uint64, buf []scanItem[T]) (_ []scanItem[T], next uint64, more bool) {
	end := lo + uint64(1)<<span
	if span == 0 {
		if !w.walkSlot(list, start, func(e *entry[T]) { buf = append(buf, scanItem[T]{lo, e.value}) }) {
			return buf[:0], from, true
		}
		return buf, end, true
	}
	sub := span - levelBits
	var counts [numSlots]int
	if !w.walkSlot(list, start, func(e *entry[T]) {
		if t := w.slotTick(e, start); t >= from {
			counts[(t-lo)>>sub]++
		}
	}) {
		return buf[:0], from, true
	}
	upTo, n := end, 0
	for k, c := range counts {
		if n += c; n >= scanBatch {
			upTo = lo + uint64(k+1)<<sub
			break
		}
	}
	if !w.walkSlot(list, start, func(e *entry[T]) {
		if t := w.slotTick(e, start); t >= from && t < upTo {
			buf = append(buf, scanItem[T]{t, e.value})
		}
	}) {
		return buf[:0], from, true
	}
	return buf, upTo, true
}

// scanSlotLocked finds the earliest slot below the top level that holds
// ticks >= from (from > elapsed): its level, index and first tick. Caller
// holds mu. O(levels).
func (w *Wheel[T]) scanSlotLocked(from uint64) (l, s int, start uint64, ok bool) {
	for l = range topLevel {
		occ := w.occupied[l]
		if occ == 0 {
			continue
		}
		shift := uint(levelBits * l)
		cur := int(w.elapsed>>shift) & slotMask
		levelStart := w.elapsed &^ (uint64(1)<<(shift+levelBits) - 1)
		// The slots after cur, from the first one whose range ends after
		// from (range of slot s: [levelStart+s<<shift, +1<<shift)).
		lo := cur + 1
		if from > levelStart {
			if fs := (from - levelStart) >> shift; fs > uint64(lo) {
				if fs > slotMask {
					continue // from lies past this level's slots
				}
				lo = int(fs)
			}
		}
		if lo > slotMask {
			continue
		}
		m := occ &^ (uint64(1)<<lo - 1)
		if m == 0 {
			continue
		}
		s = bits.TrailingZeros64(m)
		return l, s, levelStart + uint64(s)<<shift, true
	}
	return 0, 0, 0, false
}

// walkSlot calls visit with each entry of list, the slot whose first tick
// is start, holding mu while it visits at most scanChunk entries at a time.
// It returns false if the slot changed under it meanwhile (cascaded, or
// the entry to go on from was freed), true once it reached the end.
func (w *Wheel[T]) walkSlot(list int, start uint64, visit func(e *entry[T])) bool {
	sn := uint32(list + 1)
	w.mu.Lock()
	if w.elapsed >= start {
		w.mu.Unlock()
		return false
	}
	i := w.sent[sn].next
	for {
		k := 0
		for ; k < scanChunk && i != sn; k++ {
			e := w.at(i)
			visit(e)
			i = e.next
		}
		w.visits += uint64(k)
		if i == sn {
			w.mu.Unlock()
			return true
		}
		gen := w.at(i).gen
		w.mu.Unlock()
		runtime.Gosched() // let Adds waiting for the lock have it first
		w.mu.Lock()
		if e := w.at(i); w.elapsed >= start || e.gen != gen || e.gen&genLive == 0 {
			w.mu.Unlock()
			return false
		}
	}
}

// Get returns the value of the pending entry h, and false if h is zero,
// stale, handed out or cancelled (then Cancel(h) would return false too).
// O(1); safe for concurrent use.
func (w *Wheel[T]) Get(h Handle) (v T, ok bool) {
	i := uint32(h)
	if i == 0 {
		return v, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if i >= w.used {
		return v, false
	}
	e := w.at(i)
	if e.gen&^genFar != uint32(h>>32) || e.gen&genLive == 0 {
		return v, false
	}
	return e.value, true
}

// Sample calls fn with the values of up to n pending entries drawn
// uniformly at random (without replacement, up to collisions) from the
// wheel: for every pending entry if n >= Len. rnd returns random 64-bit
// numbers (e.g. math/rand/v2's Uint64). Cost: O(n) tries of slab slots
// while the slab is mostly live, at most 8n tries in all, under the lock
// (fn runs under it too: it must not call the wheel's methods); O(Len)
// when n >= Len. Safe for concurrent use otherwise.
func (w *Wheel[T]) Sample(n int, rnd func() uint64, fn func(v T)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if n <= 0 || w.n == 0 {
		return
	}
	span := uint64(w.used - firstEntry)
	if n >= w.n {
		for i := uint32(firstEntry); i < w.used; i++ {
			if e := w.at(i); e.gen&genLive != 0 {
				fn(e.value)
			}
		}
		return
	}
	got := 0
	for try := 0; try < 8*n && got < n; try++ {
		hi, _ := bits.Mul64(rnd(), span)
		e := w.at(firstEntry + uint32(hi))
		if e.gen&genLive != 0 {
			fn(e.value)
			got++
		}
	}
}
