package pool

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/ants/v2"
)

// ErrClosed is returned by Submit after Release.
var ErrClosed = ants.ErrPoolClosed

// ErrTimeout is returned by Release when tasks were still running at its
// timeout.
var ErrTimeout = ants.ErrTimeout

// Pool is a fixed-size pool of goroutines that run publish tasks, backed by
// ants. Submit blocks while every worker is busy, so a slow broker turns
// into backpressure on the caller (deferd's wheel driver) rather than into
// an unbounded queue of goroutines.
//
// The pool counts its tasks itself rather than leaving Release to ants:
// ants checks for a released pool once, before it takes a worker, so a
// Submit racing with Release could start its task after Release had
// reported that nothing was running, or stay blocked after it.
//
// A Pool is safe for concurrent use. The zero value is not usable; call New.
// A task must not Submit to its own pool (it could wait for itself).
type Pool struct {
	p       *ants.Pool
	slots   chan struct{} // one per accepted, unfinished task: at most size
	closing chan struct{} // closed by Release: wakes Submits waiting for a slot

	mu     sync.RWMutex // Submit holds it for reading to accept a task
	closed bool
	tasks  sync.WaitGroup // accepted tasks not finished

	busy    atomic.Int64 // tasks running now
	waiting atomic.Int64 // Submits waiting for a slot
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
	// The slots bound the tasks at size. ants gets twice as many workers:
	// a task gives its slot back just before its worker is idle again, and
	// the Submit that takes the slot should not wait for that worker.
	p, err := ants.NewPool(2*size, opts...)
	if err != nil {
		return nil, err
	}
	return &Pool{p: p, slots: make(chan struct{}, size), closing: make(chan struct{})}, nil
}

// Submit runs task on a worker, blocking while size tasks run. It returns
// ErrClosed once Release has been called (also to a Submit blocked
// waiting). Cost: a channel send for the slot, one handoff to a parked
// worker and one small allocation (the task wrapped to count it); no
// goroutine creation in steady state.
func (p *Pool) Submit(task func()) error {
	select {
	case p.slots <- struct{}{}:
	default:
		p.waiting.Add(1)
		select {
		case p.slots <- struct{}{}:
			p.waiting.Add(-1)
		case <-p.closing:
			p.waiting.Add(-1)
			return ErrClosed
		}
	}
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		<-p.slots
		return ErrClosed
	}
	p.tasks.Add(1)
	p.mu.RUnlock()
	err := p.p.Submit(func() {
		p.busy.Add(1)
		defer func() { // also when task panics
			p.busy.Add(-1)
			<-p.slots
			p.tasks.Done()
		}()
		task()
	})
	if err != nil { // ants closed after Release's timeout
		<-p.slots
		p.tasks.Done()
		return ErrClosed
	}
	return nil
}

// Running is the number of tasks running now.
func (p *Pool) Running() int { return int(p.busy.Load()) }

// Cap is the pool's size.
func (p *Pool) Cap() int { return cap(p.slots) }

// Waiting is the number of Submit calls blocked for a free worker.
func (p *Pool) Waiting() int { return int(p.waiting.Load()) }

// Release stops accepting tasks (waiting Submits return ErrClosed) and
// waits up to timeout for the accepted ones to finish. It returns
// ErrTimeout if some were still running, ErrClosed if the pool was already
// released. A task accepted before Release either has finished when it
// returns nil or is reported by ErrTimeout; none is accepted after.
func (p *Pool) Release(timeout time.Duration) error {
	p.mu.Lock()
	already := p.closed
	p.closed = true
	p.mu.Unlock()
	if already {
		return ErrClosed
	}
	close(p.closing)
	done := make(chan struct{})
	go func() { // ends when the last accepted task does
		p.tasks.Wait()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case <-done:
	case <-t.C:
		err = ErrTimeout
	}
	p.p.Release()
	return err
}
