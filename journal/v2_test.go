package journal

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// copyDir copies the regular files of src into a new temporary directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// full is a recovered message with every field.
type full struct {
	Pos      Pos
	ID       string
	Topic    string
	Due      int64
	Accepted int64
	Origin   Key
	Body     []byte
}

func recoverAll(t *testing.T, opts Options) (*Journal, []full, Report) {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	j, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	var got []full
	rep, err := j.Recover(func(p Pos, m *Message) error {
		got = append(got, full{p, m.ID, m.Topic, m.Due, m.Accepted, m.Origin, bytes.Clone(m.Body)})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return j, got, rep
}

func sameFull(t *testing.T, got, want []full) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("recovered %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Pos != w.Pos || g.ID != w.ID || g.Topic != w.Topic || g.Due != w.Due || g.Accepted != w.Accepted ||
			g.Origin != w.Origin || !bytes.Equal(g.Body, w.Body) {
			t.Fatalf("message %d: got %+v, want %+v", i, g, w)
		}
	}
}

// A v1 journal (testdata/v1, written by the v1 code) recovers with every
// live message as the v1 code recovered it; appends after it go to a new
// v2 segment, marks for v1 messages in v2 segments apply, and a reopen
// replays both.
func TestRecoverV1Fixture(t *testing.T) {
	var exp struct {
		Segments []uint32
		Report   Report
		Live     []full
	}
	b, err := os.ReadFile("testdata/v1/expected.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &exp); err != nil {
		t.Fatal(err)
	}
	dir := copyDir(t, "testdata/v1")
	opts := Options{Dir: dir, SegmentBytes: 1024}
	j, got, rep := recoverAll(t, opts)
	sameFull(t, got, exp.Live)
	if rep.TornTails != 1 || rep.TruncatedBytes != exp.Report.TruncatedBytes || len(rep.Corrupt) != 0 ||
		rep.Records != exp.Report.Records || rep.Segments != len(exp.Segments) {
		t.Fatalf("report %+v, want as v1's %+v", rep, exp.Report)
	}
	lastV1 := exp.Segments[len(exp.Segments)-1]
	// New messages go to a new, v2 segment.
	more := []Message{{ID: "v2-a", Topic: "t", Due: 1, Body: []byte("after v1"), Accepted: 42}, {Topic: "t", Due: 2, Body: []byte("plain")}}
	pos := make([]Pos, len(more))
	if err := j.Append(more, pos); err != nil {
		t.Fatal(err)
	}
	if pos[0].Seg != lastV1+1 || pos[0].Off != segHeaderLen {
		t.Fatalf("first v2 append at %+v, want segment %d offset %d", pos[0], lastV1+1, segHeaderLen)
	}
	// A v1 message published by a v2 record; a v1 message moved to v2.
	if err := j.DoneWait(Published, []Key{exp.Live[0].Pos.Key()}); err != nil {
		t.Fatal(err)
	}
	mv := Message{ID: exp.Live[1].ID, Topic: exp.Live[1].Topic, Due: exp.Live[1].Due, Body: exp.Live[1].Body, Accepted: exp.Live[1].Accepted, Origin: exp.Live[1].Pos.Key()}
	mp, err := j.AppendMoved(exp.Live[1].Pos.Key(), &mv)
	if err != nil {
		t.Fatal(err)
	}
	if m, _, err := j.Read(exp.Live[2].Pos, nil); err != nil || !bytes.Equal(m.Body, exp.Live[2].Body) {
		t.Fatalf("Read of a v1 record: %v", err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	hdr, _ := os.ReadFile(segFile(dir, lastV1+1))
	if h, err := parseHeader(hdr, lastV1+1); err != nil || h.prevSize != 0 {
		t.Fatalf("segment %d header: %+v %v", lastV1+1, h, err)
	}
	j, got, rep = recoverAll(t, opts)
	defer j.Close()
	want := append([]full{}, exp.Live[2:]...)
	want = append(want,
		full{pos[0], "v2-a", "t", 1, 42, Key{}, []byte("after v1")},
		full{pos[1], "", "t", 2, 0, Key{}, []byte("plain")},
		full{mp, mv.ID, mv.Topic, mv.Due, mv.Accepted, mv.Origin, mv.Body})
	sameFull(t, got, want)
	if rep.TornTails != 0 || len(rep.Corrupt) != 0 {
		t.Fatalf("reopen report %+v", rep)
	}
}

// v1Segment returns a v1 segment's bytes (no header, unseeded CRCs) holding
// frames: the format the v1 code wrote.
func v1Segment(frames ...[]byte) []byte { return bytes.Join(frames, nil) }

// The case: after disk damage, resync must not take a frame inside
// a client's body for a record. The decoy's body holds a Done frame
// cancelling the victim, CRC'd as a client can (it cannot know the salt);
// the decoy's length is damaged, so resync searches its body. In a v1
// segment resync takes the decoy's frame (the victim is lost); in v2 it
// cannot, and the victim stays live.
func TestResyncNeverReadsAClientsFrame(t *testing.T) {
	victim := Message{ID: "victim", Topic: "t", Due: 1, Body: []byte("victim body")}
	after := Message{ID: "after", Topic: "t", Due: 3, Body: []byte("after")}
	doneInBody := func(seed uint32) []byte { return appendDoneFrame(nil, seed, Cancelled, []Key{{1, 0}}) }
	decoyOf := func(body []byte) Message {
		return Message{ID: "decoy", Topic: "t", Due: 2, Body: append(body, make([]byte, 64)...)}
	}
	damageLen := func(data []byte, off int) { data[off+3] = 0x7f } // length far out of range

	// v1: the weakness v2 removes.
	f0 := appendMsgFrame(nil, 0, 0, nil, &victim)
	d := decoyOf(doneInBody(0))
	f1 := appendMsgFrame(nil, 0, 1, nil, &d)
	f2 := appendMsgFrame(nil, 0, 2, nil, &after)
	v1 := v1Segment(f0, f1, f2)
	damageLen(v1, len(f0))
	dir := t.TempDir()
	os.WriteFile(segFile(dir, 1), v1, 0o644)
	j, got, _ := recoverAll(t, Options{Dir: dir})
	j.Close()
	if len(got) != 1 || got[0].ID != "after" {
		t.Fatalf("v1: recovered %+v; expected the decoy's frame to cancel the victim (v1's weakness)", got)
	}

	// v2, written by the journal: the same messages and damage.
	dir = t.TempDir()
	j, _, _ = recoverAll(t, Options{Dir: dir})
	d = decoyOf(doneInBody(0))
	pos := make([]Pos, 3)
	if err := j.Append([]Message{victim, d, after}, pos); err != nil {
		t.Fatal(err)
	}
	j.Close()
	// Also a body frame with another segment's seed (a guess) must fail.
	path := segFile(dir, 1)
	data, _ := os.ReadFile(path)
	damageLen(data, int(pos[1].Off))
	os.WriteFile(path, data, 0o644)
	j, got, rep := recoverAll(t, Options{Dir: dir})
	defer j.Close()
	if len(got) != 2 || got[0].ID != "victim" || got[1].ID != "after" {
		t.Fatalf("v2: recovered %+v, want the victim and the record after the decoy", got)
	}
	if len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], "1 messages lost (ordinals 1..1)") || j.Stats().Corrupt != 1 {
		t.Fatalf("v2: report %+v, want the decoy as the one record lost", rep)
	}
}

// One corrupt record is counted once: one Report.Corrupt line (stating the
// messages lost), Stats.Corrupt 1, and a compaction scan of its segment
// afterwards (which meets it again) does not count it again.
func TestOneCorruptRecordCountsOnce(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 2048}
	j, _, _ := openJ(t, opts)
	recs := appendN(t, j, 0, 40, 100)
	j.Close()
	p := recs[3].p
	data, _ := os.ReadFile(segFile(dir, p.Seg))
	data[p.Off+p.Len-5] ^= 0x01
	os.WriteFile(segFile(dir, p.Seg), data, 0o644)
	j, got, rep := openJ(t, opts)
	defer j.Close()
	if len(got) != len(recs)-1 || len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], "1 messages lost (ordinals 3..3)") {
		t.Fatalf("report %+v (%d recovered)", rep, len(got))
	}
	if c := j.Stats().Corrupt; c != 1 {
		t.Fatalf("Stats.Corrupt %d, want 1", c)
	}
	if p.Seg == recs[len(recs)-1].p.Seg {
		t.Fatal("the damaged segment is the active one")
	}
	n := 0
	if err := j.ScanLive(p.Seg, func(Pos, *Message) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if c := j.Stats().Corrupt; c != 1 || n == 0 {
		t.Fatalf("after ScanLive: Stats.Corrupt %d (want 1), %d live", c, n)
	}
}

// steady appends n messages, ten at a time, publishing the messages of
// every sealed segment as it goes, so sealed segments are deleted (and
// their files recycled) while the journal runs. It returns the messages
// left live: those of the active segment.
func steady(t *testing.T, j *Journal, from, n int) []rec {
	t.Helper()
	var live []rec
	for i := 0; i < n; i += 10 {
		live = append(live, appendN(t, j, from+i, min(10, n-i), 100)...)
		active := live[len(live)-1].p.Seg
		var done []Key
		for len(live) > 0 && live[0].p.Seg < active {
			done = append(done, live[0].p.Key())
			live = live[1:]
		}
		if err := j.DoneWait(Published, done); err != nil {
			t.Fatal(err)
		}
	}
	return live
}

// Deleted segments' files are reused for new segments (at most
// defaultRecycle kept); a crash (the files as the OS has them, no Close)
// while the active segment is a recycled file whose previous life was
// longer leaves those bytes past its last record: recovery reads them as
// the end of the segment (StaleBytes), not as records, a torn tail or
// corruption; a clean Close cuts them.
func TestRecycledSegments(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 2048}
	j, _, _ := openJ(t, opts)
	defer func() { j.Close() }()
	first := steady(t, j, 0, 200)
	waitFor(t, func() bool { return j.Stats().Recycled > 0 && j.Stats().SpareFiles > 0 })
	var keys []Key
	for _, r := range first {
		keys = append(keys, r.p.Key())
	}
	if err := j.DoneWait(Published, keys); err != nil {
		t.Fatal(err)
	}
	// A few records into a recycled active segment: far less than its
	// previous life held.
	live := steady(t, j, 1000, 60)
	waitFor(t, func() bool { ids, _ := listSegments(dir); return len(ids) == 1 })
	st := j.Stats()
	free, _ := listIDs(dir, freeSuffix)
	if st.Recycled == 0 || st.SpareFiles > defaultRecycle || len(free) != st.SpareFiles || st.SpareBytes == 0 {
		t.Fatalf("stats %+v, spare files %v", st, free)
	}
	tail := live[len(live)-1].p
	for live[0].p.Seg != tail.Seg {
		live = live[1:]
	}
	ids, _ := listSegments(dir)
	hdr, _ := os.ReadFile(segFile(dir, ids[0]))
	h, err := parseHeader(hdr, ids[0])
	if err != nil || h.prevSize == 0 || int64(h.prevSize) <= int64(tail.Off+tail.Len) {
		t.Fatalf("active segment %d: header %+v %v, want a recycled file longer than %d", ids[0], h, err, tail.Off+tail.Len)
	}
	written := j.Stats().DiskBytes
	crash := copyDir(t, dir)
	j2, got, rep := openJ(t, Options{Dir: crash, SegmentBytes: 2048})
	checkSame(t, got, live)
	if rep.TornTails != 0 || len(rep.Corrupt) != 0 || rep.StaleBytes != int64(h.prevSize)-written {
		t.Fatalf("after a crash: report %+v, want the previous life as stale bytes", rep)
	}
	more := appendN(t, j2, 5000, 3, 100)
	j2.Close()
	j2, got, rep = openJ(t, Options{Dir: crash, SegmentBytes: 2048})
	checkSame(t, got, append(live, more...))
	if rep.TornTails != 0 || len(rep.Corrupt) != 0 || rep.StaleBytes != 0 {
		t.Fatalf("reopen: report %+v", rep)
	}
	j2.Close()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j, got, rep = openJ(t, opts)
	checkSame(t, got, live)
	if rep.TornTails != 0 || len(rep.Corrupt) != 0 || rep.StaleBytes != 0 {
		t.Fatalf("after Close: report %+v", rep)
	}
}

// A sealed recycled segment still as long as its previous life (its cut at
// rollover lost with the power): the previous life's bytes past its last
// record are its end, not corruption. The same bytes after a segment that
// was a new file are corruption.
func TestRecycledSealedStaleTail(t *testing.T) {
	oldLife := func(size int) []byte {
		var b []byte
		for ord := uint32(0); len(b) < size; ord++ {
			b = appendMsgFrame(b, 0xdeadbeef, ord, nil, &Message{Topic: "old", Body: make([]byte, 90)})
		}
		return b[:size]
	}
	for _, recycled := range []bool{true, false} {
		dir := t.TempDir()
		opts := Options{Dir: dir, SegmentBytes: 1024}
		j, _, _ := openJ(t, opts)
		recs := appendN(t, j, 0, 20, 100)
		j.Close()
		if recs[len(recs)-1].p.Seg < 2 {
			t.Fatal("no rollover")
		}
		// Segment 1 as if it had been a recycled file 3000 bytes long.
		path := segFile(dir, 1)
		data, _ := os.ReadFile(path)
		var h segHeader
		h, _ = parseHeader(data, 1)
		end := len(data)
		if recycled {
			h.prevSize = 3000
			copy(data, h.encode())
		}
		data = append(data, oldLife(3000-end)...)
		os.WriteFile(path, data, 0o644)
		j, got, rep := openJ(t, opts)
		checkSame(t, got, recs)
		j.Close()
		if recycled && (len(rep.Corrupt) != 0 || rep.StaleBytes != int64(3000-end) || rep.TornTails != 0) {
			t.Fatalf("recycled: report %+v", rep)
		}
		if !recycled && (len(rep.Corrupt) != 1 || rep.StaleBytes != 0) {
			t.Fatalf("new file: report %+v, want the bytes past its end as corruption", rep)
		}
	}
}

// A last segment whose header never reached the disk (a crash while the
// flusher created or recycled it, before any record of it was written) is
// a torn tail: it is replaced by a fresh segment of the same id.
func TestTornSegmentHeader(t *testing.T) {
	for _, name := range []string{"short", "other-segment"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, SegmentBytes: 1024}
			j, _, _ := openJ(t, opts)
			recs := appendN(t, j, 0, 20, 100)
			j.Close()
			last := recs[len(recs)-1].p.Seg
			var kept []rec
			for _, r := range recs {
				if r.p.Seg < last {
					kept = append(kept, r)
				}
			}
			data, _ := os.ReadFile(segFile(dir, last))
			switch name {
			case "short":
				data = data[:20]
			case "other-segment":
				old := append(segHeader{id: 3, salt: 77, prevSize: 0}.encode(), data[segHeaderLen:]...)
				data = old // a recycled file of segment 3's, renamed, not yet rewritten
			}
			os.WriteFile(segFile(dir, last), data, 0o644)
			j, got, rep := openJ(t, opts)
			checkSame(t, got, kept)
			if rep.TornTails != 1 || len(rep.Corrupt) != 0 {
				t.Fatalf("report %+v", rep)
			}
			more := appendN(t, j, 100, 2, 100)
			if more[0].p.Seg != last || more[0].p.Off != segHeaderLen {
				t.Fatalf("append after a torn header at %+v, want segment %d", more[0].p, last)
			}
			j.Close()
			j, got, rep = openJ(t, opts)
			defer j.Close()
			checkSame(t, got, append(kept, more...))
			if rep.TornTails != 0 || len(rep.Corrupt) != 0 {
				t.Fatalf("reopen: report %+v", rep)
			}
		})
	}
}

// A damaged header in an earlier segment makes it unreadable, reported.
func TestDamagedHeaderIsCorruption(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024}
	j, _, _ := openJ(t, opts)
	recs := appendN(t, j, 0, 20, 100)
	j.Close()
	writeByteAt(t, segFile(dir, 1), 20, 0xaa) // the salt
	var kept []rec
	for _, r := range recs {
		if r.p.Seg != 1 {
			kept = append(kept, r)
		}
	}
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, kept)
	if len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], "unreadable") || j.Stats().Corrupt != 1 {
		t.Fatalf("report %+v", rep)
	}
}

// The header's layout is what the package doc says.
func TestSegmentHeaderLayout(t *testing.T) {
	h := segHeader{id: 7, salt: 0x0102030405060708, prevSize: 4096}
	b := h.encode()
	if len(b) != segHeaderLen || string(b[:8]) != "DEFERDJL" || binary.LittleEndian.Uint32(b[8:]) != 2 ||
		binary.LittleEndian.Uint32(b[12:]) != 7 || binary.LittleEndian.Uint64(b[16:]) != h.salt ||
		binary.LittleEndian.Uint32(b[24:]) != 4096 {
		t.Fatalf("header % x", b)
	}
	if got, err := parseHeader(b, 7); err != nil || got != h {
		t.Fatalf("parse: %+v %v", got, err)
	}
	if binary.LittleEndian.Uint32(b) <= MaxRecordBytes {
		t.Fatal("the magic reads as a plausible v1 frame length")
	}
	// The frame CRC covers id and salt: the same frame in another segment,
	// or in another life of the same file, does not verify.
	f := appendMsgFrame(nil, h.seed(), 0, nil, &Message{Topic: "t", Body: []byte("x")})
	for _, other := range []segHeader{{id: 8, salt: h.salt}, {id: 7, salt: h.salt + 1}, {}} {
		if _, _, _, err := decodeFrame(f, other.seed(), true); err == nil {
			t.Fatalf("frame verifies under %+v", other)
		}
	}
	if _, _, _, err := decodeFrame(f, h.seed(), true); err != nil {
		t.Fatal(err)
	}
}
