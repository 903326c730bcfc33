package pool

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/panjf2000/ants/v2"
)

// ErrClosed is returned by Submit after Release.
var ErrClosed = ants.ErrPoolClosed

// Pool is a fixed-size pool of goroutines that run publish tasks, backed by
// ants. Submit blocks while every worker is busy, so a slow broker turns
// into backpressure on the caller (deferd's wheel driver) rather than into
// an unbounded queue of goroutines.
//
// A Pool is safe for concurrent use. The zero value is not usable; call New.
// A task must not Submit to its own pool (it could wait for itself).
type Pool struct {
	p    *ants.Pool
	busy atomic.Int64 // tasks running now
}

// New starts a pool of at most size workers. Idle workers are reclaimed
// after a few seconds; a panic in a task is recovered and passed to
// onPanic (which may be nil).
func New(size int, onPanic func(any)) (*Pool, error) {
	if size <= 0 {
		return nil, errors.New("pool: size must be > 0")
	}
	opts := []ants.Option{
		ants.WithExpiryDuration(10 * time.Second),
		ants.WithPreAlloc(false),
	}
	if onPanic != nil {
		opts = append(opts, ants.WithPanicHandler(onPanic))
	}
	p, err := ants.NewPool(size, opts...)
	if err != nil {
		return nil, err
	}
	return &Pool{p: p}, nil
}

// Submit runs task on a worker, blocking while all workers are busy. It
// returns ErrClosed once the pool is released. Cost: one channel handoff
// to a parked worker and one small allocation (the task wrapped to count
// it in Running); no goroutine creation in steady state.
func (p *Pool) Submit(task func()) error {
	return p.p.Submit(func() {
		p.busy.Add(1)
		defer p.busy.Add(-1) // also when task panics
		task()
	})
}

// Running is the number of tasks running now. (ants' own count includes
// idle workers not yet reclaimed.)
func (p *Pool) Running() int { return int(p.busy.Load()) }

// Cap is the pool's size.
func (p *Pool) Cap() int { return p.p.Cap() }

// Waiting is the number of Submit calls blocked for a free worker.
func (p *Pool) Waiting() int { return p.p.Waiting() }

// Release stops accepting tasks and waits up to timeout for the running
// ones to finish. It returns an error if some were still running.
func (p *Pool) Release(timeout time.Duration) error { return p.p.ReleaseTimeout(timeout) }
