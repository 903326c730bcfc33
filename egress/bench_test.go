//go:build unix

package egress

import (
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

const (
	benchBodySize   = 500
	benchWorkers    = 32   // concurrent publishers, like the engine's pool workers
	benchCall       = 1000 // bodies per Publish call (a due bucket's share of one topic)
	benchTopicQuota = 50000
)

// BenchmarkPublish measures messages per second into a real in-process
// nsqd (default MemQueueSize) from benchWorkers goroutines: egress at batch
// sizes 50/100/200 over 1/2/4 connections, and raw go-nsq MultiPublish over
// 1 and 4 Producers at the same batch sizes, in one run. It reports msg/s
// (wall clock) and msg/cpu-s (messages per CPU-second of this process,
// which runs both the publishers and nsqd): the second stays meaningful
// when other work shares the machine. No consumer is
// attached; topics rotate every benchTopicQuota messages and old ones are
// deleted so nsqd never spills to disk.
//
//	go test -run '^$' -bench Publish -benchtime 2s ./egress/
func BenchmarkPublish(b *testing.B) {
	for _, batch := range []int{50, 100, 200, 500} {
		for _, conns := range []int{1, 2, 4} {
			b.Run(fmt.Sprintf("egress/batch=%d/conns=%d", batch, conns), func(b *testing.B) {
				node := nsqdnodetest.Start(b, nsqdnode.Config{})
				p, err := New(Options{Addrs: []string{node.TCPAddr}, ConnsPerAddr: conns, MaxBatchMsgs: batch, Logf: b.Logf})
				if err != nil {
					b.Fatal(err)
				}
				defer p.Stop()
				runPublishBench(b, node, benchCall, func(topic string, bodies [][]byte) error {
					_, err := p.Publish(topic, bodies)
					return err
				})
			})
		}
	}
	for _, batch := range []int{50, 100, 200} {
		for _, prods := range []int{1, 4} {
			b.Run(fmt.Sprintf("raw-go-nsq/batch=%d/producers=%d", batch, prods), func(b *testing.B) {
				node := nsqdnodetest.Start(b, nsqdnode.Config{})
				ps := make([]*nsq.Producer, prods)
				for i := range ps {
					pr, err := nsq.NewProducer(node.TCPAddr, nsq.NewConfig())
					if err != nil {
						b.Fatal(err)
					}
					pr.SetLoggerLevel(nsq.LogLevelError)
					defer pr.Stop()
					ps[i] = pr
				}
				var rr atomic.Uint64
				runPublishBench(b, node, batch, func(topic string, bodies [][]byte) error {
					return ps[rr.Add(1)%uint64(prods)].MultiPublish(topic, bodies)
				})
			})
		}
	}
}

// runPublishBench publishes b.N bodies (rounded up to calls of call bodies)
// through publish from benchWorkers goroutines and reports msg/s.
func runPublishBench(b *testing.B, node *nsqdnode.Node, call int, publish func(topic string, bodies [][]byte) error) {
	body := make([]byte, benchBodySize)
	for i := range body {
		body[i] = byte(i)
	}
	bodies := make([][]byte, call)
	for i := range bodies {
		bodies[i] = body
	}
	calls := int64((b.N + call - 1) / call)
	var next atomic.Int64
	var janitor sync.WaitGroup
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	for range benchWorkers {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= calls {
					return
				}
				gen := i * int64(call) / benchTopicQuota
				if gen >= 3 && (i*int64(call))%benchTopicQuota < int64(call) {
					old := fmt.Sprintf("bench%d", gen-3)
					janitor.Go(func() { _ = node.NSQD.DeleteExistingTopic(old) })
				}
				if err := publish(fmt.Sprintf("bench%d", gen), bodies); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	janitor.Wait()
	msgs := float64(calls * int64(call))
	b.ReportMetric(msgs/elapsed.Seconds(), "msg/s")
	b.ReportMetric(msgs/cpu.Seconds(), "msg/cpu-s")
}

// cpuTime returns the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
