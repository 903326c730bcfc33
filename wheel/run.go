package wheel

import (
	"math"
	"time"
)

// maxSleep bounds one driver sleep; the driver simply re-plans after it.
const maxSleep = time.Hour

// sleepFor is how long the driver sleeps to wake at tick d (maxSleep if
// !ok: nothing pending): 0 if d's time has come. It reads the Clock, so
// call it without the lock held.
func (w *Wheel[T]) sleepFor(d uint64, ok bool) time.Duration {
	if !ok {
		return maxSleep
	}
	wakeAt, now := w.tickTime(d), w.Now()
	switch {
	case wakeAt <= now:
		return 0 // already due: go round again
	case wakeAt-now > 0 && wakeAt-now < int64(maxSleep): // else overflow or far
		return time.Duration(wakeAt - now)
	}
	return maxSleep
}

// Run is the tickless driver. The owner calls it on its own goroutine; it
// sends each due batch on out (blocking send, so a slow consumer means
// backpressure, not loss) until stop is closed. It returns the batch it could
// not send because stop closed (nil if none) so the owner decides its fate.
//
// Between batches it sleeps on a timer until the next occupied slot's
// deadline (found through per-level occupancy bitmaps), so pending entries
// far ahead cost no CPU; an Add due before the planned wake-up wakes it.
// On Linux a timerfd (timer_linux.go) also wakes it, within tens of µs of
// the tick, where a time.Timer alone may wake it up to 1 ms late in an
// otherwise idle process. Run
// sleeps in real time: with an injected Clock it assumes that clock runs at
// real speed. Cost: O(due entries) amortised plus O(levels) per wake-up; no
// CPU while nothing is due. Safe to run concurrently with every other method;
// run at most one driver per wheel.
func (w *Wheel[T]) Run(stop <-chan struct{}, out chan<- *Batch[T]) *Batch[T] {
	return drive([]*Wheel[T]{w}, nil, stop, out)
}

// drive is Run for wheels that share a clock, origin, tick and wake
// channel: a Wheel alone, or the shards of a Sharded wheel, whose batches
// recode turns to the Sharded handles. It drains every wheel up to now,
// then sleeps until the earliest tick any of them needs.
func drive[T any](shards []*Wheel[T], recode func(*Batch[T], uint32), stop <-chan struct{}, out chan<- *Batch[T]) *Batch[T] {
	// Both timers are armed for each sleep and the first to fire wakes
	// the driver: the timerfd in an idle process (the time.Timer would be
	// up to 1 ms late), the time.Timer in a busy one (the runtime checks
	// timers at every scheduling point, but polls the timerfd's readiness
	// only when a P has nothing else to run, or every 10 ms).
	timer := time.NewTimer(maxSleep)
	defer timer.Stop()
	pt := newPreciseTimer()
	var ptC chan time.Time // nil without a timerfd: never ready
	if pt != nil {
		defer pt.close()
		ptC = pt.C
	}
	first := shards[0]
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		if b := deliver(shards, recode, stop, out); b != nil {
			return b
		}
		d, ok := plan(shards)
		if sleep := first.sleepFor(d, ok); sleep > 0 {
			timer.Reset(sleep)
			if pt != nil {
				pt.reset(sleep)
			}
			select {
			case <-stop:
				for _, sh := range shards {
					sh.mu.Lock()
					sh.planned = 0
					sh.mu.Unlock()
				}
				return nil
			case <-timer.C:
			case <-ptC: // maybe stale: deliver and plan re-check the time
			case <-first.wake:
			}
			timer.Stop()
			if pt != nil {
				pt.stop()
			}
		}
	}
}

// deliver sends every batch due now of each shard in turn on out, and
// returns the batch it could not send because stop closed (nil once all
// due batches are sent). It marks each shard's driver awake.
func deliver[T any](shards []*Wheel[T], recode func(*Batch[T], uint32), stop <-chan struct{}, out chan<- *Batch[T]) *Batch[T] {
	first := shards[0]
	nowTick := first.nowTick(first.Now())
	for s, sh := range shards {
		for {
			sh.mu.Lock()
			sh.planned = 0 // awake: Adds need not wake us until we plan again
			b := sh.collect(nowTick)
			sh.mu.Unlock()
			if b == nil {
				break
			}
			if recode != nil {
				recode(b, uint32(s))
			}
			select {
			case out <- b:
			case <-stop:
				return b
			}
		}
	}
	return nil
}

// plan returns the earliest tick any shard needs (false if none holds an
// entry) and records it as the driver's planned wake-up. Pass one sets each
// shard's planned to its own next tick under its lock, so from then on an
// Add due before it wakes the driver; pass two lowers them all to the
// earliest, so Adds between it and a shard's own next do not wake the
// driver for nothing.
func plan[T any](shards []*Wheel[T]) (d uint64, ok bool) {
	d = math.MaxUint64
	for _, sh := range shards {
		sh.mu.Lock()
		sd, sok := sh.elapsed, true
		if sh.empty(readyList) { // an Add since the drain may have put entries there
			sd, _, _, sok = sh.nextExpiration()
		}
		if sok {
			sh.planned = sd
			d, ok = min(d, sd), true
		} else {
			sh.planned = math.MaxUint64
		}
		sh.mu.Unlock()
	}
	for _, sh := range shards {
		sh.mu.Lock()
		sh.planned = min(sh.planned, d)
		sh.mu.Unlock()
	}
	return d, ok
}
