package wheel

import (
	"math"
	"math/bits"
	"time"

	"github.com/deferd/deferd/internal/sat"
)

type monoClock struct{ base time.Time }

// tickPhase is how far past a multiple of the tick in Unix time the ticks
// of a wheel on the default clock fall: a due time on such a multiple
// (deferd's are whole ms, as its default tick is) then goes out tickPhase
// after it, not up to a tick after it. It covers the gap between a
// caller's reads of the wall clock and of the wheel clock (the wall clock
// first: wheelTime, deferd's wheelDue) that converts a due time.
const tickPhase = 10 * time.Microsecond

// newMonoClock returns the default clock: monotonic, its zero tickPhase
// past a multiple of tick in Unix time, a tick or less ago, so that the
// multiples of tick on it (New's origin) are too. The two clocks move
// together (NTP slews both); a step of the wall clock only shifts the
// phase (never early either way: due times are converted when added).
func newMonoClock(tick time.Duration) monoClock {
	now := time.Now()
	off := (now.UnixNano() - int64(tickPhase)) % int64(tick)
	if off < 0 {
		off += int64(tick)
	}
	return monoClock{base: now.Add(-time.Duration(off))}
}

// alignOrigin is now, a reading of a clock from newMonoClock, rounded
// down to a multiple of tick: New's origin on the default clock.
func alignOrigin(now int64, tick time.Duration) int64 { return now - now%int64(tick) }

func (c monoClock) Now() int64 { return int64(time.Since(c.base)) }

// Now returns the wheel clock: nanoseconds of Options.Clock (by default a
// monotonic clock that reads at most a tick when New is called), the clock Add's
// due and Item.Due are on. It is not Unix time. O(1); safe for concurrent
// use.
func (w *Wheel[T]) Now() int64 { return w.clock.Now() }

// dueTick is ceil((due-origin)/tick), 0 for a due at or before the origin.
func (w *Wheel[T]) dueTick(due int64) uint64 {
	if due <= w.origin {
		return 0
	}
	t, r := w.divTick(uint64(due) - uint64(w.origin)) // exact: due > origin
	if r != 0 {
		t++
	}
	return t
}

// divTick is d/tick and d%tick. Fast path of Add: a multiply by the
// precomputed inverse instead of a 64-bit DIV. The estimate is at most 2
// below the quotient and never above it, so a short fix-up makes it exact.
func (w *Wheel[T]) divTick(d uint64) (q, r uint64) {
	q, _ = bits.Mul64(d, w.tickInv)
	r = d - q*w.tick
	for r >= w.tick {
		q++
		r -= w.tick
	}
	return q, r
}

// nowTick is floor((now-origin)/tick): the last tick whose time has come.
func (w *Wheel[T]) nowTick(now int64) uint64 {
	if now <= w.origin {
		return 0
	}
	q, _ := w.divTick(uint64(now) - uint64(w.origin))
	return q
}

// tickTime is the wheel-clock time of tick t, clamped to math.MaxInt64.
func (w *Wheel[T]) tickTime(t uint64) int64 {
	hi, lo := bits.Mul64(t, w.tick)
	if hi != 0 {
		return math.MaxInt64
	}
	if w.origin < 0 {
		neg := -uint64(w.origin) // |origin|, 2^63 included
		if lo < neg {
			return w.origin + int64(lo) // lo < 2^63: no overflow
		}
		lo -= neg
		if lo > math.MaxInt64 {
			return math.MaxInt64
		}
		return int64(lo)
	}
	if lo > math.MaxInt64-uint64(w.origin) {
		return math.MaxInt64
	}
	return w.origin + int64(lo)
}

// wheelTime converts t to clock c: c's now plus t's distance from the wall
// clock's now, saturating instead of wrapping. The wall clock is read
// first, so a pause between the two reads moves the result later, never
// earlier.
func wheelTime(c Clock, t time.Time) int64 {
	wall := time.Now()
	now := c.Now()
	return sat.Add(now, int64(t.Sub(wall))) // Sub saturates too
}
