package deferd

import (
	"testing"
	"time"
)

// TestListPacerDutyCycle: a call that took c lets the next one start only
// c*(1-ListShare)/ListShare after it ended, one call at a time, and a
// Close ends the wait.
func TestListPacerDutyCycle(t *testing.T) {
	var p listPacer
	stop := make(chan struct{})
	if !p.start(stop) {
		t.Fatal("first start refused")
	}
	const c = 100 * time.Millisecond
	p.began = time.Now().Add(-c) // as if the call took c
	p.end()
	want := time.Duration(float64(c) * (1 - ListShare) / ListShare)
	if got := time.Until(p.next); got > want+want/20 || got < want-want/20 { // 3c, not c or 4c
		t.Fatalf("next in %v, want %v", got, want)
	}
	// The next call waits for next; a second one for the first to end.
	p.next = time.Now().Add(time.Hour)
	started := make(chan bool)
	go func() { started <- p.start(stop) }()
	select {
	case ok := <-started:
		t.Fatalf("started (%v) an hour early", ok)
	case <-time.After(50 * time.Millisecond):
	}
	close(stop)
	if ok := <-started; ok {
		t.Fatal("start after stop: true")
	}
	if !p.mu.TryLock() {
		t.Fatal("a refused start kept the pacer")
	}
	p.mu.Unlock()
	p.next = time.Time{}
	if p.start(stop) {
		t.Fatal("start with stop closed: true")
	}
}

// TestListPendingClosedWhileWaiting: a ListPending waiting for its turn
// returns ErrClosed when the Scheduler closes.
func TestListPendingClosedWhileWaiting(t *testing.T) {
	o := NewOptions()
	o.DataPath = t.TempDir()
	o.Sink = SinkFunc(func(_ string, b [][]byte) (int, error) { return len(b), nil })
	o.Logf = t.Logf
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	s.op.list.mu.Lock()
	s.op.list.next = time.Now().Add(time.Hour)
	s.op.list.mu.Unlock()
	got := make(chan error)
	go func() { _, err := s.ListPending(PendingQuery{}); got <- err }()
	time.Sleep(20 * time.Millisecond) // let it wait
	s.Close(5 * time.Second)
	if err := <-got; err != ErrClosed {
		t.Fatalf("ListPending while closing: %v, want ErrClosed", err)
	}
}
