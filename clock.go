package deferd

import (
	"math"
	"time"

	"github.com/deferd/deferd/internal/sat"
)

// Due times are wall-clock unix milliseconds (as at= gives them and the
// journal keeps them); the wheel runs on its own monotonic clock. These
// convert one to the other when a message enters the wheel.

// testClock is a clock a test runs a Scheduler on (Options.clock, set only
// by export_test.go): Now is the wheel's clock (wheel.Clock, monotonic ns),
// WallNs the wall clock (unix ns) that replaces time.Now. With one, New
// starts no wheel driver: the test moves the clock and polls the wheel.
// It must be safe for concurrent use.
type testClock interface {
	Now() int64
	WallNs() int64
}

// clocks is where the Scheduler and its index read the wall clock. The
// zero value reads the real one at the cost of time.Now plus a nil check
// and a call (now and nowNs do not inline), paid per Publish call, task
// and sink call, not per message; fake is Options.clock. Safe for
// concurrent use.
type clocks struct{ fake testClock }

// now is the wall clock: time.Now, or the test's.
func (c clocks) now() time.Time {
	if c.fake != nil {
		return time.Unix(0, c.fake.WallNs())
	}
	return time.Now()
}

// nowNs is now in unix ns.
func (c clocks) nowNs() int64 {
	if c.fake != nil {
		return c.fake.WallNs()
	}
	return time.Now().UnixNano()
}

// nowMs is now in unix ms.
func (c clocks) nowMs() int64 { return c.nowNs() / int64(time.Millisecond) }

// wheelDue converts a due time in unix milliseconds to the wheel's clock.
// It reads the wall clock before the wheel's: a pause between the two reads
// then makes the message that much late, never early.
func (s *Scheduler) wheelDue(dueMs int64) int64 {
	wall := s.clk.nowNs()
	return wheelTime(s.w.Now(), wall, dueMs)
}

// wheelTime is dueMs (unix ms) on the wheel clock, given a reading mono of
// the wheel clock and one wall (unix ns) of the wall clock, saturated to
// the int64 range: a due time beyond it (292 years after the wheel's zero)
// stays pending instead of wrapping into the past.
func wheelTime(mono, wall, dueMs int64) int64 {
	const maxMs = math.MaxInt64 / int64(time.Millisecond)
	const minMs = math.MinInt64 / int64(time.Millisecond)
	if dueMs > maxMs {
		return math.MaxInt64
	}
	if dueMs < minMs {
		return math.MinInt64
	}
	return sat.Add(mono, sat.Add(dueMs*int64(time.Millisecond), -wall))
}

// ceilMs is ns rounded up to whole milliseconds: never early.
func ceilMs(ns int64) int64 { return (ns + 999_999) / 1_000_000 }
