package pool

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Every submitted task runs once, no more than size run at a time, and a
// released pool refuses new tasks.
func TestPoolBoundsAndRelease(t *testing.T) {
	const size, tasks = 4, 200
	p, err := New(size, nil)
	if err != nil {
		t.Fatal(err)
	}
	var running, maxRunning, done atomic.Int64
	for i := 0; i < tasks; i++ {
		if err := p.Submit(func() {
			r := running.Add(1)
			for {
				m := maxRunning.Load()
				if r <= m || maxRunning.CompareAndSwap(m, r) {
					break
				}
			}
			time.Sleep(100 * time.Microsecond)
			running.Add(-1)
			done.Add(1)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Release(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if done.Load() != tasks {
		t.Fatalf("ran %d tasks, want %d", done.Load(), tasks)
	}
	if m := maxRunning.Load(); m > size {
		t.Fatalf("%d tasks ran at once, pool size %d", m, size)
	}
	if err := p.Submit(func() {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Release: %v, want ErrClosed", err)
	}
}

func TestPoolPanicRecovered(t *testing.T) {
	got := make(chan any, 1)
	p, err := New(1, func(v any) { got <- v })
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(time.Second)
	if err := p.Submit(func() { panic("boom") }); err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-got:
		if v != "boom" {
			t.Fatalf("panic value %v", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("panic handler not called")
	}
}

// Running counts tasks running now, not idle workers ants keeps alive.
func TestRunningCountsTasks(t *testing.T) {
	p, err := New(4, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Release(time.Second)
	release := make(chan struct{})
	var started sync.WaitGroup
	started.Add(2)
	for range 2 {
		if err := p.Submit(func() { started.Done(); <-release }); err != nil {
			t.Fatal(err)
		}
	}
	started.Wait()
	if n := p.Running(); n != 2 {
		t.Fatalf("Running() = %d with 2 tasks running", n)
	}
	close(release)
	for deadline := time.Now().Add(5 * time.Second); p.Running() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("Running() = %d after the tasks ended", p.Running())
		}
	}
}

// Release against concurrent Submits: a Submit waiting for a worker
// returns ErrClosed, and no task starts after Release returned nil.
func TestReleaseWithConcurrentSubmits(t *testing.T) {
	for round := range 20 {
		p, err := New(2, nil)
		if err != nil {
			t.Fatal(err)
		}
		var released atomic.Bool
		var late atomic.Int64
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					err := p.Submit(func() {
						if released.Load() {
							late.Add(1)
						}
						time.Sleep(50 * time.Microsecond)
					})
					if err != nil {
						if !errors.Is(err, ErrClosed) {
							t.Errorf("Submit: %v", err)
						}
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(round%5) * time.Millisecond)
		if err := p.Release(5 * time.Second); err != nil {
			t.Fatalf("round %d: Release: %v", round, err)
		}
		released.Store(true)
		wg.Wait() // every Submit, blocked or not, returned
		if n := late.Load(); n != 0 {
			t.Fatalf("round %d: %d tasks started after Release returned nil", round, n)
		}
		if err := p.Release(time.Second); !errors.Is(err, ErrClosed) {
			t.Fatalf("second Release: %v, want ErrClosed", err)
		}
	}
}
