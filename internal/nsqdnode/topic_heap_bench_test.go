package nsqdnode_test

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// BenchmarkTopicHeap measures what one topic costs an in-process nsqd in
// Go heap (HeapInuse after a GC, before and after creating 300 topics with
// no channel), at deferd's --embedded-nsqd-mem-queue-size default, nsqd's
// own default and 0. nsqd v1.3.0's NewTopic makes its memoryMsgChan with a
// buffer of --mem-queue-size pointers at once, so the cost follows it.
func BenchmarkTopicHeap(b *testing.B) {
	const topics = 300
	for _, c := range []struct {
		name string
		size int64
	}{{"mem-queue-100000", 0}, {"mem-queue-10000", 10000}, {"mem-queue-0", nsqdnode.MemQueueNone}} {
		b.Run(c.name, func(b *testing.B) {
			for i := range b.N {
				n := nsqdnodetest.Start(b, nsqdnode.Config{MemQueueSize: c.size})
				before := heapInuse()
				for k := range topics {
					n.NSQD.GetTopic(fmt.Sprintf("t%d-%d", i, k))
				}
				per := float64(heapInuse()-before) / topics
				b.ReportMetric(per/1e6, "MB/topic")
				b.ReportMetric(per*topics/1e6, "MB/300topics")
				n.Exit()
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
