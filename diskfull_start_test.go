package deferd

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// fillDisk writes dir/filler until the filesystem is full, the last pages
// too.
func fillDisk(t *testing.T, dir string) string {
	t.Helper()
	name := filepath.Join(dir, "filler")
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for _, n := range []int{len(buf), 4096, 512, 1} {
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	return name
}

// logLines collects a Scheduler's log lines (and passes them to t.Logf).
type logLines struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *logLines) logf(format string, args ...any) {
	l.t.Logf(format, args...)
	l.mu.Lock()
	fmt.Fprintf(&l.b, format+"\n", args...)
	l.mu.Unlock()
}

func (l *logLines) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), sub)
}

// Started on a full disk with messages pending from a previous run, deferd
// recovers and delivers them, refuses new delayed messages with 503
// JOURNAL_UNAVAILABLE and says so (/stats, /metrics, one log line); when
// space returns it takes them again by itself and writes the published
// marks it held, so a restart does not deliver those messages again.
func TestStartOnFullDisk(t *testing.T) {
	dir := mountTiny(t, "4m")
	data := filepath.Join(dir, "data")
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	big := bytes.Repeat([]byte("b"), 16<<10) // needs new pages, never fits a segment's last one

	// A previous run: 200 messages due in 1.5 s and one in an hour.
	o := testOptions(data, node.TCPAddr)
	o.Logf = t.Logf
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	bodies := make([][]byte, 200)
	for i := range bodies {
		bodies[i] = []byte(fmt.Sprintf("pending-%d", i))
	}
	if err := s.Publish(Pub{Topic: "full", Bodies: bodies, Delay: 1500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(Pub{Topic: "later", Bodies: [][]byte{[]byte("in an hour")}, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	filler := fillDisk(t, dir)

	// Start on the full disk.
	logs := &logLines{t: t}
	o.Logf = logs.logf
	col := consume(t, node.TCPAddr, "full")
	h := startHarness(t, o)
	if st := h.stats(); st.Pending != 201 || st.Journal.Writable || st.Journal.ReadOnlySince == nil {
		t.Fatalf("started on a full disk: pending %d, writable %v since %v; want 201, false, set",
			st.Pending, st.Journal.Writable, st.Journal.ReadOnlySince)
	}
	col.waitCount(t, 200, 15*time.Second)
	for range 5 {
		if code, body := h.post("/pub?topic=full&defer=60000", big); code != 503 || body != `{"message":"JOURNAL_UNAVAILABLE"}` {
			t.Fatalf("delayed /pub on a full disk: %d %q", code, body)
		}
	}
	if err := h.e.Publish(Pub{Topic: "full", Bodies: [][]byte{big}, Delay: time.Minute}); !errors.Is(err, ErrJournalUnavailable) {
		t.Fatalf("Publish on a full disk: %v, want ErrJournalUnavailable", err)
	}
	var m bytes.Buffer
	h.e.WritePrometheus(&m)
	if !strings.Contains(m.String(), "\ndeferd_journal_writable 0\n") {
		t.Fatalf("/metrics on a full disk: %s", grepLines(m.String(), "writable"))
	}
	if st := h.stats(); st.Journal.Writable || st.Pending != 1 || st.Published != 200 {
		t.Fatalf("after delivery: writable %v pending %d published %d", st.Journal.Writable, st.Pending, st.Published)
	}
	if n := logs.count("NOT WRITABLE"); n != 1 {
		t.Fatalf("%d NOT WRITABLE log lines, want 1", n)
	}

	// Space returns: deferd takes delayed messages again by itself.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for st := h.stats(); !st.Journal.Writable || st.Journal.HeldMarks != 0; st = h.stats() {
		if time.Now().After(deadline) {
			t.Fatalf("space freed, still: writable %v, held marks %d", st.Journal.Writable, st.Journal.HeldMarks)
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.mustPost("/pub?topic=later&defer=3600000", big)
	m.Reset()
	h.e.WritePrometheus(&m)
	if !strings.Contains(m.String(), "\ndeferd_journal_writable 1\n") {
		t.Fatalf("/metrics with space again: %s", grepLines(m.String(), "writable"))
	}
	if n := logs.count("writable again"); n != 1 || logs.count("NOT WRITABLE") != 1 {
		t.Fatalf("%d 'writable again' and %d NOT WRITABLE lines, want 1 and 1", n, logs.count("NOT WRITABLE"))
	}
	h.stop()

	// A restart finds only the two messages still pending: the published
	// marks held while the disk was full were written.
	o.Logf = t.Logf
	s, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	if p, live := s.Pending(), s.Recovery().Live; p != 2 || live != 2 {
		t.Fatalf("after a restart: pending %d, recovered %d; want 2 (the 200 published must not come back)", p, live)
	}
	time.Sleep(300 * time.Millisecond)
	if n := len(col.snapshot()); n != 200 {
		t.Fatalf("%d deliveries, want 200 (none again after the restart)", n)
	}
}

// With the embedded nsqd on a full disk, a direct publish is refused (503
// JOURNAL_UNAVAILABLE: nsqd could not persist it at a stop), and a
// graceful stop that loses nsqd's in-memory messages says so: Close
// counts them and returns an error.
func TestStopOnFullDiskCountsEmbeddedLoss(t *testing.T) {
	dir := mountTiny(t, "4m")
	o := testOptions(filepath.Join(dir, "data"))
	o.EmbeddedNSQD = true
	o.EmbeddedNSQDTCPAddress = "127.0.0.1:0"
	o.EmbeddedNSQDHTTPAddress = "127.0.0.1:0"
	logs := &logLines{t: t}
	o.Logf = logs.logf
	h := startHarness(t, o)
	for i := range 20 { // due now: straight into nsqd's memory (no consumer)
		h.mustPost("/pub?topic=direct", []byte(fmt.Sprintf("direct-%d", i)))
	}
	if st := h.stats(); st.PublishedDirect != 20 {
		t.Fatalf("published_direct %d, want 20", st.PublishedDirect)
	}
	fillDisk(t, dir)
	big := bytes.Repeat([]byte("b"), 16<<10)
	if code, body := h.post("/pub?topic=x&defer=60000", big); code != 503 {
		t.Fatalf("delayed /pub on a full disk: %d %q", code, body)
	}
	if code, body := h.post("/pub?topic=direct", big); code != 503 || body != `{"message":"JOURNAL_UNAVAILABLE"}` {
		t.Fatalf("direct /pub to the embedded nsqd on a full disk: %d %q, want 503 JOURNAL_UNAVAILABLE", code, body)
	}
	if st := h.stats(); st.PublishedDirect != 20 {
		t.Fatalf("published_direct %d after the refused one, want 20", st.PublishedDirect)
	}
	h.srv.Shutdown()
	err := h.e.Close(time.Second)
	if err == nil || !strings.Contains(err.Error(), "20 messages lost") {
		t.Fatalf("Close on a full disk with 20 messages in the embedded nsqd: %v", err)
	}
	if logs.count("ERROR: embedded nsqd: 20 messages lost") != 1 {
		t.Fatal("the loss was not logged")
	}
}
