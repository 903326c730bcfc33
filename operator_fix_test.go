package deferd

import (
	"errors"
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
