package journal

import (
	"bytes"
	"testing"
)

// The bodies ReadBatch hands out stay in the reader's buffer until its
// next call, but the gaps it reads between them (records of other
// messages, up to batchGap each) must not: a task's due messages spread
// among other traffic would otherwise hold every pread span, up to 64 KiB
// per message, for as long as the task runs (PoolSize x TaskSize x 64 KiB
// in all) instead of about its records.
func TestReadBatchKeepsRecordsNotGaps(t *testing.T) {
	j, _, _ := openJ(t, Options{Dir: t.TempDir()})
	defer j.Close()
	const n = 200
	var ps []Pos
	var want []Message
	var recBytes int
	for i := range n {
		r := appendN(t, j, 2*i, 1, 100)[0]
		ps = append(ps, r.p)
		want = append(want, r.m)
		recBytes += int(r.p.Len)
		appendN(t, j, 2*i+1, 1, 60<<10) // another message, between two of the batch
	}
	var r BatchReader
	kept := make([][]byte, n)
	j.ReadBatch(&r, ps, func(i int, m Message, err error) {
		if err != nil {
			t.Fatalf("index %d: %v", i, err)
		}
		kept[i] = m.Body
	})
	for i := range kept {
		if !bytes.Equal(kept[i], want[i].Body) {
			t.Fatalf("body %d changed after its callback", i)
		}
	}
	if limit := recBytes + batchSpan; len(r.buf) > limit {
		t.Fatalf("the reader holds %d bytes for %d records of %d bytes (want at most %d: the records and one span)",
			len(r.buf), n, recBytes, limit)
	}
}
