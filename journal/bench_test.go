package journal

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

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

// BenchmarkRecover measures Open+Recover+Close of a journal of
// JOURNAL_BENCH_RECORDS (default 1M) live records with 500 B bodies, page
// cache warm. The journal is built once, outside the timer.
//
//	go test -run XXX -bench Recover -benchtime 3x ./journal/
func BenchmarkRecover(b *testing.B) {
	n := 1_000_000
	if s := os.Getenv("JOURNAL_BENCH_RECORDS"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	dir := b.TempDir()
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
	b.ResetTimer()
	var rep Report
	for i := 0; i < b.N; i++ {
		j, err := Open(Options{Dir: dir, Fsync: FsyncNever})
		if err != nil {
			b.Fatal(err)
		}
		var live int
		rep, err = j.Recover(func(p Pos, m *Message) error {
			live += len(m.Body)
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		j.Close()
	}
	b.StopTimer()
	if rep.Live != n-len(done) {
		b.Fatalf("report %+v", rep)
	}
	b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.ReportMetric(float64(rep.Bytes)/(1<<20), "MiB")
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
