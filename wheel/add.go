package wheel

import (
	"time"

	"github.com/deferd/deferd/internal/sat"
)

// Add schedules v to be handed out at or after due, at most one tick plus
// scheduling noise late.
//
// due is on the wheel's clock, NOT Unix time: nanoseconds of Options.Clock,
// whose default counts from about 0 at New (see Now). Passing
// time.Now().UnixNano() compiles and schedules v some 56 years out. For a
// time.Time use AddAt; for a delay use AddAfter.
//
// A due in the past fires at the next Poll. O(1); no allocation in steady
// state (the slab grows by a 64Ki-entry chunk when full, the side slice of
// top-level ticks by append). Safe for concurrent use. If due is earlier
// than the sleeping Run driver's planned wake-up, the driver is woken. It
// panics if 2^32-1 entries are pending, with the wheel left as it was.
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
		list := s // level 0
		if l > 0 {
			ls := (l-1)*numSlots + s
			sub := int(t>>(levelBits*(l-1))) & slotMask
			w.subOcc[ls] |= 1 << sub
			list = subBase + ls*numSlots + sub
		}
		sn := uint32(list + 1)
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

// AddBatch schedules every values[i] at due (wheel clock ns, as for Add),
// as len(values) calls of Add would, in that order, and stores their
// handles in hs[i]; it panics if len(hs) < len(values). It takes the lock
// once and computes the slot once, so it costs less per entry than Add.
// O(len(values)); no allocation in steady state; safe for concurrent use.
// Like Add it panics, adding none of values, if they do not all fit.
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

// AddAfter schedules v to be handed out d from now: Add(w.Now()+d, v), the
// sum saturating at math.MaxInt64 (and math.MinInt64) instead of wrapping.
// A d <= 0 fires at the next Poll. O(1); no allocation in steady state;
// safe for concurrent use.
func (w *Wheel[T]) AddAfter(d time.Duration, v T) Handle {
	return w.Add(sat.Add(w.Now(), int64(d)), v)
}

// AddAt schedules v to be handed out at or after t: it converts t to the
// wheel clock (see wheelTime) and calls Add. The entry is never handed out
// before time.Now() reaches t (measured as t.Sub does, so on the monotonic
// clock if t has a reading of it, as time.Now().Add(d) does), provided the
// wheel's Clock runs at real speed, as the default one does; it is at most
// one tick plus scheduling noise late. A t in the past fires at the next
// Poll; a t too far ahead for the wheel clock saturates to math.MaxInt64
// instead of wrapping into the past. O(1); no allocation in steady state;
// safe for concurrent use.
func (w *Wheel[T]) AddAt(t time.Time, v T) Handle {
	return w.Add(wheelTime(w.clock, t), v)
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
