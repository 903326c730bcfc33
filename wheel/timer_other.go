//go:build !linux

package wheel

import "time"

// preciseTimer is Linux only (timer_linux.go); elsewhere the driver uses a
// time.Timer.
type preciseTimer struct{ C chan time.Time }

func newPreciseTimer() *preciseTimer        { return nil }
func (t *preciseTimer) reset(time.Duration) {}
func (t *preciseTimer) stop()               {}
func (t *preciseTimer) close()              {}
