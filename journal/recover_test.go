package journal

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

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
			// One region, one line: its lost messages are in it.
			if rep.TornTails != 0 || len(rep.Corrupt) != 1 {
				t.Fatalf("report %+v", rep)
			}
			if !strings.Contains(strings.Join(rep.Corrupt, "\n"), fmt.Sprintf("%d messages lost", len(lost))) {
				t.Fatalf("corrupt report does not count %d lost: %q", len(lost), rep.Corrupt)
			}
			if j.Stats().Corrupt != 1 {
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
	// One corrupt record, one line (and one count), stating what it lost.
	if rep.TornTails != 0 || len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], "crc mismatch") ||
		!strings.Contains(rep.Corrupt[0], "1 messages lost (ordinals 20..20)") || j.Stats().Corrupt != 1 {
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

// BenchmarkRecover measures Open+Recover+Close of a journal of
// JOURNAL_BENCH_RECORDS (default 1M) live records with 500 B bodies, page
// cache warm. The journal is built once, outside the timer.
//
//	go test -run XXX -bench Recover -benchtime 3x ./journal/
func BenchmarkRecover(b *testing.B) { benchRecover(b, false) }

func benchRecover(b *testing.B, v1 bool) {
	n := 1_000_000
	if s := os.Getenv("JOURNAL_BENCH_RECORDS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	dir := b.TempDir()
	done := buildBenchJournal(b, dir, n)
	if v1 {
		toV1(b, dir)
	}
	b.ResetTimer()
	var rep Report
	for i := 0; i < b.N; i++ {
		rep = recoverOnce(b, dir)
	}
	b.StopTimer()
	if rep.Live != n-done {
		b.Fatalf("report %+v", rep)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(rep.Bytes)/(1<<20), "MiB")
}

// BenchmarkRecoverFormats recovers the same journal as v2 and as v1 (a
// copy rewritten by toV1), alternating, one of each per op, and reports
// the median time of each (ms), so both see the same machine load.
//
//	go test -run XXX -bench RecoverFormats -benchtime 10x ./journal/
func BenchmarkRecoverFormats(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("JOURNAL_BENCH_RECORDS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	v2 := b.TempDir()
	done := buildBenchJournal(b, v2, n)
	v1 := b.TempDir()
	ids, _ := listSegments(v2)
	for _, id := range ids {
		data, err := os.ReadFile(segFile(v2, id))
		if err != nil {
			b.Fatal(err)
		}
		os.WriteFile(segFile(v1, id), data, 0o644)
	}
	toV1(b, v1)
	syscall.Sync()
	var t1, t2 []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k, dir := range []string{v2, v1} {
			if i%2 == 1 {
				dir = []string{v1, v2}[k]
			}
			start := time.Now()
			rep := recoverOnce(b, dir)
			ms := float64(time.Since(start).Microseconds()) / 1000
			if rep.Live != n-done {
				b.Fatalf("report %+v", rep)
			}
			if dir == v1 {
				t1 = append(t1, ms)
			} else {
				t2 = append(t2, ms)
			}
		}
	}
	b.StopTimer()
	med := func(x []float64) float64 { slices.Sort(x); return x[len(x)/2] }
	b.ReportMetric(med(t2), "v2-ms")
	b.ReportMetric(med(t1), "v1-ms")
}

// recoverOnce opens dir, recovers it (touching every live body) and closes.
func recoverOnce(b *testing.B, dir string) Report {
	j, err := Open(Options{Dir: dir, Fsync: FsyncNever})
	if err != nil {
		b.Fatal(err)
	}
	var live int
	rep, err := j.Recover(func(p Pos, m *Message) error {
		live += len(m.Body)
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	j.Close()
	return rep
}

// buildBenchJournal writes n live records with 500 B bodies to a journal
// in dir and publishes every 10th; it returns how many it published.
func buildBenchJournal(b *testing.B, dir string, n int) int {
	j, err := Open(Options{Dir: dir, Fsync: FsyncNever})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := j.Recover(func(Pos, *Message) error { return nil }); err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 500)
	msgs := make([]Message, 1000)
	pos := make([]Pos, len(msgs))
	for i := range msgs {
		msgs[i] = Message{ID: "client-id-" + strconv.Itoa(i), Topic: "bench", Due: 1700000000000, Body: body}
	}
	// Publish every 10th message so liveness has work to do.
	var done []Key
	for i := 0; i < n; i += len(msgs) {
		k := min(len(msgs), n-i)
		if err := j.Append(msgs[:k], pos[:k]); err != nil {
			b.Fatal(err)
		}
		for x := 0; x < k; x += 10 {
			done = append(done, pos[x].Key())
		}
	}
	if err := j.Done(Published, done); err != nil {
		b.Fatal(err)
	}
	j.Close()
	return len(done)
}

// toV1 rewrites the v2 segments of dir as the v1 code wrote them: no
// header, frames CRC'd without the seed (same records, same Keys; offsets
// move by the header's 32 bytes, which nothing on disk refers to).
func toV1(tb testing.TB, dir string) {
	tb.Helper()
	ids, err := listSegments(dir)
	if err != nil {
		tb.Fatal(err)
	}
	for _, id := range ids {
		data, err := os.ReadFile(segFile(dir, id))
		if err != nil {
			tb.Fatal(err)
		}
		h, err := parseHeader(data, id)
		if err != nil {
			tb.Fatalf("segment %d: %v", id, err)
		}
		seed := h.seed()
		body := data[segHeaderLen:]
		for off := 0; off < len(body); {
			_, _, n, err := decodeFrame(body[off:], seed, true)
			if err != nil {
				tb.Fatalf("segment %d offset %d: %v", id, off, err)
			}
			finishFrame(body[off:off+n], 0)
			off += n
		}
		if err := os.WriteFile(segFile(dir, id), body, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkRecoverV1 is BenchmarkRecover with the journal rewritten as v1
// segments (toV1) before the timer starts: the same records, read by the
// v1 path of Recover.
//
//	go test -run XXX -bench 'Recover' -benchtime 3x ./journal/
func BenchmarkRecoverV1(b *testing.B) { benchRecover(b, true) }
