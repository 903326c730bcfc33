package deferd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
	"github.com/deferd/deferd/journal"
)

// at= is an absolute due time; a time in the past publishes at once.
func TestAbsoluteDueTime(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "at")
	at := time.Now().Add(700 * time.Millisecond)
	atMs := at.UnixMilli() + 1
	h.mustPost(fmt.Sprintf("/pub?topic=at&at=%d", atMs), []byte("later"))
	h.mustPost(fmt.Sprintf("/pub?topic=at&at=%d", time.Now().Add(-time.Hour).UnixMilli()), []byte("past"))
	got := col.waitCount(t, 2, 10*time.Second)
	if string(got[0].body) != "past" || string(got[1].body) != "later" {
		t.Fatalf("order %q, %q", got[0].body, got[1].body)
	}
	if got[1].at.UnixMilli() < atMs {
		t.Fatalf("at= message arrived %v early", time.UnixMilli(atMs).Sub(got[1].at))
	}
}

// Bad requests of every kind get their 4xx and leave pending messages
// intact: everything accepted before and after still arrives.
func TestBadInputKeepsPending(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "k")
	for i := 0; i < 50; i++ {
		h.mustPost("/pub?topic=k&defer=800", []byte(fmt.Sprintf("m%d", i)))
	}
	bad := []struct {
		path string
		body []byte
		code int
	}{
		{"/pub", []byte("x"), 400},
		{"/pub?topic=", []byte("x"), 400},
		{"/pub?topic=bad%20name", []byte("x"), 400},
		{"/pub?topic=k", nil, 400},
		{"/pub?topic=k&defer=-1", []byte("x"), 400},
		{"/pub?topic=k&defer=abc", []byte("x"), 400},
		{"/pub?topic=k&defer=99999999999999", []byte("x"), 400},
		{"/mpub?topic=k&binary=true", []byte{0, 0, 0, 5, 0, 0}, 413}, // nsqd: 413 BAD_BODY
		{"/pub?topic=k", bytes.Repeat([]byte("x"), 2<<20), 413},
		{"/nope", nil, 404},
	}
	for _, c := range bad {
		if code, _ := h.post(c.path, c.body); code != c.code {
			t.Errorf("POST %s: %d, want %d", c.path, code, c.code)
		}
	}
	if s := h.stats(); s.Pending != 50 {
		t.Fatalf("pending %d after bad input, want 50", s.Pending)
	}
	h.mustPost("/pub?topic=k", []byte("after"))
	col.waitCount(t, 51, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if got := col.snapshot(); len(got) != 51 {
		t.Fatalf("received %d, want 51", len(got))
	}
}

// Past --max-pending deferd answers 503 OVER_CAPACITY and keeps what it
// holds.
func TestCapacityLimit(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.MaxPending = 10
	h := startHarness(t, o)
	for i := 0; i < 10; i++ {
		h.mustPost("/pub?topic=cap&defer=60000", []byte("x"))
	}
	if code, b := h.post("/pub?topic=cap&defer=60000", []byte("x")); code != 503 || b != `{"message":"OVER_CAPACITY"}` {
		t.Fatalf("over capacity: %d %q", code, b)
	}
	if code, _ := h.post("/mpub?topic=cap&defer=1", []byte("a\nb")); code != 503 {
		t.Fatalf("mpub over capacity: %d", code)
	}
	// Messages already due go straight to nsqd (DirectPublish): deferd
	// does not hold them, so a full deferd still takes them.
	if code, b := h.post("/mpub?topic=cap", []byte("a\nb")); code != 200 {
		t.Fatalf("due-now mpub at capacity: %d %q", code, b)
	}
	if s := h.stats(); s.Pending != 10 || s.PublishedDirect != 2 {
		t.Fatalf("pending %d, direct %d, want 10 and 2", s.Pending, s.PublishedDirect)
	}
	if n := topicCount(node, "cap"); n != 2 {
		t.Fatalf("nsqd has %d messages, want the 2 due now", n)
	}
}

// --max-pending-bytes counts journal record bytes, in the check as in the
// counter: room for one more body but not for its record is no room.
func TestCapacityLimitBytes(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	body := bytes.Repeat([]byte("b"), 100)
	rec := int64(journal.RecordLen(&journal.Message{Topic: "capb", Body: body, Accepted: 1})) // records keep the accepted time
	o.MaxPendingBytes = 5*rec + int64(len(body))
	h := startHarness(t, o)
	for i := 0; i < 5; i++ {
		h.mustPost("/pub?topic=capb&defer=60000", body)
	}
	if code, b := h.post("/pub?topic=capb&defer=60000", body); code != 503 || b != `{"message":"OVER_CAPACITY"}` {
		t.Fatalf("over capacity: %d %q", code, b)
	}
	if p, pb := h.e.Pending(), h.e.pendingBytes.Load(); p != 5 || pb != 5*rec {
		t.Fatalf("pending %d (%d bytes), want 5 (%d bytes)", p, pb, 5*rec)
	}
}

// A publish repeating a pending id answers OK and schedules nothing, even
// when deferd is full (it got 503 OVER_CAPACITY: the capacity check came
// before the id's).
func TestPendingIDAtCapacity(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.MaxPending = 1
	h := startHarness(t, o)
	h.mustPost("/pub?topic=dc&defer=60000&id=order-1", []byte("first"))
	h.mustPost("/pub?topic=dc&defer=60000&id=order-1", []byte("first"))
	if code, body := h.post("/pub?topic=dc&defer=60000&id=order-2", []byte("second")); code != 503 {
		t.Fatalf("a new id at capacity: %d %s, want 503", code, body)
	}
	if s := h.stats(); s.Pending != 1 {
		t.Fatalf("pending %d, want 1", s.Pending)
	}
}

// mountTiny mounts a size-limited tmpfs: a real filesystem that fills up.
// It needs root; the test is skipped where mounting is not allowed.
func mountTiny(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" { // CI runs as root: a skip there would hide the test
			t.Fatalf("cannot mount a tmpfs (%v: %s)", err, bytes.TrimSpace(out))
		}
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// When the disk fills at run time deferd refuses new delayed messages with
// 503 JOURNAL_UNAVAILABLE (messages due at once still go straight to nsqd),
// keeps publishing what it holds, and takes delayed messages again once
// publishing has freed space.
func TestDiskFullRefusesNewKeepsPending(t *testing.T) {
	dir := mountTiny(t, "3m")
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(dir, node.TCPAddr)
	o.SegmentSize = 256 << 10
	h := startHarness(t, o)
	col := consume(t, node.TCPAddr, "full")

	body := bytes.Repeat([]byte("f"), 1000)
	var lines [][]byte
	for i := 0; i < 20; i++ {
		lines = append(lines, body)
	}
	mpub := bytes.Join(lines, []byte("\n"))
	accepted := 0
	var code int
	var resp string
	for i := 0; i < 1000; i++ {
		code, resp = h.post("/mpub?topic=full&defer=1500", mpub)
		if code != 200 {
			break
		}
		accepted += len(lines)
	}
	if code != 503 || resp != `{"message":"JOURNAL_UNAVAILABLE"}` {
		t.Fatalf("disk full: %d %q after %d messages, want 503 JOURNAL_UNAVAILABLE", code, resp, accepted)
	}
	if accepted == 0 {
		t.Fatal("nothing accepted before the disk filled")
	}
	t.Logf("disk full after %d accepted messages", accepted)
	// A message due at once needs no journal: it goes straight to nsqd.
	if code, resp := h.post("/pub?topic=full", []byte("due now")); code != 200 {
		t.Fatalf("due-now /pub with the disk full: %d %q, want 200 (direct to nsqd)", code, resp)
	}
	if s := h.stats(); s.PublishedDirect != 1 {
		t.Fatalf("published_direct %d, want 1", s.PublishedDirect)
	}
	accepted++
	// Everything accepted is still delivered.
	col.waitCount(t, accepted, 30*time.Second)
	time.Sleep(300 * time.Millisecond)
	if got := len(col.snapshot()); got != accepted {
		t.Fatalf("received %d, accepted %d", got, accepted)
	}
	// Published segments are deleted, so delayed messages are taken again.
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, resp = h.post("/pub?topic=full&defer=1", []byte("again"))
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still refusing after space was freed: %d %q; journal %+v", code, resp, h.e.j.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
	col.waitCount(t, accepted+1, 10*time.Second)
	if s := h.stats(); s.Pending != 0 || s.Published != uint64(accepted+1) {
		t.Fatalf("stats: pending %d published %d, want 0/%d", s.Pending, s.Published, accepted+1)
	}
}

// Two publishes with the same id at once while the disk is full: the one
// that finds the id being written by the other waits for that write. It
// used to answer OK at once (dedupe), and when the write then failed the
// client held a 200 for a message stored nowhere.
func TestSameIDWhileTheFirstWriteFails(t *testing.T) {
	dir := mountTiny(t, "2m")
	o := testOptions(dir, nsqdnodetest.ClosedAddr(t))
	o.SegmentSize = 256 << 10
	o.Logf = func(string, ...any) {}
	h := startHarness(t, o)
	line := bytes.Repeat([]byte("f"), 1000)
	mpub := bytes.Join([][]byte{line, line, line, line, line, line, line, line, line, line}, []byte("\n"))
	for i := 0; ; i++ { // fill the disk
		if code, _ := h.post("/mpub?topic=full&defer=600000", mpub); code != 200 {
			break
		}
		if i > 10000 {
			t.Fatal("the disk never filled")
		}
	}
	for round := range 100 {
		before := h.stats().Pending
		id := fmt.Sprintf("order-%d", round)
		codes := make([]int, 2)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for k := range codes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				codes[k], _ = h.post("/pub?topic=ord&defer=600000&id="+id, []byte("pay"))
			}()
		}
		close(start)
		wg.Wait()
		if (codes[0] == 200 || codes[1] == 200) && h.stats().Pending == before {
			t.Fatalf("round %d: answers %v with nothing stored", round, codes)
		}
	}
}

// TestMaxMsgSizeFitsAMovedRecord: Validate refuses a MaxMsgSize whose
// largest message fits an accepted record but not a moved one (it would be
// accepted, then never compacted or rescheduled); at the bound the
// largest message, with the longest id and topic, can be rescheduled.
func TestMaxMsgSizeFitsAMovedRecord(t *testing.T) {
	l := &sinkLog{got: map[string][]int64{}}
	o := funcSchedulerOpts(t, t.TempDir(), l)
	o.SegmentSize = 32 << 20
	o.MaxBodySize = 16 << 20
	o.MaxMsgSize = journal.MaxRecordBytes - 100
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--max-msg-size") {
		t.Fatalf("MaxMsgSize %d: Validate %v, want an error naming --max-msg-size", o.MaxMsgSize, err)
	}
	o.MaxMsgSize = journal.MaxRecordBytes - movedOverhead
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	id, topic := strings.Repeat("i", 128), strings.Repeat("t", 64)
	if err := s.Publish(Pub{Topic: topic, Bodies: [][]byte{make([]byte, o.MaxMsgSize)}, ID: id, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := s.Reschedule(Ref{ID: id}, time.Now().Add(2*time.Hour)); err != nil {
		t.Fatalf("Reschedule of the largest message: %v", err)
	}
}
