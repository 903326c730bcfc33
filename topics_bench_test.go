package deferd_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/deferd/deferd"
)

// BenchmarkTopicsHeap publishes one due-now message to each of 300 new
// topics through a Scheduler with the embedded nsqd (its defaults), with
// no effective cap and with --max-topics at its default, and reports the
// Go heap they added (HeapInuse after a GC) and the topics accepted.
func BenchmarkTopicsHeap(b *testing.B) {
	const topics = 300
	for _, c := range []struct {
		name string
		max  int
	}{{"uncapped", 1 << 20}, {"max-topics-default", deferd.DefaultMaxTopics}} {
		b.Run(c.name, func(b *testing.B) {
			for i := range b.N {
				o := deferd.NewOptions()
				o.DataPath = b.TempDir()
				o.EmbeddedNSQD = true
				o.EmbeddedNSQDTCPAddress, o.EmbeddedNSQDHTTPAddress = "127.0.0.1:0", "127.0.0.1:0"
				o.MaxTopics = c.max
				o.Logf = func(string, ...any) {}
				s, err := deferd.New(o)
				if err != nil {
					b.Fatal(err)
				}
				before := heapInuse()
				accepted := 0
				for k := range topics {
					err := s.Publish(deferd.Pub{Topic: fmt.Sprintf("t%d-%d", i, k), Bodies: [][]byte{[]byte("x")}})
					switch {
					case err == nil:
						accepted++
					case !errors.Is(err, deferd.ErrTooManyTopics):
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(heapInuse()-before)/1e6, "heap-MB")
				b.ReportMetric(float64(accepted), "topics")
				s.Close(5 * time.Second)
			}
		})
	}
}

func heapInuse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}
