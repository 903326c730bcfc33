package wheel

import (
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"
)

// TestRunRealClock drives the wheel with Run on the real clock: every entry
// arrives exactly once, never early, and stop makes Run return.
func TestRunRealClock(t *testing.T) {
	w := New[int](Options{})
	out := make(chan *Batch[int])
	stop := make(chan struct{})
	done := make(chan *Batch[int])
	go func() { done <- w.Run(stop, out) }()

	const n = 300
	want := map[Handle]int64{}
	for i := range n {
		d := time.Duration(rand.IntN(80_000)) * time.Microsecond
		if i%50 == 0 {
			d = -time.Millisecond // already due
		}
		due := w.Now() + int64(d)
		want[w.Add(due, i)] = due
	}
	expectRun(t, w, w.Now, func() int64 { return int64(w.Len()) }, out, stop, done, want, nil)
}

// expectRun receives from Run's out until every entry in want (handle ->
// due given to Add) has arrived exactly once, with its Due rounded up to
// its tick (as tw computes it), never early by clock(), and (if vals is not
// nil) with its value; then checks length() is 0, closes stop and checks
// Run returns nil.
func expectRun(t *testing.T, tw *Wheel[int], clock, length func() int64, out chan *Batch[int], stop chan struct{}, done chan *Batch[int], want map[Handle]int64, vals map[Handle]int) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case b := <-out:
			now := clock()
			for _, it := range b.Items {
				due, ok := want[it.Handle]
				if !ok || (vals != nil && vals[it.Handle] != it.Value) {
					t.Fatalf("unexpected or duplicate item %+v", it)
				}
				if tw.tickTime(tw.dueTick(due)) != it.Due { // rounded up to the tick
					t.Fatalf("item %+v: due %d", it, due)
				}
				if now < it.Due {
					t.Fatalf("item fired %v early", time.Duration(it.Due-now))
				}
				delete(want, it.Handle)
			}
			b.Release()
		case <-deadline:
			t.Fatalf("%d entries never arrived", len(want))
		}
	}
	if n := length(); n != 0 {
		t.Fatalf("Len() = %d after all fired", n)
	}
	close(stop)
	select {
	case b := <-done:
		if b != nil {
			t.Fatalf("Run returned a batch %+v with nothing pending", b.Items)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after stop")
	}
}

// TestRunReturnsUndelivered: when nobody receives, Run hands back the batch
// it was blocked sending once stop closes.
func TestRunReturnsUndelivered(t *testing.T) {
	w := New[int](Options{})
	out := make(chan *Batch[int]) // never read
	stop := make(chan struct{})
	done := make(chan *Batch[int])
	h := w.Add(w.Now(), 7)
	go func() { done <- w.Run(stop, out) }()
	// Wait until Run has collected the entry (it is no longer pending).
	for w.Len() != 0 {
		time.Sleep(time.Millisecond)
	}
	close(stop)
	select {
	case b := <-done:
		if b == nil || len(b.Items) != 1 || b.Items[0].Handle != h || b.Items[0].Value != 7 {
			t.Fatalf("Run returned %+v, want the undelivered batch", b)
		}
		b.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after stop")
	}
}

// TestRunWakesOnEarlierAdd: the driver sleeps until an hour-ahead entry; an
// Add due sooner must wake it.
func TestRunWakesOnEarlierAdd(t *testing.T) {
	w := New[int](Options{})
	out := make(chan *Batch[int], 1)
	stop := make(chan struct{})
	done := make(chan *Batch[int])
	w.AddAfter(time.Hour, 1)
	go func() { done <- w.Run(stop, out) }()
	// Let the driver plan its hour-long sleep.
	for {
		w.mu.Lock()
		p := w.planned
		w.mu.Unlock()
		if p != 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	h := w.AddAfter(20*time.Millisecond, 2)
	select {
	case b := <-out:
		if len(b.Items) != 1 || b.Items[0].Handle != h {
			t.Fatalf("got %+v", b.Items)
		}
		if el := time.Since(start); el < 20*time.Millisecond {
			t.Fatalf("fired after %v, before its 20ms delay", el)
		}
		b.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("an earlier Add did not wake the sleeping driver")
	}
	close(stop)
	if b := <-done; b != nil {
		t.Fatalf("Run returned %+v", b.Items)
	}
	if w.Len() != 1 {
		t.Fatalf("Len() = %d, the hour-ahead entry should still be pending", w.Len())
	}
}

// TestConcurrent hammers Add/Cancel/Len from many goroutines while Run
// delivers; run it under -race.
func TestConcurrent(t *testing.T) {
	w := New[int](Options{Tick: 100 * time.Microsecond})
	out := make(chan *Batch[int], 16)
	stop := make(chan struct{})
	done := make(chan *Batch[int])
	go func() { done <- w.Run(stop, out) }()
	const workers, per = 4, 2000
	fired := make(chan int)
	go func() {
		n := 0
		for b := range out {
			now := w.Now()
			for _, it := range b.Items {
				if now < it.Due {
					t.Errorf("early by %v", time.Duration(it.Due-now))
				}
			}
			n += len(b.Items)
			b.Release()
		}
		fired <- n
	}()
	cancelled := make(chan int, workers)
	for g := range workers {
		go func() {
			c := 0
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range per {
				h := w.AddAfter(time.Duration(r.IntN(20_000))*time.Microsecond, i)
				if i%3 == 0 && w.Cancel(h) {
					c++
				}
				_ = w.Len()
			}
			cancelled <- c
		}()
	}
	total := 0
	for range workers {
		total += <-cancelled
	}
	for w.Len() > 0 {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	if b := <-done; b != nil {
		t.Fatalf("Run returned %+v", b.Items)
	}
	close(out)
	if n := <-fired; n+total != workers*per {
		t.Fatalf("fired %d + cancelled %d != added %d", n, total, workers*per)
	}
}

// cpuTime is the process's CPU time so far (user+sys, all threads).
func cpuTime(t testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestIdleCPU measures process CPU while Run drives a wheel holding 1M
// entries due an hour ahead. It takes 10 s, so it only runs with
// DEFERD_IDLE_CPU=1:
//
//	DEFERD_IDLE_CPU=1 go test -run TestIdleCPU -v ./wheel/
func TestIdleCPU(t *testing.T) {
	if os.Getenv("DEFERD_IDLE_CPU") == "" {
		t.Skip("set DEFERD_IDLE_CPU=1 to run (takes 10 s)")
	}
	w := New[uint64](Options{})
	for i := range 1_000_000 {
		w.AddAfter(farDue(i), uint64(i))
	}
	out := make(chan *Batch[uint64])
	stop := make(chan struct{})
	done := make(chan *Batch[uint64])
	go func() { done <- w.Run(stop, out) }()
	time.Sleep(500 * time.Millisecond) // let setup garbage settle

	const window = 10 * time.Second
	c0, t0 := cpuTime(t), time.Now()
	select {
	case b := <-out:
		t.Fatalf("nothing is due for an hour, got %d items", len(b.Items))
	case <-time.After(window):
	}
	cpu, wall := cpuTime(t)-c0, time.Since(t0)
	close(stop)
	<-done
	pct := 100 * float64(cpu) / float64(wall)
	t.Logf("idle CPU with 1M entries pending an hour ahead: %v over %v = %.3f%% of one core", cpu, wall.Round(time.Millisecond), pct)
	if pct >= 1 {
		t.Errorf("idle CPU %.3f%% >= 1%%", pct)
	}
}
