package deferd

import (
	"sync"
	"testing"
	"time"
)

// fakeStart is where the fake clocks of the tests start: a whole second,
// so the wheel's ticks (1 ms) fall on whole ms of the wall clock.
var fakeStart = time.Date(2026, 12, 4, 0, 0, 0, 0, time.UTC)

// fakeSink is a function sink that records each delivery with the fake
// clock's time (unix ns) at the call.
type fakeSink struct {
	c   *fakeClock
	mu  sync.Mutex
	got map[string][]int64 // body -> delivery times, unix ns
}

func (f *fakeSink) sink() Sink {
	return SinkFunc(func(_ string, bodies [][]byte) (int, error) {
		now := f.c.WallNs()
		f.mu.Lock()
		for _, b := range bodies {
			f.got[string(b)] = append(f.got[string(b)], now)
		}
		f.mu.Unlock()
		return len(bodies), nil
	})
}

func (f *fakeSink) times(body string) []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.got[body]...)
}

// fakeScheduler starts a Scheduler on a fake clock from fakeStart, with a
// fakeSink; edit changes its Options first (nil: none).
func fakeScheduler(t testing.TB, edit func(*Options)) (*Scheduler, *fakeClock, *fakeSink) {
	c := newFakeClock(fakeStart)
	f := &fakeSink{c: c, got: map[string][]int64{}}
	o := NewOptions()
	o.DataPath = t.TempDir()
	o.Sink = f.sink()
	o.Logf = t.Logf
	o.Fsync = "never"
	o.CompactInterval = 0 // compactAll runs it
	c.set(&o)
	if edit != nil {
		edit(&o)
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(time.Second) })
	return s, c, f
}

// On the fake clock a message goes out at the first poll at or after its
// due time, on the fake clock and at no other time; a run-now reschedule
// goes out at the next poll, and nothing counts as early.
func TestFakeClockDelivery(t *testing.T) {
	s, c, f := fakeScheduler(t, nil)
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("a")}, Delay: 10*time.Millisecond + time.Microsecond}); err != nil {
		t.Fatal(err)
	}
	dueNs := fakeStart.Add(11 * time.Millisecond).UnixNano() // rounded up to a whole ms
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("b")}, Delay: time.Hour, ID: "b"}); err != nil {
		t.Fatal(err)
	}
	s.advance(11*time.Millisecond - time.Nanosecond)
	if got := f.times("a"); len(got) != 0 {
		t.Fatalf("a delivered at %v, before its due %d", got, dueNs)
	}
	s.advance(time.Nanosecond)
	if got := f.times("a"); len(got) != 1 || got[0] != dueNs {
		t.Fatalf("a delivered at %v, want once at %d", got, dueNs)
	}
	s.advance(time.Minute)
	if got := f.times("b"); len(got) != 0 {
		t.Fatalf("b, due in an hour, delivered at %v", got)
	}
	if err := s.Reschedule(Ref{ID: "b"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got := f.times("b"); len(got) != 0 {
		t.Fatalf("b delivered at %v before the next poll", got)
	}
	s.advance(0)
	if got := f.times("b"); len(got) != 1 || got[0] != c.WallNs() {
		t.Fatalf("b delivered at %v, want once at %d", got, c.WallNs())
	}
	if info, err := s.Lookup(Ref{ID: "b"}, false); err != nil || info.State != StatePublished || info.DueMs != c.nowMs() {
		t.Fatalf("lookup of b: %+v, %v; want published, due %d", info, err, c.nowMs())
	}
	if e := s.early.Load(); e != 0 || s.Pending() != 0 {
		t.Fatalf("early %d, pending %d; want 0, 0", e, s.Pending())
	}
}
