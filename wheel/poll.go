package wheel

import (
	"math/bits"
)

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
		if l == 0 {
			return w.drain(s)
		}
		// Cascade: re-insert each entry at a finer level; those due now land
		// on the ready list, handed out on the next iteration.
		w.cascade(l, s, deadline)
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
