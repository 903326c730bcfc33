package journal

import (
	"errors"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestDoneCancelledMoved(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 4096}
	j, _, _ := openJ(t, opts)
	recs := appendN(t, j, 0, 60, 100)
	var pub, cancel []Key
	for i, r := range recs {
		switch i % 4 {
		case 1:
			pub = append(pub, r.p.Key())
		case 2:
			cancel = append(cancel, r.p.Key())
		}
	}
	if err := j.Done(Published, pub); err != nil {
		t.Fatal(err)
	}
	if err := j.Done(Cancelled, cancel); err != nil {
		t.Fatal(err)
	}
	if err := j.Done(Published, pub[:3]); err != nil { // idempotent
		t.Fatal(err)
	}
	if err := j.Done(Published, []Key{{Seg: 999, Ord: 1}, {Seg: 1, Ord: 99999}}); err != nil { // unknown: ignored
		t.Fatal(err)
	}
	// Move every 4th+3 message.
	var want []rec
	moved := map[int]rec{}
	for i, r := range recs {
		if i%4 == 3 {
			m := r.m
			m.Due += 1000
			p, err := j.AppendMoved(r.p.Key(), &m)
			if err != nil {
				t.Fatal(err)
			}
			moved[i] = rec{p, m}
		}
	}
	if _, err := j.AppendMoved(recs[1].p.Key(), &recs[1].m); !errors.Is(err, ErrNotLive) {
		t.Fatalf("AppendMoved of a dead key: %v", err)
	}
	for i, r := range recs {
		if i%4 == 0 {
			want = append(want, r)
		}
	}
	for i := 3; i < len(recs); i += 4 {
		want = append(want, moved[i])
	}
	if st := j.Stats(); st.Live != int64(len(want)) {
		t.Fatalf("Stats.Live %d want %d", st.Live, len(want))
	}
	j.Close()
	j, got, _ := openJ(t, opts)
	checkSame(t, got, want)
	if st := j.Stats(); st.Live != int64(len(want)) {
		t.Fatalf("Stats.Live after recovery %d want %d", st.Live, len(want))
	}
	j.Close()
}

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

// Done calls close together share one write: their records wait for the
// next group (here none: the mark timer's), not one write each; and they
// are written without any Append, Close or DoneWait behind them.
func TestDoneMarksShareAWrite(t *testing.T) {
	j, _, _ := openJ(t, Options{Dir: t.TempDir()})
	recs := appendN(t, j, 0, 20, 100)
	before := j.Stats()
	for _, r := range recs {
		if err := j.Done(Published, []Key{r.p.Key()}); err != nil {
			t.Fatal(err)
		}
		runtime.Gosched() // a flusher kicked per call would write here
	}
	deadline := time.Now().Add(5 * time.Second)
	for j.Stats().DoneRecords-before.DoneRecords < uint64(len(recs)) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d Done records written after 5 s", j.Stats().DoneRecords-before.DoneRecords, len(recs))
		}
		time.Sleep(time.Millisecond)
	}
	if g := j.Stats().Groups - before.Groups; g > 3 {
		t.Fatalf("%d Done calls took %d writes, want at most 3", len(recs), g)
	}
}
