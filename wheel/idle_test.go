package wheel

import (
	"os"
	"syscall"
	"testing"
	"time"
)

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
