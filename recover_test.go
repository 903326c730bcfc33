package deferd

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A graceful stop keeps what is pending; a restart on the same journal
// recovers it with its due time kept (long delays stay pending and can be
// cancelled by id; short ones arrive after, never before, their due time).
func TestRestartKeepsDelays(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dir := t.TempDir()
	h := startHarness(t, testOptions(dir, node.TCPAddr))
	sent := time.Now()
	for i := 0; i < 20; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=long&defer=%d&id=long-%d", 2*3600*1000, i), []byte("long"))
	}
	for i := 0; i < 30; i++ {
		h.mustPost("/pub?topic=short&defer=1500", []byte(fmt.Sprintf("s%d", i)))
	}
	h.stop()

	h2 := startHarness(t, testOptions(dir, node.TCPAddr))
	if r := h2.e.Recovery(); r.Live != 50 {
		t.Fatalf("recovered %d live, want 50 (%+v)", r.Live, r)
	}
	col := consume(t, node.TCPAddr, "short")
	got := col.waitCount(t, 30, 15*time.Second)
	for _, r := range got {
		if r.at.Before(sent.Add(1500 * time.Millisecond)) {
			t.Fatalf("%s arrived %v before its due time", r.body, sent.Add(1500*time.Millisecond).Sub(r.at))
		}
	}
	if code, b := h2.post("/cancel?id=long-7", nil); code != 200 {
		t.Fatalf("cancel after restart: %d %q", code, b)
	}
	if s := h2.stats(); s.Pending != 19 || s.PendingByTopic["long"] != 19 {
		t.Fatalf("pending %d (long %d), want 19", s.Pending, s.PendingByTopic["long"])
	}
	// The dedupe index survived too.
	h2.mustPost("/pub?topic=long&defer=1000&id=long-3", []byte("dup"))
	if s := h2.stats(); s.Pending != 19 {
		t.Fatalf("pending %d after a duplicate id, want 19", s.Pending)
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
