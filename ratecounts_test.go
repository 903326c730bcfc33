package deferd

import (
	"fmt"
	"testing"
	"time"
)

// The per-topic counts behind the rates drop a topic once it has nothing
// pending and has not changed over a whole rate window; a topic with
// pending messages keeps them, and a dropped topic is counted anew.
func TestQuietTopicCountsDropped(t *testing.T) {
	o := NewOptions()
	o.DataPath = t.TempDir()
	o.Logf = t.Logf
	o.Sink = SinkFunc(func(_ string, b [][]byte) (int, error) { return len(b), nil })
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	body := [][]byte{[]byte("m")}
	for i := range 200 {
		if err := s.Publish(Pub{Topic: fmt.Sprintf("now%d", i), Bodies: body}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Publish(Pub{Topic: "later", Bodies: body, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	counted := func() int {
		s.ix.mu.Lock()
		defer s.ix.mu.Unlock()
		return len(s.ix.counts)
	}
	if n := counted(); n != 201 {
		t.Fatalf("%d topics counted, want 201", n)
	}
	for range rateWindow + 2 {
		s.sampleRates()
	}
	if n := counted(); n != 1 {
		t.Errorf("after a quiet window %d topics counted, want 1 (the one pending)", n)
	}
	if err := s.Publish(Pub{Topic: "now7", Bodies: body}); err != nil {
		t.Fatal(err)
	}
	s.sampleRates()
	if n := counted(); n != 2 {
		t.Errorf("after a publish to a dropped topic %d topics counted, want 2", n)
	}
	_, _, tacc, _ := s.rates(time.Now())
	if _, ok := tacc["now0"]; ok {
		t.Errorf("a dropped topic still has a rate")
	}
	if r := tacc["now7"]; r <= 0 {
		t.Errorf("now7, counted anew, has rate %v", r)
	}
}
