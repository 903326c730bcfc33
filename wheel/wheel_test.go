package wheel

import (
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is an injectable clock for tests.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() int64 { return c.ns.Load() }

func TestPanicsOnTinyTick(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	New[int](Options{Tick: time.Nanosecond})
}
