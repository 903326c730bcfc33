package journal

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// TestGenerateV1Fixture builds journal/testdata/v1 with the v1 writer of
// this commit: several segments with live messages with and without ids
// and accepted times, published and cancelled marks, Moved and MovedT
// records, a wholly finished (deleted) first segment, and a torn tail.
// expected.json is what this commit's Recover returns for it.
//
//	DEFERD_GEN_V1_FIXTURE=1 go test -run TestGenerateV1Fixture ./journal/
func TestGenerateV1Fixture(t *testing.T) {
	if os.Getenv("DEFERD_GEN_V1_FIXTURE") == "" {
		t.Skip("set DEFERD_GEN_V1_FIXTURE=1 to regenerate testdata/v1")
	}
	out := "testdata/v1"
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024, Fsync: FsyncAlways}
	j, _, _ := openJ(t, opts)
	mk := func(i int, id string, accepted int64, body []byte) Message {
		return Message{ID: id, Topic: "topic" + string(rune('a'+i%3)), Due: 1700000000000 + int64(i)*1000, Body: body, Accepted: accepted}
	}
	bin := make([]byte, 256)
	for i := range bin {
		bin[i] = byte(i)
	}
	var all []Message
	for i := 0; i < 40; i++ {
		id := ""
		if i%3 != 0 {
			id = "client-id-" + string(rune('A'+i%26))
		}
		var acc int64
		if i%2 == 0 {
			acc = 1699999990000 + int64(i)
		}
		body := []byte("body of message " + string(rune('0'+i%10)) + " ")
		body = append(body, bin[:(i*37)%200]...)
		all = append(all, mk(i, id, acc, body))
	}
	all = append(all, mk(40, "empty-body", 0, nil), mk(41, "", 1699999999999, []byte{}))
	pos := make([]Pos, len(all))
	for i := range all {
		if err := j.Append(all[i:i+1], pos[i:i+1]); err != nil {
			t.Fatal(err)
		}
	}
	var pub, canc []Key
	for i, p := range pos {
		if p.Seg == 1 || i%5 == 1 {
			pub = append(pub, p.Key())
		} else if i%7 == 3 {
			canc = append(canc, p.Key())
		}
	}
	if err := j.DoneWait(Published, pub); err != nil {
		t.Fatal(err)
	}
	if err := j.DoneWait(Cancelled, canc); err != nil {
		t.Fatal(err)
	}
	// Moved: a plain copy (Moved) and one with accepted+origin (MovedT).
	moveFrom := func(i int) {
		m := all[i]
		if m.Accepted != 0 {
			m.Origin = pos[i].Key()
		}
		m.Due += 7
		if _, err := j.AppendMoved(pos[i].Key(), &m); err != nil {
			t.Fatalf("move %d: %v", i, err)
		}
	}
	moveFrom(9)  // i%3==0 -> no id, odd -> no accepted: Moved
	moveFrom(12) // accepted: MovedT
	more := []Message{mk(50, "last-1", 1700000000500, []byte("tail message one")), mk(51, "", 0, []byte("tail message two"))}
	if err := j.Append(more, make([]Pos, 2)); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	ids, err := listSegments(dir)
	if err != nil || len(ids) < 3 {
		t.Fatalf("segments %v %v", ids, err)
	}
	// Torn tail: half a frame after the last record of the last segment.
	torn := appendMsgFrame(nil, 99, nil, &Message{ID: "torn", Topic: "t", Body: []byte("never written whole")})
	last := segFile(dir, ids[len(ids)-1])
	f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(torn[:len(torn)/2])
	f.Close()
	os.RemoveAll(out)
	os.MkdirAll(out, 0o755)
	for _, id := range ids {
		b, err := os.ReadFile(segFile(dir, id))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(segFile(out, id), b, 0o644)
	}
	// What this (v1) code recovers from a copy of the fixture.
	cp := t.TempDir()
	for _, id := range ids {
		b, _ := os.ReadFile(segFile(out, id))
		os.WriteFile(segFile(cp, id), b, 0o644)
	}
	j2, err := Open(Options{Dir: cp, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	type exp struct {
		Pos      Pos
		ID       string
		Topic    string
		Due      int64
		Accepted int64
		Origin   Key
		Body     []byte
	}
	var got []exp
	rep, err := j2.Recover(func(p Pos, m *Message) error {
		got = append(got, exp{p, m.ID, m.Topic, m.Due, m.Accepted, m.Origin, append([]byte{}, m.Body...)})
		return nil
	})
	j2.Close()
	if err != nil || rep.TornTails != 1 || len(rep.Corrupt) != 0 {
		t.Fatalf("v1 recovery of the fixture: %+v %v", rep, err)
	}
	b, _ := json.MarshalIndent(map[string]any{"segments": ids, "report": rep, "live": got}, "", " ")
	os.WriteFile(filepath.Join(out, "expected.json"), append(b, '\n'), 0o644)
	t.Logf("fixture: segments %v, %d live, report %+v", ids, len(got), rep)
}
