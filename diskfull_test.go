package deferd

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// mountTiny mounts a size-limited tmpfs: a real filesystem that fills up.
// It needs root; the test is skipped where mounting is not allowed.
func mountTiny(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s)", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

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

// A record damaged in the middle of the journal is reported loudly on
// restart (log, /stats, /metrics), and every other message is still
// recovered and delivered.
func TestCorruptRecordReported(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dir := t.TempDir()
	o := testOptions(dir, node.TCPAddr)
	o.SegmentSize = 16 << 10
	h := startHarness(t, o)
	for i := 0; i < 100; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=dmg&defer=1500&id=m%03d", i), bytes.Repeat([]byte{byte('a' + i%26)}, 400))
	}
	h.stop()

	segs, _ := filepath.Glob(filepath.Join(dir, "journal", "*.seg"))
	if len(segs) < 3 {
		t.Fatalf("want several segments, have %v", segs)
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff // one flipped byte inside a body of the first segment
	if err := os.WriteFile(segs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}

	var logMu sync.Mutex
	var logged []string
	o.Logf = func(f string, a ...any) {
		logMu.Lock()
		logged = append(logged, fmt.Sprintf(f, a...))
		logMu.Unlock()
	}
	col := consume(t, node.TCPAddr, "dmg")
	h2 := startHarness(t, o)
	h2.e.logf = o.Logf
	rep := h2.e.Recovery()
	if len(rep.Corrupt) == 0 || rep.Live != 99 {
		t.Fatalf("recovery %+v: want a corrupt region reported and 99 live", rep)
	}
	s := h2.stats()
	if len(s.Recovery.Corrupt) == 0 {
		t.Fatal("/stats does not report the corrupt record")
	}
	resp, err := http.Get(h2.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf("deferd_journal_corrupt_records %d\n", len(rep.Corrupt)); !strings.Contains(string(mb), want) {
		t.Fatalf("/metrics lacks %q:\n%s", want, grepLines(string(mb), "corrupt"))
	}
	logMu.Lock()
	var sawLog bool
	for _, l := range logged {
		sawLog = sawLog || strings.Contains(l, "CORRUPT")
	}
	logMu.Unlock()
	if !sawLog {
		t.Fatal("no CORRUPT line in the log")
	}
	got := col.waitCount(t, 99, 15*time.Second)
	if len(got) != 99 {
		t.Fatalf("delivered %d, want the 99 intact messages", len(got))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
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
