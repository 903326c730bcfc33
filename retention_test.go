package deferd

import (
	"testing"
	"time"

	"github.com/deferd/deferd/journal"
)

// TestRetentionRecordOfDuplicateIDEnds: two live records with one id (a
// crash lost the first one's published mark, the id was published again)
// are both delivered; the retention record journaled for the one the id no
// longer names must be marked done, not left live (it would pin its
// segment forever).
func TestRetentionRecordOfDuplicateIDEnds(t *testing.T) {
	l := &sinkLog{got: map[string][]int64{}}
	dir := t.TempDir()
	o := funcSchedulerOpts(t, dir, l)
	o.IDRetention = 200 * time.Millisecond
	j, err := journal.Open(o.journalOptions())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := j.Recover(func(journal.Pos, *journal.Message) error { return nil }); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixMilli()
	msgs := []journal.Message{
		{ID: "x", Topic: "t", Due: now, Body: []byte("first"), Accepted: now},
		{ID: "x", Topic: "t", Due: now, Body: []byte("second"), Accepted: now},
	}
	if err := j.Append(msgs, make([]journal.Pos, 2)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for s.j.Stats().Live != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if live := s.j.Stats().Live; live != 0 || len(l.times("first")) != 1 || len(l.times("second")) != 1 {
		t.Fatalf("journal live %d after both were published and retention ended (first %v, second %v): a retention record leaked",
			live, l.times("first"), l.times("second"))
	}
}

// TestCompactCountsRetentionMoves: compaction of a segment that holds only
// retention records counts their moves, so the pass goes on.
func TestCompactCountsRetentionMoves(t *testing.T) {
	l := &sinkLog{got: map[string][]int64{}}
	o := funcSchedulerOpts(t, t.TempDir(), l)
	o.IDRetention = time.Hour
	o.SegmentSize = 64 << 10
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("a")}, ID: "x"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Pending() != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	var p journal.Pos
	for time.Now().Before(deadline) {
		s.ix.mu.Lock()
		r, ok := s.ix.retained["x"]
		s.ix.mu.Unlock()
		if ok {
			p = r.p
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p.Seg == 0 {
		t.Fatal("not retained")
	}
	// Seal its segment with pending fillers, then cancel them: the
	// segment holds only the retention record alive.
	for i := 0; s.j.Stats().Segments < 2; i++ {
		id := "f" + string(rune('a'+i))
		if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{make([]byte, 40<<10)}, ID: id, Delay: time.Hour}); err != nil {
			t.Fatal(err)
		}
		if err := s.Cancel(id); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := s.compact(p.Seg)
	if err != nil {
		t.Fatal(err)
	}
	s.ix.mu.Lock()
	np := s.ix.retained["x"].p
	s.ix.mu.Unlock()
	if moved != 1 || np == p {
		t.Fatalf("compact of a segment with one retention record: moved %d, record %v -> %v; want 1 and a new position", moved, p, np)
	}
	if info, err := s.Lookup(Ref{ID: "x"}, false); err != nil || info.State != StatePublished {
		t.Fatalf("Lookup after the move: %+v, %v", info, err)
	}
}
