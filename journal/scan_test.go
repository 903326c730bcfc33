package journal

import (
	"os"
	"strings"
	"testing"
)

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
	body := append(appendDoneFrame(nil, 0, Cancelled, []Key{victim.p.Key()}), make([]byte, pad)...)
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
