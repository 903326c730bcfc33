package journal

import (
	"errors"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

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

// BenchmarkPageCacheWrite measures what the journal's flusher pays the
// kernel per byte, without the journal: 1 MiB pwrites appending to a new
// file (each page newly allocated in the page cache) versus overwriting a
// file whose pages are already cached. One op is one 1 MiB write.
//
//	go test -run XXX -bench PageCacheWrite -benchtime 256x ./journal/
func BenchmarkPageCacheWrite(b *testing.B) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i)
	}
	for _, mode := range []string{"append-new-pages", "overwrite-cached-pages"} {
		b.Run(mode, func(b *testing.B) {
			f, err := os.Create(b.TempDir() + "/f")
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			if mode == "overwrite-cached-pages" {
				for i := 0; i < b.N; i++ {
					if _, err := f.WriteAt(buf, int64(i)<<20); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.SetBytes(int64(len(buf)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := f.WriteAt(buf, int64(i)<<20); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
