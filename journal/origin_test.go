package journal

import (
	"bytes"
	"testing"
)

// TestAcceptedAndOrigin checks that a message's Accepted time and Origin
// key come back from Read, ScanLive and Recover through a Moved copy, and
// that a message without them keeps the old, smaller frame.
func TestAcceptedAndOrigin(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 4 << 10}
	j, _, _ := openJ(t, opts)
	plain := Message{ID: "a", Topic: "t", Due: 5, Body: []byte("plain")}
	timedM := Message{ID: "b", Topic: "t", Due: 6, Body: []byte("timed"), Accepted: 1700000000123}
	var ps [2]Pos
	if err := j.Append([]Message{plain, timedM}, ps[:]); err != nil {
		t.Fatal(err)
	}
	if int(ps[0].Len) != RecordLen(&plain) || int(ps[1].Len) != RecordLen(&timedM) || ps[1].Len != ps[0].Len+8 {
		t.Fatalf("record lengths %d %d", ps[0].Len, ps[1].Len)
	}
	m, _, err := j.Read(ps[1], nil)
	if err != nil || m.Accepted != timedM.Accepted || m.Origin != (Key{}) || !bytes.Equal(m.Body, timedM.Body) {
		t.Fatalf("Read: %+v %v", m, err)
	}
	// Move it twice: the Origin stays the first key.
	mv := m
	mv.Origin = ps[1].Key()
	mv.Due = 99
	p2, err := j.AppendMoved(ps[1].Key(), &mv)
	if err != nil {
		t.Fatal(err)
	}
	m2, _, err := j.Read(p2, nil)
	if err != nil || m2.Origin != ps[1].Key() || m2.Accepted != timedM.Accepted || m2.Due != 99 || m2.ID != "b" {
		t.Fatalf("Read moved: %+v %v", m2, err)
	}
	p3, err := j.AppendMoved(p2.Key(), &m2)
	if err != nil {
		t.Fatal(err)
	}
	// A legacy Moved record (no Origin, no Accepted) still works.
	pl := plain
	p4, err := j.AppendMoved(ps[0].Key(), &pl)
	if err != nil || int(p4.Len) != RecordLen(&plain)+8 {
		t.Fatalf("legacy moved: %v %d", err, p4.Len)
	}
	j.Close()
	j2, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	var got []Message
	var pos []Pos
	if _, err := j2.Recover(func(p Pos, m *Message) error {
		c := *m
		c.Body = bytes.Clone(m.Body)
		got = append(got, c)
		pos = append(pos, p)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || pos[0] != p3 || got[0].Origin != ps[1].Key() || got[0].Accepted != timedM.Accepted || got[0].Due != 99 ||
		pos[1] != p4 || got[1].Origin != (Key{}) || got[1].Accepted != 0 || string(got[1].Body) != "plain" {
		t.Fatalf("recovered %+v at %v", got, pos)
	}
}
