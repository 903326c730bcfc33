package journal

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

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

// BenchmarkAppend measures group-committed Append throughput of 500 B
// messages from 64 goroutines, in batches of 1 (/pub) and 100 (/mpub), for
// each fsync mode. One b.N iteration is one message.
//
//	go test -run XXX -bench 'Append' -benchtime 200000x ./journal/
func BenchmarkAppend(b *testing.B) {
	for _, mode := range []FsyncMode{FsyncAlways, FsyncInterval, FsyncNever} {
		for _, batch := range []int{1, 100} {
			b.Run(fmt.Sprintf("fsync=%s/batch=%d", mode, batch), func(b *testing.B) {
				benchAppend(b, mode, batch, 64)
			})
		}
	}
}

func benchAppend(b *testing.B, mode FsyncMode, batch, workers int) {
	j, err := Open(Options{Dir: b.TempDir(), Fsync: mode, Logf: b.Logf})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := j.Recover(func(Pos, *Message) error { return nil }); err != nil {
		b.Fatal(err)
	}
	defer j.Close()
	body := make([]byte, 500)
	for i := range body {
		body[i] = byte('a' + i%26)
	}
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.SetBytes(500)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]Message, batch)
			pos := make([]Pos, batch)
			for i := range msgs {
				msgs[i] = Message{ID: "id-" + strconv.Itoa(w), Topic: "bench", Due: time.Now().UnixMilli(), Body: body}
			}
			for {
				n := left.Add(-int64(batch))
				if n <= -int64(batch) {
					return
				}
				k := batch
				if n < 0 {
					k += int(n)
				}
				if err := j.Append(msgs[:k], pos[:k]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	b.StopTimer()
	st := j.Stats()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
	if st.Groups > 0 {
		b.ReportMetric(float64(st.Appends)/float64(st.Groups), "msgs/group")
	}
	b.ReportMetric(float64(st.Fsyncs), "fsyncs")
}

// BenchmarkAppendSteady measures Append in the steady state of a journal
// whose messages finish soon after they are written: 64 goroutines append
// 500 B messages in batches of 100 and publish each batch right after
// (Done), so sealed segments are deleted as fast as new ones are created.
// recycle=on reuses deleted segments' files (the default, up to
// defaultRecycle kept), recycle=off unlinks them and creates every segment
// as a new file (what the journal did before recycling). Segments are
// JOURNAL_BENCH_SEGMENT_MB (default 16) MiB. One b.N iteration is one
// message.
//
//	go test -run XXX -bench AppendSteady -benchtime 1000000x ./journal/
func BenchmarkAppendSteady(b *testing.B) {
	segMB := 16
	if s := os.Getenv("JOURNAL_BENCH_SEGMENT_MB"); s != "" {
		segMB, _ = strconv.Atoi(s)
	}
	for _, mode := range []FsyncMode{FsyncInterval, FsyncNever} {
		for _, rec := range []string{"on", "off"} {
			b.Run(fmt.Sprintf("fsync=%s/recycle=%s", mode, rec), func(b *testing.B) {
				j, err := Open(Options{Dir: b.TempDir(), Fsync: mode, SegmentBytes: int64(segMB) << 20, Logf: b.Logf})
				if err != nil {
					b.Fatal(err)
				}
				if rec == "off" {
					j.recycle = -1
				}
				if _, err := j.Recover(func(Pos, *Message) error { return nil }); err != nil {
					b.Fatal(err)
				}
				defer j.Close()
				body := make([]byte, 500)
				for i := range body {
					body[i] = byte('a' + i%26)
				}
				const batch, workers = 100, 64
				var left atomic.Int64
				left.Store(int64(b.N))
				var wg sync.WaitGroup
				b.SetBytes(500)
				b.ResetTimer()
				start := time.Now()
				for w := 0; w < workers; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						msgs := make([]Message, batch)
						pos := make([]Pos, batch)
						keys := make([]Key, batch)
						for i := range msgs {
							msgs[i] = Message{ID: "id-" + strconv.Itoa(w), Topic: "bench", Due: time.Now().UnixMilli(), Body: body}
						}
						for {
							n := left.Add(-batch)
							if n <= -batch {
								return
							}
							k := batch
							if n < 0 {
								k += int(n)
							}
							if err := j.Append(msgs[:k], pos[:k]); err != nil {
								b.Error(err)
								return
							}
							for i := range k {
								keys[i] = pos[i].Key()
							}
							if err := j.Done(Published, keys[:k]); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				el := time.Since(start)
				b.StopTimer()
				st := j.Stats()
				b.ReportMetric(float64(b.N)/el.Seconds(), "msgs/s")
				b.ReportMetric(float64(st.Deleted), "deleted")
				b.ReportMetric(float64(st.Recycled), "recycled")
			})
		}
	}
}
