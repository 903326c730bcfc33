package deferd

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/deferd/deferd/wheel"
)

// fakeClock is a testClock that moves only when the test says: the wall
// clock (unix ns) and the wheel's (mono ns) advance together from their
// starts. Safe for concurrent use.
type fakeClock struct {
	wall0, mono0 int64
	off          atomic.Int64
}

// newFakeClock starts at wall. Its wheel clock starts at an arbitrary
// other value, so a test that mixes up the two clocks sees it.
func newFakeClock(wall time.Time) *fakeClock {
	return &fakeClock{wall0: wall.UnixNano(), mono0: 1 << 40}
}

func (c *fakeClock) Now() int64              { return c.mono0 + c.off.Load() }
func (c *fakeClock) WallNs() int64           { return c.wall0 + c.off.Load() }
func (c *fakeClock) nowMs() int64            { return c.WallNs() / int64(time.Millisecond) }
func (c *fakeClock) add(d time.Duration)     { c.off.Add(int64(d)) }
func (c *fakeClock) time() time.Time         { return time.Unix(0, c.WallNs()) }
func (c *fakeClock) set(o *Options) *Options { o.clock = c; return o }

// advance moves the fake clock the Scheduler runs on (Options.clock) by d,
// then does what the wheel's driver does at a tick, synchronously: hands
// every bucket due at the new time to the pool, in publish tasks as
// dispatch splits them, and waits for those tasks to finish. A task that
// puts messages back into the wheel (a retry) leaves them due later. Call
// it from one goroutine at a time.
func (s *Scheduler) advance(d time.Duration) {
	s.opts.clock.(*fakeClock).add(d)
	var tasks sync.WaitGroup
	submit := func(f func()) error {
		tasks.Add(1)
		err := s.pool.Submit(func() {
			defer tasks.Done()
			f()
		})
		if err != nil {
			tasks.Done()
		}
		return err
	}
	s.w.Poll(s.w.Now(), func(b *wheel.Batch[ref]) { s.dispatchBatch(b, submit) })
	tasks.Wait()
}

// compactAll runs compaction passes, as compactLoop does at its tick,
// until no segment is worth compacting or a pass moves nothing. It
// returns the messages moved.
func (s *Scheduler) compactAll() (moved int, err error) {
	for {
		seg, ok := s.j.Compactable()
		if !ok {
			return moved, nil
		}
		n, err := s.compact(seg)
		moved += n
		if err != nil || n == 0 {
			return moved, err
		}
	}
}
