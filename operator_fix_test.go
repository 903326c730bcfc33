package deferd

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// compactMove moves the pending message named by key as compact does: a
// new record, the same due time.
func compactMove(t *testing.T, s *Scheduler, k Key) {
	t.Helper()
	f, err := s.ix.find(Ref{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := s.j.Read(f.p, nil)
	if err != nil {
		t.Fatal(err)
	}
	mv, ok := s.ix.moveOut(f.p, m.ID)
	if !ok {
		t.Fatal("moveOut")
	}
	m.Origin = mv.key
	np, err := s.j.AppendMoved(f.p.Key(), &m)
	if err != nil {
		t.Fatal(err)
	}
	s.ix.moveIn(mv, np, s.wheelDue(m.Due), m.Topic, m.ID, false)
}

// TestCancelRefMovedBetweenFindAndRemove: a message moved (rescheduled or
// compacted) between CancelRef's find and its remove is still pending:
// the remove answers errMoved (CancelRef looks again), never ErrNotFound.
func TestCancelRefMovedBetweenFindAndRemove(t *testing.T) {
	for _, how := range []string{"reschedule", "compaction", "twice"} {
		t.Run(how, func(t *testing.T) {
			l := &sinkLog{got: map[string][]int64{}}
			s, err := New(funcSchedulerOpts(t, t.TempDir(), l))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(time.Second)
			if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("a")}, Delay: time.Hour}); err != nil {
				t.Fatal(err)
			}
			page, _ := s.ListPending(PendingQuery{})
			k, _ := ParseKey(page.Messages[0].Key)
			if how == "twice" {
				compactMove(t, s, k) // find then sees a moved message
			}
			f, err := s.ix.find(Ref{Key: k})
			if err != nil {
				t.Fatal(err)
			}
			m, _, _ := s.j.Read(f.p, nil)
			if how == "reschedule" {
				if err := s.Reschedule(Ref{Key: k}, time.Now().Add(2*time.Hour)); err != nil {
					t.Fatal(err)
				}
			} else {
				compactMove(t, s, k)
			}
			if _, err := s.ix.removeAt(k, f.p, m.ID, m.Topic); !errors.Is(err, errMoved) {
				t.Fatalf("removeAt after a move: %v, want errMoved (the message is pending)", err)
			}
			if err := s.CancelRef(Ref{Key: k}); err != nil {
				t.Fatalf("CancelRef: %v", err)
			}
			if _, err := s.Lookup(Ref{Key: k}, false); !errors.Is(err, ErrNotFound) {
				t.Fatalf("Lookup after cancel: %v", err)
			}
			if s.Pending() != 0 {
				t.Fatalf("pending %d", s.Pending())
			}
		})
	}
}

// TestDueAfterRescheduleOfBackoff: a message waiting out a retry backoff
// and rescheduled to later is not reported overdue since its old due
// time; its failed attempts stay.
func TestDueAfterRescheduleOfBackoff(t *testing.T) {
	var fail atomic.Bool
	fail.Store(true)
	o := NewOptions()
	o.DataPath = t.TempDir()
	o.Logf = t.Logf
	o.CompactInterval = 0
	o.SegmentSize = 1 << 20
	o.DirectPublish = false
	o.RetryBackoff = 300 * time.Millisecond
	o.Sink = SinkFunc(func(_ string, b [][]byte) (int, error) {
		if fail.Load() {
			return 0, fmt.Errorf("down")
		}
		return len(b), nil
	})
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("a")}, ID: "x"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if info, err := s.Lookup(Ref{ID: "x"}, false); err == nil && info.Attempts > 0 && info.State == StatePending {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no failed attempt")
		}
	}
	if err := s.Reschedule(Ref{ID: "x"}, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	s.op.at = time.Time{} // no cached report
	if r := s.Due(); r.Overdue != 0 || r.OldestOverdueSeconds != 0 || r.DueWithin.H1 != 1 {
		t.Fatalf("due in 1h reported %+v", r.DueFigures)
	}
	if info, err := s.Lookup(Ref{ID: "x"}, false); err != nil || info.Attempts == 0 {
		t.Fatalf("Lookup %+v %v: attempts lost", info, err)
	}
}

// TestWaitsAreBounded: Cancel, Lookup, Reschedule and a Publish with the
// same id wait for a write of the id that does not end (a stalled disk)
// about a second, then answer ErrJournalUnavailable; Lookup by key of a
// move that does not end likewise.
func TestWaitsAreBounded(t *testing.T) {
	l := &sinkLog{got: map[string][]int64{}}
	s, err := New(funcSchedulerOpts(t, t.TempDir(), l))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	ch, err := s.ix.reserve("x", func() error { return nil }) // a write of x that never ends
	if err != nil || ch == nil {
		t.Fatal(ch, err)
	}
	defer s.ix.release("x", ch)
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("m")}, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	page, _ := s.ListPending(PendingQuery{})
	k, _ := ParseKey(page.Messages[0].Key)
	f, err := s.ix.find(Ref{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	mv, ok := s.ix.moveOut(f.p, "") // a move of k that never ends
	if !ok {
		t.Fatal("moveOut")
	}
	defer s.ix.moveIn(mv, f.p, s.wheelDue(time.Now().Add(time.Hour).UnixMilli()), "t", "", false)
	for name, call := range map[string]func() error{
		"Cancel":         func() error { return s.Cancel("x") },
		"Lookup":         func() error { _, err := s.Lookup(Ref{ID: "x"}, false); return err },
		"Reschedule":     func() error { return s.Reschedule(Ref{ID: "x"}, time.Time{}) },
		"Publish":        func() error { return s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("y")}, ID: "x"}) },
		"Lookup by key":  func() error { _, err := s.Lookup(Ref{Key: k}, false); return err },
		"CancelRef(key)": func() error { return s.CancelRef(Ref{Key: k}) },
	} {
		done := make(chan error, 1)
		start := time.Now()
		go func() { done <- call() }()
		select {
		case err := <-done:
			if !errors.Is(err, ErrJournalUnavailable) {
				t.Errorf("%s: %v, want ErrJournalUnavailable", name, err)
			}
			if d := time.Since(start); d < waitBound/2 {
				t.Errorf("%s: answered after %v, before waiting", name, d)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: still waiting after 5 s", name)
		}
	}
}

// TestListPendingAcrossCompactionMove: a message compacted (a new record
// and wheel time, the same due time and Key) between two pages of a
// listing is not listed again.
func TestListPendingAcrossCompactionMove(t *testing.T) {
	l := &sinkLog{got: map[string][]int64{}}
	s, err := New(funcSchedulerOpts(t, t.TempDir(), l))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("a"), []byte("b"), []byte("c")}, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		p1, err := s.ListPending(PendingQuery{Limit: 1 + i%2})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, m := range p1.Messages {
			seen[m.Key]++
			compactMove(t, s, mustKey(t, m.Key))
		}
		for cur := p1.Cursor; cur != ""; {
			p, err := s.ListPending(PendingQuery{Limit: 1, Cursor: cur})
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range p.Messages {
				seen[m.Key]++
			}
			cur = p.Cursor
		}
		if len(seen) != 3 {
			t.Fatalf("round %d: listed %v, want the 3 messages", i, seen)
		}
		for k, n := range seen {
			if n > 1 {
				t.Fatalf("round %d: %s listed %d times across pages (moved by compaction only)", i, k, n)
			}
		}
	}
}
