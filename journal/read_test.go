package journal

import (
	"bytes"
	"errors"
	"math/rand"
	"strconv"
	"sync"
	"testing"
	"time"
)

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
		kept := make([][]byte, n)
		j.ReadBatch(&r, ps, func(i int, m Message, err error) {
			seen[i]++
			kept[i] = m.Body
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
			// The bodies stay valid after the call, across all its spans.
			if !bytes.Equal(kept[i], want[i].Body) {
				t.Fatalf("round %d: index %d %+v: body changed after ReadBatch returned", round, i, ps[i])
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

// BenchmarkRead measures Read of a 500 B message (pread from page cache,
// CRC, decode) from 2 goroutines.
//
//	go test -run XXX -bench Read -benchtime 1000000x ./journal/
func BenchmarkRead(b *testing.B) {
	j, err := Open(Options{Dir: b.TempDir(), Fsync: FsyncNever})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := j.Recover(func(Pos, *Message) error { return nil }); err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	msgs := make([]Message, 1000)
	pos := make([]Pos, len(msgs))
	for i := range msgs {
		msgs[i] = Message{ID: "id-" + strconv.Itoa(i), Topic: "bench", Body: make([]byte, 500)}
	}
	if err := j.Append(msgs, pos); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(500)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		var buf []byte
		i := 0
		for pb.Next() {
			var err error
			_, buf, err = j.Read(pos[i%len(pos)], buf)
			if err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
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
