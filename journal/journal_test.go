package journal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

type rec struct {
	p Pos
	m Message
}

func openJ(t testing.TB, opts Options) (*Journal, []rec, Report) {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	j, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	var got []rec
	rep, err := j.Recover(func(p Pos, m *Message) error {
		got = append(got, rec{p, Message{ID: m.ID, Topic: m.Topic, Due: m.Due, Body: bytes.Clone(m.Body)}})
		return nil
	})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	return j, got, rep
}

func msg(i int, bodyLen int) Message {
	body := bytes.Repeat([]byte{byte('a' + i%26)}, bodyLen)
	copy(body, fmt.Sprintf("body-%d-", i))
	return Message{ID: fmt.Sprintf("id-%d", i), Topic: "topic" + fmt.Sprint(i%3), Due: 1700000000000 + int64(i), Body: body}
}

func eqMsg(a, b Message) bool {
	return a.ID == b.ID && a.Topic == b.Topic && a.Due == b.Due && bytes.Equal(a.Body, b.Body)
}

func appendN(t testing.TB, j *Journal, from, n, bodyLen int) []rec {
	t.Helper()
	out := make([]rec, n)
	for i := range n {
		m := msg(from+i, bodyLen)
		var p [1]Pos
		if err := j.Append([]Message{m}, p[:]); err != nil {
			t.Fatalf("Append %d: %v", from+i, err)
		}
		out[i] = rec{p[0], m}
	}
	return out
}

func checkSame(t *testing.T, got, want []rec) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("recovered %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].p != want[i].p || !eqMsg(got[i].m, want[i].m) {
			t.Fatalf("message %d: got %+v %q, want %+v %q", i, got[i].p, got[i].m.ID, want[i].p, want[i].m.ID)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	j, got, _ := openJ(t, Options{Dir: dir})
	if len(got) != 0 {
		t.Fatalf("fresh journal recovered %d", len(got))
	}
	msgs := []Message{
		{ID: "", Topic: "t", Due: -5, Body: nil},
		{ID: "abc", Topic: "orders", Due: 1<<62 + 3, Body: []byte("hello")},
		msg(7, 500),
	}
	pos := make([]Pos, len(msgs))
	if err := j.Append(msgs, pos); err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for i, p := range pos {
		if p.Seg != 1 || p.Ord != uint32(i) {
			t.Fatalf("pos %d = %+v", i, p)
		}
		var m Message
		var err error
		m, buf, err = j.Read(p, buf)
		if err != nil {
			t.Fatal(err)
		}
		if !eqMsg(m, msgs[i]) {
			t.Fatalf("read %d: %+v want %+v", i, m, msgs[i])
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := j.Append(msgs, pos); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if _, _, err := j.Read(pos[0], nil); err == nil {
		t.Fatal("Read after Close succeeded")
	}
	j, got, rep := openJ(t, Options{Dir: dir})
	defer j.Close()
	want := []rec{{pos[0], msgs[0]}, {pos[1], msgs[1]}, {pos[2], msgs[2]}}
	checkSame(t, got, want)
	if rep.Live != 3 || rep.Records != 3 || len(rep.Corrupt) != 0 || rep.TornTails != 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestParseFsyncMode(t *testing.T) {
	for _, m := range []FsyncMode{FsyncInterval, FsyncAlways, FsyncNever} {
		got, err := ParseFsyncMode(m.String())
		if err != nil || got != m {
			t.Fatalf("%v: %v %v", m, got, err)
		}
	}
	if _, err := ParseFsyncMode("sometimes"); err == nil {
		t.Fatal("want error")
	}
}

func TestRolloverAndReopen(t *testing.T) {
	for _, mode := range []FsyncMode{FsyncInterval, FsyncAlways, FsyncNever} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, SegmentBytes: 1024, Fsync: mode, FsyncInterval: time.Millisecond}
			j, _, _ := openJ(t, opts)
			want := appendN(t, j, 0, 100, 100)
			segs, _ := listSegments(dir)
			if len(segs) < 10 {
				t.Fatalf("only %d segments", len(segs))
			}
			for _, r := range want {
				if int64(r.p.Off)+int64(r.p.Len) > 1024 && r.p.Off != 0 {
					t.Fatalf("record crosses SegmentBytes: %+v", r.p)
				}
				m, _, err := j.Read(r.p, nil)
				if err != nil || !eqMsg(m, r.m) {
					t.Fatalf("read %+v: %v", r.p, err)
				}
			}
			j.Close()
			j, got, rep := openJ(t, opts)
			checkSame(t, got, want)
			if rep.Segments != len(segs) {
				t.Fatalf("report %+v", rep)
			}
			// Appending continues after the recovered tail.
			more := appendN(t, j, 100, 30, 100)
			j.Close()
			j, got, _ = openJ(t, opts)
			defer j.Close()
			checkSame(t, got, append(want, more...))
		})
	}
}

func TestConcurrentAppend(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 64 << 10, GroupBytes: 16 << 10}
	j, _, _ := openJ(t, opts)
	const workers, per = 32, 40
	var mu sync.Mutex
	var all []rec
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; {
				n := 1 + (i+w)%5
				if i+n > per {
					n = per - i
				}
				ms := make([]Message, n)
				for k := range ms {
					ms[k] = msg(w*1000+i+k, 200)
				}
				if !appendRecorded(t, j, ms, &mu, &all) {
					return
				}
				i += n
			}
		}()
	}
	wg.Wait()
	st := j.Stats()
	if st.Appends != workers*per || st.Groups == 0 || st.Groups >= workers*per {
		t.Logf("stats %+v", st)
	}
	t.Logf("%d appends in %d groups", st.Appends, st.Groups)
	checkAppended(t, j, opts, all)
}

// appendRecorded appends ms with one Append and adds each message with its
// position to *all under mu; it reports whether Append succeeded.
func appendRecorded(t *testing.T, j *Journal, ms []Message, mu *sync.Mutex, all *[]rec) bool {
	ps := make([]Pos, len(ms))
	if err := j.Append(ms, ps); err != nil {
		t.Error(err)
		return false
	}
	mu.Lock()
	for k := range ms {
		*all = append(*all, rec{ps[k], ms[k]})
	}
	mu.Unlock()
	return true
}

// checkAppended reads every record of all back from j, closes j, reopens
// the journal and checks that recovery returns exactly those records, each
// once, in log order.
func checkAppended(t *testing.T, j *Journal, opts Options, all []rec) {
	t.Helper()
	byKey := map[Key]Message{}
	for _, r := range all {
		if _, dup := byKey[r.p.Key()]; dup {
			t.Fatalf("duplicate key %+v", r.p)
		}
		byKey[r.p.Key()] = r.m
		m, _, err := j.Read(r.p, nil)
		if err != nil || !eqMsg(m, r.m) {
			t.Fatalf("read %+v: %v", r.p, err)
		}
	}
	j.Close()
	j, got, _ := openJ(t, opts)
	defer j.Close()
	if len(got) != len(all) {
		t.Fatalf("recovered %d want %d", len(got), len(all))
	}
	for i, g := range got {
		if m, ok := byKey[g.p.Key()]; !ok || !eqMsg(m, g.m) {
			t.Fatalf("recovered %+v does not match what was appended", g.p)
		}
		if i > 0 {
			a, b := got[i-1].p, g.p
			if a.Seg > b.Seg || a.Seg == b.Seg && a.Off >= b.Off {
				t.Fatalf("not in log order: %+v then %+v", a, b)
			}
		}
	}
}

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

// build writes n messages into one segment and closes the journal.
func build(t *testing.T, dir string, n, bodyLen int) []rec {
	t.Helper()
	j, _, _ := openJ(t, Options{Dir: dir})
	recs := appendN(t, j, 0, n, bodyLen)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return recs
}

func segFile(dir string, id uint32) string { return filepath.Join(dir, fmt.Sprintf("%08d.seg", id)) }

func zeroRange(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(make([]byte, n), off); err != nil {
		t.Fatal(err)
	}
}

// overlapping returns the records of recs that intersect [a, b).
func split(recs []rec, a, b int64) (kept, lost []rec) {
	for _, r := range recs {
		if int64(r.p.Off)+int64(r.p.Len) <= a || int64(r.p.Off) >= b {
			kept = append(kept, r)
		} else {
			lost = append(lost, r)
		}
	}
	return kept, lost
}

func TestDamageTruncateMidRecord(t *testing.T) {
	dir := t.TempDir()
	recs := build(t, dir, 50, 100)
	lastRec := recs[len(recs)-1].p
	size := int64(lastRec.Off + lastRec.Len)
	if err := os.Truncate(segFile(dir, 1), size-10); err != nil {
		t.Fatal(err)
	}
	j, got, rep := openJ(t, Options{Dir: dir})
	checkSame(t, got, recs[:49])
	if rep.TornTails != 1 || rep.TruncatedBytes != int64(lastRec.Len)-10 || len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v", rep)
	}
	if fi, _ := os.Stat(segFile(dir, 1)); fi.Size() != int64(lastRec.Off) {
		t.Fatalf("size after truncation %d want %d", fi.Size(), lastRec.Off)
	}
	more := appendN(t, j, 100, 1, 100)
	j.Close()
	j, got, rep = openJ(t, Options{Dir: dir})
	defer j.Close()
	checkSame(t, got, append(recs[:49:49], more...))
	if rep.TornTails != 0 || len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestDamageZeroTailSector(t *testing.T) {
	dir := t.TempDir()
	recs := build(t, dir, 50, 100)
	last := recs[len(recs)-1].p
	size := int64(last.Off + last.Len)
	start := size / 512 * 512
	if start == size {
		start -= 512
	}
	zeroRange(t, segFile(dir, 1), start, size-start)
	kept, lost := split(recs, start, size)
	j, got, rep := openJ(t, Options{Dir: dir})
	defer j.Close()
	checkSame(t, got, kept)
	if rep.TornTails != 1 || len(rep.Corrupt) != 0 || rep.TruncatedBytes != size-int64(lost[0].p.Off) {
		t.Fatalf("report %+v (lost %d)", rep, len(lost))
	}
	// Also a zero-filled extension past the last record (preallocated / lost data) is torn.
	j.Close()
	f, _ := os.OpenFile(segFile(dir, 1), os.O_RDWR|os.O_APPEND, 0)
	f.Write(make([]byte, 4096))
	f.Close()
	j, got, rep = openJ(t, Options{Dir: dir})
	defer j.Close()
	checkSame(t, got, kept)
	if rep.TornTails != 1 || rep.TruncatedBytes != 4096 || len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestDamageZeroMiddleSector(t *testing.T) {
	for _, lastSeg := range []bool{true, false} {
		t.Run(fmt.Sprintf("last=%v", lastSeg), func(t *testing.T) {
			dir := t.TempDir()
			recs := build(t, dir, 50, 100)
			var more []rec
			if !lastSeg {
				// Add a second segment so segment 1 is not the last.
				j, _, _ := openJ(t, Options{Dir: dir, SegmentBytes: 100})
				more = appendN(t, j, 100, 2, 100)
				j.Close()
				if more[0].p.Seg != 2 {
					t.Fatalf("no rollover: %+v", more[0].p)
				}
			}
			start := int64(recs[25].p.Off) / 512 * 512
			zeroRange(t, segFile(dir, 1), start, 512)
			kept, lost := split(recs, start, start+512)
			j, got, rep := openJ(t, Options{Dir: dir})
			defer j.Close()
			checkSame(t, got, append(kept, more...))
			if rep.TornTails != 0 || len(rep.Corrupt) != 2 {
				t.Fatalf("report %+v", rep)
			}
			if !strings.Contains(strings.Join(rep.Corrupt, "\n"), fmt.Sprintf("%d messages lost", len(lost))) {
				t.Fatalf("corrupt report does not count %d lost: %q", len(lost), rep.Corrupt)
			}
			if j.Stats().Corrupt != 2 {
				t.Fatalf("stats %+v", j.Stats())
			}
		})
	}
}

func TestDamageFlipBodyByte(t *testing.T) {
	dir := t.TempDir()
	recs := build(t, dir, 50, 100)
	p := recs[20].p
	path := segFile(dir, 1)
	data, _ := os.ReadFile(path)
	data[p.Off+p.Len-5] ^= 0x40
	os.WriteFile(path, data, 0o644)
	j, got, rep := openJ(t, Options{Dir: dir})
	defer j.Close()
	want := append(append([]rec{}, recs[:20]...), recs[21:]...)
	checkSame(t, got, want)
	if rep.TornTails != 0 || len(rep.Corrupt) != 2 || !strings.Contains(rep.Corrupt[0], "crc mismatch") ||
		!strings.Contains(rep.Corrupt[1], "1 messages lost (ordinals 20..20)") {
		t.Fatalf("report %+v", rep)
	}
	// Read of the damaged record fails loudly.
	if _, _, err := j.Read(p, nil); err == nil {
		t.Fatal("Read of a corrupt record succeeded")
	}
}

func TestDamageNonLastTailIsCorruption(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024}
	j, _, _ := openJ(t, opts)
	recs := appendN(t, j, 0, 30, 100)
	j.Close()
	var seg1 []rec
	for _, r := range recs {
		if r.p.Seg == 1 {
			seg1 = append(seg1, r)
		}
	}
	lastP := seg1[len(seg1)-1].p
	os.Truncate(segFile(dir, 1), int64(lastP.Off)+5)
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, append(append([]rec{}, seg1[:len(seg1)-1]...), recs[len(seg1):]...))
	if rep.TornTails != 0 || len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], "count unknown") {
		t.Fatalf("report %+v", rep)
	}
}

func TestSpaceDeletionOldestFirst(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024}
	j, _, _ := openJ(t, opts)
	defer j.Close()
	recs := appendN(t, j, 0, 80, 100) // ~8 per segment
	nseg := recs[len(recs)-1].p.Seg
	// Keep one message of segment 2 alive; finish the rest.
	var keep rec
	var done []Key
	for _, r := range recs {
		if r.p.Seg == 2 && keep.p.Seg == 0 {
			keep = r
			continue
		}
		done = append(done, r.p.Key())
	}
	if err := j.Done(Published, done); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { ids, _ := listSegments(dir); return len(ids) > 0 && ids[0] == 2 })
	ids, _ := listSegments(dir)
	if ids[0] != 2 || ids[len(ids)-1] < nseg {
		t.Fatalf("segments %v", ids)
	}
	if _, _, err := j.Read(recs[0].p, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Read of deleted segment: %v", err)
	}
	seg, ok := j.Compactable()
	if !ok || seg != 2 {
		t.Fatalf("Compactable = %d %v (stats %+v)", seg, ok, j.Stats())
	}
	var movedTo Pos
	err := j.ScanLive(seg, func(p Pos, m *Message) error {
		if p != keep.p || !eqMsg(*m, keep.m) {
			t.Fatalf("ScanLive gave %+v", p)
		}
		var err error
		movedTo, err = j.AppendMoved(p.Key(), m)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { ids, _ := listSegments(dir); return len(ids) == 1 })
	if _, ok := j.Compactable(); ok {
		t.Fatal("still compactable")
	}
	st := j.Stats()
	if st.Live != 1 || st.DiskBytes > 4096 {
		t.Fatalf("stats %+v", st)
	}
	m, _, err := j.Read(movedTo, nil)
	if err != nil || !eqMsg(m, keep.m) {
		t.Fatalf("read moved: %v", err)
	}
	j.Close()
	j2, got, _ := openJ(t, opts)
	defer j2.Close()
	checkSame(t, got, []rec{{movedTo, keep.m}})
}

func waitFor(t *testing.T, f func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if f() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

func TestOpenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o644)
	if _, err := Open(Options{Dir: filepath.Join(file, "sub")}); err == nil {
		t.Fatal("Open under a regular file succeeded")
	} else {
		t.Log(err)
	}
	if _, err := Open(Options{}); err == nil {
		t.Fatal("Open without Dir succeeded")
	}
	dir := t.TempDir()
	j, _, _ := openJ(t, Options{Dir: dir})
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open: %v", err)
	}
	j.Close()
	j2, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal("Open after Close:", err)
	}
	j2.Close()
}

func TestWriteErrorKeepsJournalUsable(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 2048}
	j, _, _ := openJ(t, opts)
	before := appendN(t, j, 0, 10, 100)
	var fail sync.Mutex
	failing := true
	j.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
		fail.Lock()
		defer fail.Unlock()
		if failing {
			n, _ := f.WriteAt(b[:len(b)/2], off) // partial write, then ENOSPC
			return n, syscall.ENOSPC
		}
		return f.WriteAt(b, off)
	}
	if err := j.Done(Published, []Key{before[0].p.Key()}); err != nil {
		t.Fatal(err)
	}
	var p [1]Pos
	for i := range 3 {
		m := msg(50+i, 100)
		if err := j.Append([]Message{m}, p[:]); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Append with a failing disk: %v", err)
		}
	}
	for _, r := range before[1:] {
		if m, _, err := j.Read(r.p, nil); err != nil || !eqMsg(m, r.m) {
			t.Fatalf("Read during write errors: %v", err)
		}
	}
	if j.Stats().WriteErrors == 0 {
		t.Fatal("no write error counted")
	}
	fail.Lock()
	failing = false
	fail.Unlock()
	after := appendN(t, j, 100, 30, 100)
	j.Close()
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, append(before[1:], after...))
	if rep.TornTails != 0 || len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v", rep)
	}
}

// An Append spread over several groups of which one fails to write leaves
// none of its messages live: the ones written are marked cancelled. (They
// stayed live, pinning their segment and so every newer one, and came back
// after a restart although the caller had been told the Append failed.)
func TestFailedAppendLeavesNothingLive(t *testing.T) {
	for _, failing := range []int32{1, 2} { // the first group, or the second
		t.Run(fmt.Sprintf("group-%d-fails", failing), func(t *testing.T) {
			dir := t.TempDir()
			opts := Options{Dir: dir, GroupBytes: 1000, SegmentBytes: 2048}
			j, _, _ := openJ(t, opts)
			var calls atomic.Int32
			j.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
				if calls.Add(1) == failing {
					return 0, syscall.ENOSPC
				}
				return f.WriteAt(b, off)
			}
			ps := make([]Pos, 3)
			err := j.Append([]Message{msg(0, 800), msg(1, 800), msg(2, 800)}, ps) // a frame per group
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Append: %v, want ENOSPC", err)
			}
			if live := j.Stats().Live; live != 0 {
				t.Fatalf("%d messages of the failed Append live", live)
			}
			after := appendN(t, j, 10, 20, 300) // and the journal goes on
			for _, r := range after {
				if err := j.Done(Published, []Key{r.p.Key()}); err != nil {
					t.Fatal(err)
				}
			}
			if live := j.Stats().Live; live != 0 {
				t.Fatalf("all published: %d live", live)
			}
			j.Close()
			j, got, _ := openJ(t, opts)
			defer j.Close()
			if len(got) != 0 {
				t.Fatalf("after a restart %d messages recovered (first %q)", len(got), got[0].m.ID)
			}
		})
	}
}

func TestTooLarge(t *testing.T) {
	j, _, _ := openJ(t, Options{Dir: t.TempDir()})
	defer j.Close()
	var p [1]Pos
	if err := j.Append([]Message{{Topic: "t", Body: make([]byte, MaxRecordBytes)}}, p[:]); !errors.Is(err, ErrTooLarge) {
		t.Fatal(err)
	}
}

func FuzzDecodeRecord(f *testing.F) {
	m := msg(3, 40)
	f.Add(appendMsgFrame(nil, 7, nil, &m))
	f.Add(appendMsgFrame(nil, 0, &Key{1, 2}, &Message{Topic: "t"}))
	f.Add(appendDoneFrame(nil, Published, []Key{{1, 2}, {3, 4}}))
	f.Add([]byte{})
	f.Add(make([]byte, 64))
	damaged := appendMsgFrame(nil, 1, nil, &m)
	damaged[len(damaged)-1] ^= 0xff // crc mismatch, then a valid record
	f.Add(appendMsgFrame(damaged, 2, nil, &m))
	f.Fuzz(func(t *testing.T, b []byte) {
		scanSegment(b, true, true, func(*record) error { return nil }, nil)
		scanSegment(b, false, true, func(*record) error { return nil }, nil)
		typ, payload, n, err := decodeFrame(b, true)
		if err != nil {
			return
		}
		if n > len(b) || n < headerLen+1 {
			t.Fatalf("bad n %d", n)
		}
		switch typ {
		case recDone:
			if _, keys, err := decodeDone(payload); err == nil && len(keys)%8 != 0 {
				t.Fatal("bad keys")
			}
		default:
			var r rawMsg
			if err := decodeMsg(typ, payload, &r); err == nil {
				if len(r.id)+len(r.topic)+len(r.body) > n {
					t.Fatal("fields larger than the frame")
				}
			}
		}
	})
}

func TestReadDuringDeletion(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 2048, Fsync: FsyncAlways}
	j, _, _ := openJ(t, opts)
	defer j.Close()
	recs := appendN(t, j, 0, 200, 100)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []byte
			for i := w; ; i = (i + 7) % len(recs) {
				select {
				case <-stop:
					return
				default:
				}
				var m Message
				var err error
				m, buf, err = j.Read(recs[i].p, buf)
				if err != nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("Read %+v: %v", recs[i].p, err)
					return
				}
				if err == nil && !eqMsg(m, recs[i].m) {
					t.Errorf("Read %+v: wrong message", recs[i].p)
					return
				}
			}
		}()
	}
	for i := 0; i < len(recs); i += 10 {
		keys := make([]Key, 0, 10)
		for _, r := range recs[i : i+10] {
			keys = append(keys, r.p.Key())
		}
		if err := j.Done(Published, keys); err != nil {
			t.Fatal(err)
		}
		appendN(t, j, 1000+i, 1, 100) // keep groups flowing
	}
	waitFor(t, func() bool { return j.Stats().Deleted > 5 })
	close(stop)
	wg.Wait()
	if st := j.Stats(); st.Fsyncs == 0 || st.Live != 20 {
		t.Fatalf("stats %+v", st)
	}
}

// TestKill9 checks the contract: every Append that returned nil in a
// process killed with SIGKILL is recovered.
func TestKill9(t *testing.T) {
	if dir := os.Getenv("JOURNAL_KILL9_DIR"); dir != "" {
		kill9Child(dir)
		return
	}
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$")
	cmd.Env = append(os.Environ(), "JOURNAL_KILL9_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(acked) < 2000 {
		if id, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
			acked[id] = true
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if len(acked) < 2000 {
		t.Fatalf("child acked only %d", len(acked))
	}
	j, got, rep := openJ(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	defer j.Close()
	have := map[string]bool{}
	for _, r := range got {
		have[r.m.ID] = true
	}
	for id := range acked {
		if !have[id] {
			t.Fatalf("acknowledged message %s lost after kill -9 (report %+v)", id, rep)
		}
	}
	if len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v", rep)
	}
	t.Logf("acked %d, recovered %d, report %+v", len(acked), len(got), rep)
}

func kill9Child(dir string) {
	j, err := Open(Options{Dir: dir, SegmentBytes: 64 << 10, Fsync: FsyncNever, Logf: func(string, ...any) {}})
	if err != nil {
		panic(err)
	}
	if _, err := j.Recover(func(Pos, *Message) error { return nil }); err != nil {
		panic(err)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				m := msg(i, 300)
				m.ID = fmt.Sprintf("%d-%d", g, i)
				var p [1]Pos
				if err := j.Append([]Message{m}, p[:]); err != nil {
					panic(err)
				}
				mu.Lock()
				fmt.Fprintf(w, "ack %s\n", m.ID)
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func TestMissingSegmentReported(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024}
	j, _, _ := openJ(t, opts)
	recs := appendN(t, j, 0, 40, 100)
	j.Close()
	os.Remove(segFile(dir, 2))
	var want []rec
	for _, r := range recs {
		if r.p.Seg != 2 {
			want = append(want, r)
		}
	}
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, want)
	if len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], "missing") || j.Stats().LastRecovery.Segments != rep.Segments {
		t.Fatalf("report %+v", rep)
	}
}

// TestStress runs appenders, publishers (Done), a compactor (Compactable,
// ScanLive, AppendMoved) and readers together, then checks that recovery
// yields exactly the live set.
func TestStress(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 8 << 10, GroupBytes: 4 << 10}
	j, _, _ := openJ(t, opts)
	var mu sync.Mutex // serialises Done vs AppendMoved of one key, as the engine must
	live := map[Key]rec{}
	var keys []Key
	stop := make(chan struct{})
	var wg, appenders sync.WaitGroup
	for w := range 6 {
		appenders.Add(1)
		go func() {
			defer appenders.Done()
			for i := range 150 {
				m := msg(w*10000+i, 50+i%200)
				var p [1]Pos
				if err := j.Append([]Message{m}, p[:]); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				live[p[0].Key()] = rec{p[0], m}
				keys = append(keys, p[0].Key())
				mu.Unlock()
			}
		}()
	}
	wg.Add(1)
	go func() { // publisher: finish 4 of every 5 keys it sees; moved keys come back
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			if len(keys) == 0 {
				mu.Unlock()
				time.Sleep(time.Millisecond)
				continue
			}
			k := keys[0]
			keys = keys[1:]
			if _, ok := live[k]; ok && i%5 != 0 {
				delete(live, k)
				if err := j.Done(Published, []Key{k}); err != nil {
					t.Error(err)
				}
			}
			mu.Unlock()
		}
	}()
	wg.Add(1)
	go func() { // compactor
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			seg, ok := j.Compactable()
			if !ok {
				continue
			}
			err := j.ScanLive(seg, func(p Pos, m *Message) error {
				mu.Lock()
				defer mu.Unlock()
				r, ok := live[p.Key()]
				if !ok {
					return nil
				}
				if !eqMsg(*m, r.m) {
					t.Errorf("ScanLive %+v: wrong message", p)
				}
				np, err := j.AppendMoved(p.Key(), m)
				if err != nil {
					return err
				}
				delete(live, p.Key())
				live[np.Key()] = rec{np, r.m}
				keys = append(keys, np.Key())
				return nil
			})
			if err != nil && !errors.Is(err, ErrNotFound) {
				t.Error(err)
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // reader
		defer wg.Done()
		var buf []byte
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			var r rec
			for _, r = range live {
				break
			}
			mu.Unlock()
			if r.p.Seg == 0 {
				continue
			}
			var m Message
			var err error
			m, buf, err = j.Read(r.p, buf)
			if err == nil && !eqMsg(m, r.m) {
				t.Errorf("Read %+v: wrong message", r.p)
			}
		}
	}()
	appenders.Wait()
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(keys) == 0 })
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	st := j.Stats()
	j.Close()
	j, got, rep := openJ(t, opts)
	defer j.Close()
	if len(got) != len(live) || len(rep.Corrupt) != 0 {
		t.Fatalf("recovered %d, want %d live (report %+v)", len(got), len(live), rep)
	}
	for _, r := range got {
		w, ok := live[r.p.Key()]
		if !ok || w.p != r.p || !eqMsg(w.m, r.m) {
			t.Fatalf("recovered %+v not in the live set", r.p)
		}
	}
	t.Logf("live %d, segments %d, deleted %d, disk %d B, live bytes %d", len(live), st.Segments, st.Deleted, st.DiskBytes, st.LiveBytes)
}

func TestWriteErrorAtRollover(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024}
	j, _, _ := openJ(t, opts)
	var failing sync.Map
	failing.Store("on", true)
	j.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
		if on, _ := failing.Load("on"); on.(bool) && strings.HasSuffix(f.Name(), "00000002.seg") {
			return 0, syscall.EIO
		}
		return f.WriteAt(b, off)
	}
	var ok []rec
	var p [1]Pos
	for i := 0; i < 20; i++ {
		m := msg(i, 100)
		err := j.Append([]Message{m}, p[:])
		if err == nil {
			ok = append(ok, rec{p[0], m})
			continue
		}
		if !errors.Is(err, syscall.EIO) {
			t.Fatal(err)
		}
	}
	if len(ok) == 0 || len(ok) == 20 {
		t.Fatalf("%d appends succeeded", len(ok))
	}
	failing.Store("on", false)
	ok = append(ok, appendN(t, j, 100, 20, 100)...)
	j.Close()
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, ok)
	if rep.TornTails != 0 || len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v", rep)
	}
}

// TestAppendSpansGroups has concurrent Appends each larger than a group
// (and than a segment), so every call reserves, encodes and releases
// several chunks while others do the same; everything reads back and is
// recovered in log order.
func TestAppendSpansGroups(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 16 << 10, GroupBytes: 4 << 10}
	j, _, _ := openJ(t, opts)
	const workers, calls, per = 8, 5, 60
	var mu sync.Mutex
	var all []rec
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range calls {
				ms := make([]Message, per)
				for k := range ms {
					ms[k] = msg(w*100000+c*1000+k, 100+(k*37+w)%400)
				}
				if !appendRecorded(t, j, ms, &mu, &all) {
					return
				}
			}
		}()
	}
	wg.Wait()
	if st := j.Stats(); st.Appends != workers*calls*per {
		t.Fatalf("stats: %d appends, want %d", st.Appends, workers*calls*per)
	}
	checkAppended(t, j, opts, all)
}

// TestIntervalSyncsSealedSegments: in FsyncInterval mode a rollover does
// not fsync on the flusher; the periodic fsync owes every sealed segment
// one, so after a few intervals each segment written has been fsynced.
func TestIntervalSyncsSealedSegments(t *testing.T) {
	opts := Options{Dir: t.TempDir(), SegmentBytes: 8 << 10, Fsync: FsyncInterval, FsyncInterval: 20 * time.Millisecond}
	j, _, _ := openJ(t, opts)
	defer j.Close()
	ms := make([]Message, 10)
	for k := range ms {
		ms[k] = msg(k, 900)
	}
	ps := make([]Pos, len(ms))
	segs := map[uint32]bool{}
	for range 6 { // ~54 KiB: 7 segments, written faster than one interval
		if err := j.Append(ms, ps); err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			segs[p.Seg] = true
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for j.Stats().Fsyncs < uint64(len(segs)) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := j.Stats().Fsyncs; got < uint64(len(segs)) {
		t.Fatalf("%d fsyncs for %d segments written", got, len(segs))
	}
}

// Close during Recover's replay (a shutdown signal in a long replay): the
// journal does not start afterwards; Recover returns ErrClosed and leaves
// no flusher running and no segment open.
func TestCloseDuringRecover(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir}
	j, _, _ := openJ(t, opts)
	appendN(t, j, 0, 3, 10)
	j.Close()
	j, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	_, err = j.Recover(func(p Pos, m *Message) error {
		if !closed {
			closed = true
			if err := j.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
		return nil
	})
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Recover after a Close during the replay: %v, want ErrClosed", err)
	}
	if j.recovered {
		t.Fatal("the journal started after Close")
	}
	// The directory is free again: a new journal opens and has the data.
	j, got, _ := openJ(t, opts)
	defer j.Close()
	if len(got) != 3 {
		t.Fatalf("recovered %d, want 3", len(got))
	}
}

// writeByteAt overwrites the byte at off in the file at path.
func writeByteAt(t *testing.T, path string, off int64, b byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{b}, off); err != nil {
		t.Fatal(err)
	}
}

// appendVictimAndDecoy appends a message (the victim), then a decoy: a
// message whose body starts with a valid Done frame cancelling the victim,
// padded to pad more bytes. It returns the victim and the decoy's position.
func appendVictimAndDecoy(t *testing.T, j *Journal, pad int) (rec, Pos) {
	t.Helper()
	victim := appendN(t, j, 0, 1, 100)[0]
	body := append(appendDoneFrame(nil, Cancelled, []Key{victim.p.Key()}), make([]byte, pad)...)
	var p [1]Pos
	if err := j.Append([]Message{{Topic: "t", Body: body}}, p[:]); err != nil {
		t.Fatal(err)
	}
	return victim, p[0]
}

// A record that fails its CRC and ends its segment, whose body holds a
// valid-looking frame (a client's message carrying a Done record for
// another message): nothing can follow it, so recovery does not search its
// body; the other message stays live. In the last segment it is the torn
// tail (a size that reached the disk before the last page did).
func TestDamagedLastRecordIsNotSearched(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir}
	j, _, _ := openJ(t, opts)
	victim, p := appendVictimAndDecoy(t, j, 400)
	j.Close()
	writeByteAt(t, segFile(dir, p.Seg), int64(p.Off)+int64(p.Len)-10, 0xff) // in the padding
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, []rec{victim})
	if rep.TornTails != 1 || len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v, want the damaged last record as the torn tail", rep)
	}
}

// A flipped byte in a record's length in the middle of the last segment is
// corruption, not a torn tail: the records after it are found again and
// kept, and the one record is reported lost.
func TestDamagedLengthKeepsLaterRecords(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir}
	j, _, _ := openJ(t, opts)
	recs := appendN(t, j, 0, 5, 100)
	j.Close()
	writeByteAt(t, segFile(dir, recs[1].p.Seg), int64(recs[1].p.Off)+2, 0x7f) // the length's third byte
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, append([]rec{recs[0]}, recs[2:]...))
	if rep.TornTails != 0 || !strings.Contains(strings.Join(rep.Corrupt, "\n"), "1 messages lost (ordinals 1..1)") {
		t.Fatalf("report %+v, want the one record reported lost and no torn tail", rep)
	}
}

// A damaged record in the middle of a segment whose body holds a
// valid-looking frame (a client's message carrying a Done record for
// another message): recovery skips the damaged record by its length, since
// a valid record follows it, instead of searching its body; the other
// message stays live and the next record is recovered.
func TestDamagedRecordBodyIsNotSearched(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir}
	j, _, _ := openJ(t, opts)
	victim, p := appendVictimAndDecoy(t, j, 400)
	after := appendN(t, j, 2, 1, 100)
	j.Close()
	writeByteAt(t, segFile(dir, p.Seg), int64(p.Off)+int64(p.Len)-10, 0xff) // in the padding
	j, got, rep := openJ(t, opts)
	defer j.Close()
	checkSame(t, got, []rec{victim, after[0]})
	if !strings.Contains(strings.Join(rep.Corrupt, "\n"), "1 messages lost (ordinals 1..1)") || rep.TornTails != 0 {
		t.Fatalf("report %+v, want the one damaged record (ordinal 1) lost", rep)
	}
}
