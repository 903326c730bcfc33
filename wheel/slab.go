package wheel

import (
	"math"
	"math/bits"
)

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
// readyTick). It marks the list occupied. Caller holds mu.
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
	switch l {
	case 0:
		return s, false, t
	case topLevel:
		return topBase + s, true, t
	}
	ls := (l-1)*numSlots + s
	sub := int(t>>(levelBits*(l-1))) & slotMask
	w.subOcc[ls] |= 1 << sub
	return subBase + ls*numSlots + sub, false, t
}

// unlink removes e from its list, clearing the list's occupancy bits if
// it is left empty. Caller holds mu.
func (w *Wheel[T]) unlink(e *entry[T]) {
	p, n := e.prev, e.next
	w.at(p).next = n
	w.at(n).prev = p
	if p == n && p < firstEntry { // only the sentinel is left
		w.emptied(int(p) - 1)
	}
}

// emptied clears the occupancy bits of list, which has just been left
// empty: its sub-list bit and, with the last sub-list of a slot, the
// slot's bit. Caller holds mu.
func (w *Wheel[T]) emptied(list int) {
	switch {
	case list < subBase:
		w.occupied[0] &^= 1 << list
	case list < topBase:
		ls := (list - subBase) >> levelBits
		w.subOcc[ls] &^= 1 << (list & slotMask) // subBase is a multiple of 64
		if w.subOcc[ls] == 0 {
			w.occupied[1+ls>>levelBits] &^= 1 << (ls & slotMask)
		}
	case list < readyList:
		w.occupied[topLevel] &^= 1 << (list - topBase)
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
	w.emptied(list)
	return first, sn
}

// cascade re-inserts every entry of slot s of level l > 0, whose first
// tick start has just been processed, at a finer level (or, at the top
// level, parks it again if still out of range): the sub-lists in time
// order, so entries due in the same tick keep their order. None lands in
// the slot itself below the top level. Caller holds mu.
func (w *Wheel[T]) cascade(l, s int, start uint64) {
	if l == topLevel {
		w.replace(topBase+s, start)
		return
	}
	ls := (l-1)*numSlots + s
	for m := w.subOcc[ls]; m != 0; m &= m - 1 {
		w.replace(subBase+ls*numSlots+bits.TrailingZeros64(m), start)
	}
}

// replace detaches list, of a slot starting at tick start, and places
// each of its entries anew. Caller holds mu.
func (w *Wheel[T]) replace(list int, start uint64) {
	i, sn := w.detach(list)
	for i != sn {
		e := w.at(i)
		next := e.next
		w.place(i, e, w.slotTick(e, start))
		i = next
	}
}
