package deferd

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A few long-delay messages in old segments do not pin the journal:
// compaction moves them to the head, the old segments go away, disk use
// stays near the live data, and the moved messages keep their ids (cancel
// works) and survive a restart exactly once.
func TestCompactionBoundsDisk(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dir := t.TempDir()
	o := testOptions(dir, node.TCPAddr)
	o.SegmentSize = 64 << 10
	o.CompactInterval = 20 * time.Millisecond
	o.DirectPublish = false // the churn must pass through the journal
	h := startHarness(t, o)
	for i := 0; i < 10; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=long&defer=3600000&id=keep-%d", i), bytes.Repeat([]byte("L"), 300))
	}
	col := consume(t, node.TCPAddr, "churn")
	body := bytes.Repeat([]byte("c"), 500)
	var lines [][]byte
	for i := 0; i < 50; i++ {
		lines = append(lines, body)
	}
	for i := 0; i < 40; i++ { // 2000 x 500 B: ~16 segments of 64 KiB
		h.mustPost("/mpub?topic=churn", bytes.Join(lines, []byte("\n")))
	}
	col.waitCount(t, 2000, 20*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for {
		js := h.e.j.Stats()
		if js.Segments <= 3 && js.DiskBytes <= 2*js.LiveBytes+2*o.SegmentSize {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal not compacted: %+v, moved %d", js, h.e.moved.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h.e.moved.Load() < 10 {
		t.Fatalf("moved %d messages, want at least the 10 long ones", h.e.moved.Load())
	}
	if code, b := h.post("/cancel?id=keep-3", nil); code != 200 {
		t.Fatalf("cancel a moved message: %d %q", code, b)
	}
	h.stop()
	h2 := startHarness(t, o)
	if r := h2.e.Recovery(); r.Live != 9 || len(r.Corrupt) != 0 {
		t.Fatalf("after compaction and restart: %+v, want 9 live", r)
	}
	if code, _ := h2.post("/cancel?id=keep-5", nil); code != 200 {
		t.Fatalf("cancel after restart: %d", code)
	}
	if s := h2.stats(); s.Pending != 8 {
		t.Fatalf("pending %d, want 8", s.Pending)
	}
}

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
