package journal

import (
	"os"
	"testing"
	"time"
)

// DoneWait returns only once its Done record was written to the OS (Done
// returns at once): what Cancel needs to answer 200.
func TestDoneWaitReturnsAfterWrite(t *testing.T) {
	j, _, _ := openJ(t, Options{Dir: t.TempDir()})
	defer j.Close()
	rs := appendN(t, j, 0, 2, 50)
	gate := make(chan struct{})
	j.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
		<-gate
		return f.WriteAt(b, off)
	}
	seg := j.table.Load().get(rs[0].p.Seg)
	size := func() int64 { fi, _ := seg.f.Stat(); return fi.Size() }
	before := size()
	// Done: queued, not written, yet it returns.
	if err := j.Done(Cancelled, []Key{rs[0].p.Key()}); err != nil {
		t.Fatal(err)
	}
	if size() != before {
		t.Fatal("the write gate did not hold")
	}
	done := make(chan error, 1)
	go func() { done <- j.DoneWait(Cancelled, []Key{rs[1].p.Key()}) }()
	select {
	case err := <-done:
		t.Fatalf("DoneWait returned (%v) before its record was written", err)
	case <-time.After(200 * time.Millisecond):
	}
	close(gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, want := size(), before+2*(headerLen+2+8); got != want {
		t.Fatalf("after DoneWait the segment is %d bytes, want %d (both Done records written)", got, want)
	}
}
