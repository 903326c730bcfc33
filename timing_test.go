package deferd

import (
	"bytes"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A message nsqd refused is parked for ParkBackoff. Compaction must move it
// with its wheel due time intact (it recomputed the wheel due from the
// journal's original Due, long past, so the parked message was retried at
// once, every time its segment was compacted).
func TestCompactionKeepsParkBackoff(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: 1000})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.SegmentSize = 64 << 10
	o.CompactInterval = 20 * time.Millisecond
	o.DirectPublish = false
	o.ParkBackoff = time.Hour
	h := startHarness(t, o)
	col := consume(t, node.TCPAddr, "churn")
	h.mustPost("/pub?topic=big&defer=1", bytes.Repeat([]byte("B"), 2000))
	deadline := time.Now().Add(5 * time.Second)
	for h.e.failed.Load() < 1 {
		if time.Now().After(deadline) {
			t.Fatal("big message never refused")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Churn: fill several segments so the parked message's segment is
	// worth compacting.
	body := bytes.Repeat([]byte("c"), 500)
	var lines [][]byte
	for i := 0; i < 50; i++ {
		lines = append(lines, body)
	}
	for i := 0; i < 20; i++ {
		h.mustPost("/mpub?topic=churn", bytes.Join(lines, []byte("\n")))
	}
	col.waitCount(t, 1000, 20*time.Second)
	time.Sleep(2 * time.Second)
	s := h.stats()
	t.Logf("moved %d failed %d retried %d pending %d", s.Moved, s.Failed, s.Retried, s.Pending)
	if s.Failed != 1 {
		t.Fatalf("parked message (ParkBackoff %v) was tried %d times within seconds: compaction (moved %d) reset its backoff", o.ParkBackoff, s.Failed, s.Moved)
	}
}

// With MaxDefer at the largest time.Duration, ingest accepts
// defer=maxDeferMs, and wheelDue's dueMs*1e6 - wall overflowed int64: the
// message went to the wheel due ~292 years in the past and was published at
// once. The conversion now saturates, and such a message stays pending.
func TestMaxDeferOverflowStaysPending(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.MaxDefer = time.Duration(math.MaxInt64)
	h := startHarness(t, o)
	col := consume(t, node.TCPAddr, "far")
	maxMs := time.Duration(math.MaxInt64).Milliseconds()
	for i := 0; i < 40; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=far&defer=%d", maxMs), []byte(fmt.Sprint("far", i)))
		time.Sleep(time.Millisecond / 7)
	}
	time.Sleep(500 * time.Millisecond)
	if got := col.bodies(); len(got) > 0 {
		t.Fatalf("%d of 40 messages deferred by %d ms (292 years) were published at once: %q...", len(got), maxMs, got[0])
	}
}

// With nsqd hung, the pool fills with publish tasks retrying. A direct
// publish (a message due at once) must still answer within about
// Egress.Timeout (then it is journaled): its sender used to be a pool task,
// so its reply waited for a wheel task to finish (14 s, not 5).
func TestDirectPublishNotBehindFullPool(t *testing.T) {
	hung, unhang := nsqdnodetest.HungAddr(t)
	defer unhang()
	o := testOptions(t.TempDir(), hung)
	o.PoolSize = 2
	o.TaskSize = 1
	o.PublishBackoff = 50 * time.Millisecond
	o.Logf = func(string, ...any) {}
	h := startHarness(t, o)
	// 20 messages due in 200ms, in 20 tasks: more than the pool holds.
	var lines [][]byte
	for i := range 20 {
		lines = append(lines, fmt.Appendf(nil, "m%d", i))
	}
	h.mustPost(fmt.Sprintf("/mpub?topic=g&at=%d", time.Now().Add(200*time.Millisecond).UnixMilli()), bytes.Join(lines, []byte("\n")))
	time.Sleep(time.Second)
	t.Logf("pool running %d waiting %d", h.e.pool.Running(), h.e.pool.Waiting())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var worst time.Duration
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			code, resp := h.post(fmt.Sprintf("/pub?topic=d%d", i), []byte("now"))
			d := time.Since(start)
			mu.Lock()
			worst = max(worst, d)
			mu.Unlock()
			t.Logf("direct /pub %d: %d %s in %v", i, code, resp, d.Round(time.Millisecond))
		}()
	}
	wg.Wait()
	t.Logf("worst direct /pub latency with nsqd hung and the pool full: %v", worst.Round(time.Millisecond))
	if worst > 9*time.Second { // Egress.Timeout is 5 s
		t.Fatalf("a direct /pub took %v with the pool busy retrying", worst)
	}
}
