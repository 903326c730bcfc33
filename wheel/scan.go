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
// copies and sorts (k log k) before passing them to fn. A level-0 slot (one
// tick) is copied whole. A coarser slot (a level-L slot spans 64^L ticks:
// at 1 ms, level 1 64 ms, level 2 4 s, level 3 4.4 min) is walked twice per
// step: once to count its entries per 64th of its span, once to copy those
// of its earliest 64ths holding at least 4096 entries (or all of them); so
// a scan that stops early in a slot of k entries costs O(k) walking plus
// O(k/64) copying, not O(k log k). Top level entries (due 2^36 ticks or
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
// list (the ready list or a slot) that holds ticks >= from, or of the
// first part of it, and returns the first tick after what it covered; more
// is false if no list holds such ticks. A step that found its slot
// changed under it returns nothing, from and true: Scan tries again.
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
				sn := uint32(topLevel*numSlots + s + 1)
				for i := w.sent[sn].next; i != sn; {
					e := w.at(i)
					if t := w.slotTick(e, 0); t >= from {
						buf = append(buf, scanItem[T]{t, e.value})
					}
					i = e.next
				}
			}
		}
		w.mu.Unlock()
		return buf, 0, false
	}
	w.mu.Unlock()
	shift := uint(levelBits * l)
	list := l*numSlots + s
	end := start + uint64(1)<<shift
	if l == 0 { // one tick
		if !w.walkSlot(list, start, func(e *entry[T]) { buf = append(buf, scanItem[T]{start, e.value}) }) {
			return buf[:0], from, true
		}
		return buf, end, true
	}
	sub := shift - levelBits
	var counts [numSlots]int
	if !w.walkSlot(list, start, func(e *entry[T]) {
		if t := w.slotTick(e, start); t >= from {
			counts[(t-start)>>sub]++
		}
	}) {
		return buf[:0], from, true
	}
	upTo, n := end, 0
	for k, c := range counts {
		if n += c; n >= scanBatch {
			upTo = start + uint64(k+1)<<sub
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
		for k := 0; k < scanChunk && i != sn; k++ {
			e := w.at(i)
			visit(e)
			i = e.next
		}
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
