package wheel

import (
	"cmp"
	"math/bits"
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
// Cost: O(levels) per slot it visits, plus O(k log k) for a slot of k
// entries, which it copies (under the lock) and sorts (without it) before
// passing them to fn; it never walks slots past the one where fn says
// stop, but it does walk all of that slot: a level-L slot spans 64^L ticks
// (at 1 ms: level 1 64 ms, level 2 4 s, level 3 4.4 min), so a scan that
// stops early in a crowded coarse slot still pays for the whole slot. Top
// level entries are copied all at once (they are due 2^36 ticks or more
// ahead). Memory: one slice of the largest slot's entries, reused.
//
// Concurrency: safe for concurrent use with every other method; the lock
// is held only while one slot is copied, never while fn runs, so fn may
// call Add and Cancel. Scan is not a snapshot: an entry added, cancelled,
// handed out or cascaded while Scan runs may or may not be passed; every
// entry that stays pending, with the same due, throughout the scan is
// passed exactly once (each step starts from the next tick not yet passed,
// wherever cascading has moved its entries meanwhile).
func (w *Wheel[T]) Scan(from int64, fn func(due int64, v T) bool) {
	fromTick := w.dueTick(from)
	var buf []scanItem[T]
	for {
		w.mu.Lock()
		var next uint64
		var more bool
		buf, next, more = w.scanStepLocked(fromTick, buf[:0])
		w.mu.Unlock()
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

// scanStepLocked appends to buf the entries with tick >= from of the
// earliest list (the ready list or a slot) that holds ticks >= from, and
// returns the first tick after that list's range; more is false if no list
// holds such ticks. Caller holds mu.
func (w *Wheel[T]) scanStepLocked(from uint64, buf []scanItem[T]) (_ []scanItem[T], next uint64, more bool) {
	if from <= w.elapsed {
		if !w.empty(readyList) {
			sn := uint32(readyList + 1)
			for i := w.sent[sn].next; i != sn; {
				e := w.at(i)
				if t := w.readyTick(e); t >= from {
					buf = append(buf, scanItem[T]{t, e.value})
				}
				i = e.next
			}
		}
		return buf, w.elapsed + 1, true
	}
	for l := range topLevel {
		shift := uint(levelBits * l)
		occ := w.occupied[l]
		if occ == 0 {
			continue
		}
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
		s := bits.TrailingZeros64(m)
		start := levelStart + uint64(s)<<shift
		sn := uint32(l*numSlots + s + 1)
		for i := w.sent[sn].next; i != sn; {
			e := w.at(i)
			if t := w.slotTick(e, start); t >= from {
				buf = append(buf, scanItem[T]{t, e.value})
			}
			i = e.next
		}
		return buf, start + uint64(1)<<shift, true
	}
	if w.occupied[topLevel] == 0 {
		return buf, 0, false
	}
	// The top level: its entries keep their full tick; take them all.
	for s := range numSlots {
		sn := uint32(topLevel*numSlots + s + 1)
		for i := w.sent[sn].next; i != sn; {
			e := w.at(i)
			if t := w.slotTick(e, 0); t >= from {
				buf = append(buf, scanItem[T]{t, e.value})
			}
			i = e.next
		}
	}
	return buf, 0, false
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
