package journal

import (
	"errors"
	"math/rand"
	"testing"
	"time"
)

// ReadBatch returns, for any subset of positions in any order, across
// segments and with gaps, exactly what Read returns for each; positions of
// a deleted segment get ErrNotFound; every index is reported once.
func TestReadBatchMatchesRead(t *testing.T) {
	j, _, _ := openJ(t, Options{Dir: t.TempDir(), SegmentBytes: 8 << 10, FsyncInterval: time.Millisecond})
	defer j.Close()
	recs := appendN(t, j, 0, 600, 200)
	rng := rand.New(rand.NewSource(7))
	var r BatchReader
	for round := 0; round < 50; round++ {
		n := 1 + rng.Intn(200)
		var ps []Pos
		var want []Message
		for i := 0; i < n; i++ {
			k := rng.Intn(len(recs))
			ps = append(ps, recs[k].p)
			want = append(want, recs[k].m)
		}
		// a position repeated is read once per index too
		seen := make([]int, n)
		j.ReadBatch(&r, ps, func(i int, m Message, err error) {
			seen[i]++
			if err != nil {
				t.Fatalf("round %d: index %d %+v: %v", round, i, ps[i], err)
			}
			if !eqMsg(m, want[i]) {
				t.Fatalf("round %d: index %d %+v: got %q/%q, want %q", round, i, ps[i], m.ID, m.Body[:12], want[i].ID)
			}
		})
		for i, c := range seen {
			if c != 1 {
				t.Fatalf("round %d: index %d reported %d times", round, i, c)
			}
		}
	}

	// Finish every message of the first segment and the one after it, so
	// the first is deleted; its positions then read as ErrNotFound.
	var keys []Key
	first := recs[0].p.Seg
	var gone []Pos
	for _, rc := range recs {
		if rc.p.Seg <= first+1 {
			keys = append(keys, rc.p.Key())
			if rc.p.Seg == first {
				gone = append(gone, rc.p)
			}
		}
	}
	if err := j.Done(Published, keys); err != nil {
		t.Fatal(err)
	}
	appendN(t, j, 600, 50, 200) // a group after the Done marks runs the deletion
	deadline := time.Now().Add(5 * time.Second)
	for j.Stats().Deleted == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if j.Stats().Deleted == 0 {
		t.Fatal("first segment was not deleted")
	}
	ps := append(gone[:3:3], recs[len(recs)-1].p)
	got := 0
	j.ReadBatch(&r, ps, func(i int, m Message, err error) {
		got++
		if i < 3 && !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted segment: index %d err %v, want ErrNotFound", i, err)
		}
		if i == 3 && (err != nil || !eqMsg(m, recs[len(recs)-1].m)) {
			t.Fatalf("live record after a deleted one: %v", err)
		}
	})
	if got != 4 {
		t.Fatalf("fn called %d times, want 4", got)
	}
}

func BenchmarkReadBatch(b *testing.B) {
	j, _, _ := openJ(b, Options{Dir: b.TempDir()})
	defer j.Close()
	recs := appendN(b, j, 0, 1000, 500)
	ps := make([]Pos, len(recs))
	for i, r := range recs {
		ps[i] = r.p
	}
	var r BatchReader
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += len(ps) {
		j.ReadBatch(&r, ps, func(int, Message, error) {})
	}
}

// In interval mode the periodic fsync happens (on its own goroutine) and
// appends go on meanwhile.
func TestIntervalFsyncRuns(t *testing.T) {
	j, _, _ := openJ(t, Options{Dir: t.TempDir(), FsyncInterval: 5 * time.Millisecond})
	defer j.Close()
	appendN(t, j, 0, 10, 100)
	deadline := time.Now().Add(5 * time.Second)
	for j.Stats().Fsyncs == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no fsync within 5s in interval mode")
		}
		time.Sleep(time.Millisecond)
	}
	// The first fsync may have covered only part of what appendN wrote; wait
	// until nothing is owed and no fsync is running, then count.
	for {
		if time.Now().After(deadline) {
			t.Fatal("fsyncs still owed after 5s")
		}
		if j.toSync.Load() == nil && j.syncMu.TryLock() {
			j.sealedMu.Lock()
			owed := len(j.sealed)
			j.sealedMu.Unlock()
			j.syncMu.Unlock()
			if owed == 0 && j.toSync.Load() == nil {
				break
			}
		}
		time.Sleep(time.Millisecond)
	}
	n := j.Stats().Fsyncs
	time.Sleep(50 * time.Millisecond)
	if j.Stats().Fsyncs != n {
		t.Fatalf("fsyncs went from %d to %d with nothing written", n, j.Stats().Fsyncs)
	}
	appendN(t, j, 10, 10, 100)
	for j.Stats().Fsyncs == n {
		if time.Now().After(deadline) {
			t.Fatal("no fsync after new writes")
		}
		time.Sleep(time.Millisecond)
	}
}
