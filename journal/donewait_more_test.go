package journal

import (
	"errors"
	"os"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestDoneWaitFailedGroupThenClose: a DoneWait whose group fails gets
// the error (no hang); a DoneWait waiting while Close runs returns once
// Close's final flush wrote (or failed) its group.
func TestDoneWaitFailedGroupThenClose(t *testing.T) {
	for _, closeFails := range []bool{false, true} {
		j, _, _ := openJ(t, Options{Dir: t.TempDir()})
		rs := appendN(t, j, 0, 3, 50)
		var failing atomic.Bool
		failing.Store(true)
		j.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
			if failing.Load() {
				return 0, syscall.ENOSPC
			}
			return f.WriteAt(b, off)
		}
		if err := j.DoneWait(Cancelled, []Key{rs[0].p.Key()}); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("DoneWait on a failing disk: %v", err)
		}
		failing.Store(closeFails)
		gate := make(chan struct{})
		inner := j.writeAt
		j.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
			<-gate
			return inner(f, b, off)
		}
		res := make(chan error, 1)
		go func() { res <- j.DoneWait(Cancelled, []Key{rs[1].p.Key()}) }()
		time.Sleep(50 * time.Millisecond)
		closed := make(chan error, 1)
		go func() { closed <- j.Close() }()
		time.Sleep(50 * time.Millisecond)
		close(gate)
		select {
		case err := <-res:
			if closeFails != (err != nil) {
				t.Fatalf("closeFails %v: DoneWait = %v", closeFails, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("closeFails %v: DoneWait hangs", closeFails)
		}
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("Close hangs")
		}
	}
}

// TestDoneWaitSplit: more than maxDoneKeys keys go out as several
// Done records, in several groups when GroupBytes is small; DoneWait
// waits for all of them and they all survive a reopen.
func TestDoneWaitSplit(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, GroupBytes: 64 << 10}
	j, _, _ := openJ(t, opts)
	n := maxDoneKeys + 5000
	msgs := make([]Message, n)
	for i := range msgs {
		msgs[i] = Message{Topic: "t", Due: int64(i), Body: []byte("x")}
	}
	ps := make([]Pos, n)
	if err := j.Append(msgs, ps); err != nil {
		t.Fatal(err)
	}
	keys := make([]Key, n-1)
	for i := range keys {
		keys[i] = ps[i].Key()
	}
	res := make(chan error, 1)
	go func() { res <- j.DoneWait(Cancelled, keys) }()
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("DoneWait hangs")
	}
	// kill -9 right after: copy the directory as it is now, without Close.
	cp := t.TempDir()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, _ := os.ReadFile(dir + "/" + e.Name())
		os.WriteFile(cp+"/"+e.Name(), b, 0o644)
	}
	j.Close()
	j2, got, _ := openJ(t, Options{Dir: cp, GroupBytes: 64 << 10})
	defer j2.Close()
	if len(got) != 1 {
		t.Fatalf("after the crash copy %d messages live, want 1", len(got))
	}
}
