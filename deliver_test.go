package deferd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/egress"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// Thousands of messages through /pub and /mpub (text and binary) with
// mixed delays arrive at an nsqd consumer exactly once, unchanged, and
// never before their due time.
func TestEndToEndMixedDelays(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	colA := consume(t, node.TCPAddr, "a")
	colB := consume(t, node.TCPAddr, "b#ephemeral")

	rng := rand.New(rand.NewSource(1))
	want := map[string]time.Time{} // body → not before
	var wantA, wantB int
	seq := 0
	for round := 0; round < 30; round++ {
		delay := time.Duration(rng.Intn(1500)) * time.Millisecond
		if round%5 == 4 {
			delay = 0 // due at once: straight to nsqd
		}
		ms := delay.Milliseconds()
		sent := time.Now()
		notBefore := sent.Add(delay)
		switch round % 3 {
		case 0: // single /pub
			for i := 0; i < 20; i++ {
				b := testBody(seq, notBefore, 200+rng.Intn(600), true)
				seq++
				h.mustPost(fmt.Sprintf("/pub?topic=a&defer=%d", ms), b)
				want[string(b)] = notBefore
				wantA++
			}
		case 1: // text /mpub
			var lines [][]byte
			for i := 0; i < 100; i++ {
				b := testBody(seq, notBefore, 100+rng.Intn(400), false)
				seq++
				lines = append(lines, b)
				want[string(b)] = notBefore
			}
			h.mustPost(fmt.Sprintf("/mpub?topic=b%%23ephemeral&defer=%d", ms), bytes.Join(lines, []byte("\n")))
			wantB += len(lines)
		case 2: // binary /mpub
			var bodies [][]byte
			for i := 0; i < 100; i++ {
				b := testBody(seq, notBefore, 50+rng.Intn(900), true)
				seq++
				bodies = append(bodies, b)
				want[string(b)] = notBefore
			}
			h.mustPost(fmt.Sprintf("/mpub?topic=a&binary=true&defer=%d", ms), mpubBinary(bodies))
			wantA += len(bodies)
		}
	}
	colA.waitCount(t, wantA, 30*time.Second)
	colB.waitCount(t, wantB, 30*time.Second)
	time.Sleep(300 * time.Millisecond) // let any duplicate arrive
	got := append(colA.snapshot(), colB.snapshot()...)
	if len(got) != len(want) {
		t.Fatalf("received %d messages, sent %d", len(got), len(want))
	}
	seen := map[string]bool{}
	for _, r := range got {
		nb, ok := want[string(r.body)]
		if !ok {
			t.Fatalf("received a body that was never sent (or was altered): % x", r.body[:16])
		}
		if seen[string(r.body)] {
			t.Fatalf("message %d received twice", binary.BigEndian.Uint64(r.body))
		}
		seen[string(r.body)] = true
		if r.at.Before(nb) {
			t.Fatalf("message %d arrived %v early", binary.BigEndian.Uint64(r.body), nb.Sub(r.at))
		}
	}
	s := h.stats()
	if s.Published != uint64(len(want)) || s.Accepted != uint64(len(want)) || s.Pending != 0 || s.Early != 0 {
		t.Fatalf("stats: accepted %d published %d pending %d early %d, want %d/%d/0/0",
			s.Accepted, s.Published, s.Pending, s.Early, len(want), len(want))
	}
	if s.Lateness.P99 <= 0 || s.Lateness.Max < s.Lateness.P50 {
		t.Fatalf("lateness percentiles look wrong: %+v", s.Lateness)
	}
}

// nsqd stopped and restarted mid-run loses nothing: messages due while it
// is down wait and go out when it is back.
func TestNSQDRestartLosesNothing(t *testing.T) {
	node, restart := restartableNSQD(t)
	addr := node.TCPAddr
	h := startHarness(t, testOptions(t.TempDir(), addr))

	const n = 600
	for i := 0; i < n; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=r&defer=%d", i*3), []byte(fmt.Sprintf("r%d", i)))
	}
	time.Sleep(400 * time.Millisecond)
	node.Exit() // down for a while: messages fall due meanwhile
	time.Sleep(1500 * time.Millisecond)
	if s := h.stats(); s.Retried == 0 {
		t.Errorf("expected failed publishes to be retried while nsqd was down; stats %+v", s)
	}
	// Messages due at once cannot go straight to nsqd now: they are
	// journaled and wait with the others.
	const nowN = 100
	var lines []string
	for i := 0; i < nowN; i++ {
		lines = append(lines, fmt.Sprintf("now%d", i))
	}
	pending := h.stats().Pending
	h.mustPost("/mpub?topic=r", []byte(strings.Join(lines, "\n")))
	if s := h.stats(); s.Pending != pending+nowN || s.DirectJournaled != nowN {
		t.Fatalf("pending %d, direct_journaled %d after a due-now mpub with nsqd down, want %d and %d",
			s.Pending, s.DirectJournaled, pending+nowN, nowN)
	}
	restart()
	col := consume(t, addr, "r")
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen := map[string]bool{}
		for _, r := range col.snapshot() {
			seen[string(r.body)] = true
		}
		if len(seen) == n+nowN {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d distinct messages of %d after nsqd restart; stats %+v", len(seen), n+nowN, h.stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := h.stats(); s.Pending != 0 {
		t.Fatalf("pending %d after everything arrived", s.Pending)
	}
}

// A message nsqd refuses outright (bigger than that nsqd's
// --max-msg-size) is parked and counted as failed, never dropped, and does
// not hold back the messages around it.
//
// Delayed, the five messages go through the wheel together. Due at once, they
// go straight to nsqd, which takes the first two; the other three are
// journaled and the wheel parks the big one.
func TestRejectedMessageParkedOthersDelivered(t *testing.T) {
	for _, c := range []struct {
		query          string
		direct, missed uint64
	}{{"&defer=1", 0, 0}, {"", 2, 3}} {
		t.Run("query="+c.query, func(t *testing.T) {
			node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: 1000})
			o := testOptions(t.TempDir(), node.TCPAddr)
			o.ParkBackoff = time.Hour
			h := startHarness(t, o)
			col := consume(t, node.TCPAddr, "rej")
			lines := [][]byte{[]byte("one"), []byte("two"), bytes.Repeat([]byte("B"), 2000), []byte("four"), []byte("five")}
			h.mustPost("/mpub?topic=rej"+c.query, bytes.Join(lines, []byte("\n")))
			col.waitCount(t, 4, 10*time.Second)
			time.Sleep(200 * time.Millisecond)
			bodies := col.bodies()
			if strings.Join(bodies, ",") != "one,two,four,five" {
				t.Fatalf("received %q", bodies)
			}
			s := h.stats()
			if s.Failed != 1 || s.Pending != 1 || s.Published != 4 {
				t.Fatalf("stats: failed %d pending %d published %d, want 1/1/4", s.Failed, s.Pending, s.Published)
			}
			if s.PublishedDirect != c.direct || s.DirectJournaled != c.missed {
				t.Fatalf("stats: published_direct %d direct_journaled %d, want %d and %d", s.PublishedDirect, s.DirectJournaled, c.direct, c.missed)
			}
		})
	}
}

// A message whose journal record cannot be read when it falls due stays
// pending: it goes back into the wheel and is tried again, can be
// cancelled meanwhile, and once the record reads again it is published
// and its id is free for a new message. (Before, it left the wheel for
// good until a restart: never published, its id stuck.)
func TestReadErrorRetries(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dir := t.TempDir()
	o := testOptions(dir, node.TCPAddr)
	o.ParkBackoff = 300 * time.Millisecond
	h := startHarness(t, o)
	col := consume(t, node.TCPAddr, "rd")
	h.mustPost("/pub?topic=rd&defer=200&id=X", []byte("body-of-x"))
	h.mustPost("/pub?topic=rd&defer=200&id=Y", []byte("body-of-y"))

	segs, err := filepath.Glob(filepath.Join(dir, "journal", "*.seg"))
	if err != nil || len(segs) != 1 {
		t.Fatalf("segments %v, %v", segs, err)
	}
	f, err := os.OpenFile(segs[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	flip := func(body string, c byte) {
		t.Helper()
		off := bytes.Index(data, []byte(body))
		if off < 0 {
			t.Fatalf("%q not in the segment", body)
		}
		if _, err := f.WriteAt([]byte{c}, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	flip("body-of-x", 'B') // both records now fail their CRC
	flip("body-of-y", 'B')
	for deadline := time.Now().Add(10 * time.Second); h.stats().ReadErrors < 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no read errors")
		}
	}
	if s := h.stats(); s.Pending != 2 || s.WheelEntries != 2 {
		t.Fatalf("after the read errors: pending %d, wheel entries %d; want 2, 2", s.Pending, s.WheelEntries)
	}
	if code, body := h.post("/cancel?id=Y", nil); code != 200 {
		t.Fatalf("cancel of a message whose record failed to read: %d %s", code, body)
	}
	if s := h.stats(); s.Pending != 1 || s.PendingByTopic["rd"] != 1 {
		t.Fatalf("after cancelling Y: pending %d, by topic %v; want 1, rd:1", s.Pending, s.PendingByTopic)
	}
	flip("body-of-x", 'b') // X reads again (offsets from the original bytes)
	col.waitCount(t, 1, 10*time.Second)
	for deadline := time.Now().Add(10 * time.Second); h.stats().Pending != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) { // nsqd has it; deferd marks it published after nsqd's OK
			t.Fatal("X delivered but still pending")
		}
	}
	if got := col.snapshot(); string(got[0].body) != "body-of-x" {
		t.Fatalf("got %q", got[0].body)
	}
	// X was published, so its id is free again.
	h.mustPost("/pub?topic=rd&defer=60000&id=X", []byte("second-x"))
	if s := h.stats(); s.Pending != 1 {
		t.Fatalf("pending %d after a new message with X's id, want 1", s.Pending)
	}
	if code, body := h.post("/cancel?id=X", nil); code != 200 {
		t.Fatalf("cancel of the new X: %d %s", code, body)
	}
	time.Sleep(3 * o.ParkBackoff)
	if got := col.snapshot(); len(got) != 1 {
		t.Fatalf("%d messages arrived, want only X", len(got))
	}
	if s := h.stats(); s.Pending != 0 || len(s.PendingByTopic) != 0 {
		t.Fatalf("at the end: pending %d, by topic %v; want 0 and none", s.Pending, s.PendingByTopic)
	}
}

// A publish task that panics (a bug) does not lose the messages it held
// until a restart: those it had not published go back into the wheel and
// are published on the next try.
func TestPanickingTaskLosesNothing(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.DirectPublish = false
	eg, err := egress.New(o.egressOptions(o.NSQDTCPAddresses))
	if err != nil {
		t.Fatal(err)
	}
	defer eg.Stop()
	var panicked sync.Once
	o.NSQDTCPAddresses = nil
	o.Sink = SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		if topic == "boom" {
			panicked.Do(func() { panic("injected") })
		}
		return nsqdSink{eg}.Publish(topic, bodies)
	})
	h := startHarness(t, o)
	boom, ok := consume(t, node.TCPAddr, "boom"), consume(t, node.TCPAddr, "ok")
	at := time.Now().Add(100 * time.Millisecond).UnixMilli()
	h.mustPost(fmt.Sprintf("/mpub?topic=ok&at=%d", at), []byte("o1\no2"))
	h.mustPost(fmt.Sprintf("/mpub?topic=boom&at=%d", at), []byte("b1\nb2\nb3"))
	boom.waitCount(t, 3, 10*time.Second)
	ok.waitCount(t, 2, 10*time.Second)
	for deadline := time.Now().Add(5 * time.Second); h.stats().Pending != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("pending %d after every message arrived", h.stats().Pending)
		}
	}
}
