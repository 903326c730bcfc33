package deferd

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A data path that is not a writable directory is a clear error at start.
func TestUnwritableDataPathFailsAtStart(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := testOptions(filepath.Join(file, "journal"), node.TCPAddr)
	o.Logf = t.Logf
	if e, err := New(o); err == nil {
		e.Close(time.Second)
		t.Fatal("New on a data path under a regular file succeeded")
	} else {
		t.Logf("start error: %v", err)
	}
}

// Stop returns within its grace even when nsqd is down and a due bucket has
// more tasks than the pool has workers (the dispatcher blocked submitting
// them used to hold Stop for every task's retries), and nothing is lost:
// a deferd started on the same journal with nsqd up delivers all of it.
func TestStopKeepsGraceWithNSQDDown(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(dir, nsqdnodetest.ClosedAddr(t))
	o.PoolSize, o.TaskSize, o.DirectPublish = 1, 1, false
	o.PublishBackoff = 100 * time.Millisecond // each task retries for >= 0.3 s
	h := startHarness(t, o)
	var lines []string
	for i := range 60 {
		lines = append(lines, fmt.Sprintf("m%d", i))
	}
	h.mustPost(fmt.Sprintf("/mpub?topic=g&at=%d", time.Now().Add(200*time.Millisecond).UnixMilli()), []byte(strings.Join(lines, "\n")))
	for deadline := time.Now().Add(10 * time.Second); h.stats().Retried == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no publish was tried")
		}
	}
	stopWithinThenDeliver(t, h, dir, 50*time.Millisecond, 3*time.Second, "g", len(lines))
}

// stopWithinThenDeliver stops h (HTTP first) with the given grace, fails if
// that took longer than limit, then starts a real nsqd and an engine on the
// same journal and waits for n messages of topic to arrive.
func stopWithinThenDeliver(t *testing.T, h *harness, dir string, grace, limit time.Duration, topic string, n int) {
	t.Helper()
	h.srv.Shutdown()
	start := time.Now()
	h.e.Close(grace)
	if d := time.Since(start); d > limit {
		t.Fatalf("Stop(%v) took %v with nsqd unavailable", grace, d)
	} else {
		t.Logf("Stop(%v) took %v", grace, d)
	}
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	col := consume(t, node.TCPAddr, topic)
	startHarness(t, testOptions(dir, node.TCPAddr))
	col.waitCount(t, n, 10*time.Second)
}

// An nsqd that accepts connections and never answers (SIGSTOPped): publish
// tasks hang in go-nsq's connect (IDENTIFY, bounded only by its 10 s read
// timeout, one after another per Producer). Stop must still keep to its
// bound (it took over 20 s), and the messages stay in the journal.
func TestStopKeepsGraceWithNSQDHung(t *testing.T) {
	dir := t.TempDir()
	hung, unhang := nsqdnodetest.HungAddr(t)
	defer unhang() // before the harness's cleanup: its goroutines are stuck on it
	o := testOptions(dir, hung)
	o.PoolSize, o.TaskSize, o.DirectPublish = 2, 1, false
	h := startHarness(t, o)
	var lines []string
	for i := range 5 {
		lines = append(lines, fmt.Sprintf("m%d", i))
	}
	h.mustPost(fmt.Sprintf("/mpub?topic=g&at=%d", time.Now().Add(100*time.Millisecond).UnixMilli()), []byte(strings.Join(lines, "\n")))
	time.Sleep(300 * time.Millisecond) // due, and their tasks stuck connecting
	stopWithinThenDeliver(t, h, dir, 200*time.Millisecond, 5*time.Second, "g", len(lines))
}

// Stop while large /mpub requests (spanning several journal group commits)
// are being written: each request is kept whole or not at all. Stop used to
// close the journal under a running request, which got 503 EXITING with
// part of its messages kept and delivered after the restart.
func TestStopKeepsRequestsWhole(t *testing.T) {
	dir := t.TempDir()
	o := testOptions(dir, nsqdnodetest.ClosedAddr(t))
	o.DirectPublish = false
	o.Logf = func(string, ...any) {}
	e, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	bodies := make([][]byte, 4500) // 4.5 MB: more than one 4 MiB group commit
	for i := range bodies {
		bodies[i] = bytes.Repeat([]byte("b"), 1000)
	}
	var (
		mu      sync.Mutex
		results = map[string]error{}
		wg      sync.WaitGroup
	)
	for g := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ { // until Stop refuses
				topic := fmt.Sprintf("r%d_%d", g, i)
				err := pubReq(e, &ingest.PubRequest{Topic: topic, Due: time.Now().Add(time.Hour).UnixMilli(), Bodies: bodies})
				mu.Lock()
				results[topic] = err
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	e.Close(10 * time.Second)
	wg.Wait()

	e, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close(time.Second)
	got := e.Stats().PendingByTopic
	for topic, err := range results {
		want := int64(len(bodies))
		if err != nil {
			want = 0
		}
		if got[topic] != want {
			t.Errorf("request %s answered %v, and %d of its %d messages were kept", topic, err, got[topic], len(bodies))
		}
	}
}
