package wheel

import (
	"testing"
	"time"
)

// A preciseTimer fires once per reset, not after stop, and close ends it.
// Times are not asserted: only that it fires, and not before its time.
func TestPreciseTimer(t *testing.T) {
	pt := newPreciseTimer()
	if pt == nil {
		t.Skip("no timerfd on this system")
	}
	defer pt.close()
	for range 3 {
		start := time.Now()
		pt.reset(2 * time.Millisecond)
		at := <-pt.C
		if at.Sub(start) < 2*time.Millisecond {
			t.Fatalf("fired %v after reset, before its 2ms", at.Sub(start))
		}
	}
	pt.reset(time.Hour)
	pt.stop()
	select {
	case <-pt.C:
		t.Fatal("a stopped timer fired")
	default:
	}
}

// The default clock's multiples of the tick fall tickPhase past
// multiples of the tick in Unix time, and New's origin is one of them.
func TestMonoClockPhase(t *testing.T) {
	for _, tick := range []time.Duration{time.Millisecond, 7 * time.Microsecond, time.Second} {
		c := newMonoClock(tick)
		if got, want := c.base.UnixNano()%int64(tick), int64(tickPhase)%int64(tick); got != want {
			t.Errorf("tick %v: base %d past a multiple, want %d", tick, got, want)
		}
		if now := c.Now(); now < 0 || now > int64(tick)+int64(time.Second) {
			t.Errorf("tick %v: clock reads %d at start", tick, now)
		}
		w := New[int](Options{Tick: tick})
		if w.origin%int64(tick) != 0 {
			t.Errorf("tick %v: origin %d not a multiple", tick, w.origin)
		}
	}
}
