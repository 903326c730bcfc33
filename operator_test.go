package deferd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/journal"
)

// sinkLog is a function sink that records every delivery.
type sinkLog struct {
	mu  sync.Mutex
	got map[string][]int64 // body -> delivery times, unix ms
}

func (l *sinkLog) sink() Sink {
	return SinkFunc(func(_ string, bodies [][]byte) (int, error) {
		now := time.Now().UnixMilli()
		l.mu.Lock()
		for _, b := range bodies {
			l.got[string(b)] = append(l.got[string(b)], now)
		}
		l.mu.Unlock()
		return len(bodies), nil
	})
}

func (l *sinkLog) times(body string) []int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.got[body]...)
}

func funcSchedulerOpts(t testing.TB, dir string, l *sinkLog) Options {
	o := NewOptions()
	o.DataPath = dir
	o.Sink = l.sink()
	o.Logf = t.Logf
	o.CompactInterval = 0
	o.SegmentSize = 1 << 20
	o.DirectPublish = false
	return o
}

// modelMsg is the model's view of one message.
type modelMsg struct {
	body      string
	id        string
	key       Key
	due       int64 // the latest due acknowledged, unix ms
	cancelled bool  // a cancel got nil: must never be delivered
	gone      bool  // not pending any more (found not found / cancelled)
}

// TestOperatorModel interleaves publishes, deliveries, reschedules (later,
// earlier, run now), cancels by id and key, lookups and listings, against
// a model. At the end every message not cancelled was delivered exactly
// once, never before its latest due time; listings taken along the way
// were in due order, never repeated a message, and held every message
// the model knew to be pending and far from due. It runs on the real
// clock and its wheel driver, briefly; TestOperatorModelFakeClock checks
// the same and more, exactly, on a fake clock.
func TestOperatorModel(t *testing.T) {
	l := &sinkLog{got: map[string][]int64{}}
	s, err := New(funcSchedulerOpts(t, t.TempDir(), l))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	rng := rand.New(rand.NewPCG(1, 2))
	var msgs []*modelMsg
	far := func() int64 { return time.Now().UnixMilli() + 60_000 + rng.Int64N(60_000) }
	near := func() int64 { return time.Now().UnixMilli() + rng.Int64N(300) }
	pick := func() *modelMsg {
		if len(msgs) == 0 {
			return nil
		}
		return msgs[rng.IntN(len(msgs))]
	}
	ref := func(m *modelMsg) Ref {
		if m.id != "" && rng.IntN(2) == 0 {
			return Ref{ID: m.id}
		}
		return Ref{Key: m.key}
	}
	for step := range 500 {
		switch op := rng.IntN(100); {
		case op < 35: // publish
			m := &modelMsg{body: fmt.Sprintf("m%d", step)}
			if rng.IntN(2) == 0 {
				m.id = "id-" + m.body
			}
			m.due = far()
			if rng.IntN(3) == 0 {
				m.due = near()
			}
			if err := s.Publish(Pub{Topic: []string{"a", "b"}[rng.IntN(2)], Bodies: [][]byte{[]byte(m.body)}, At: time.UnixMilli(m.due), ID: m.id}); err != nil {
				t.Fatal(err)
			}
			// Its key: the last pending one of the listing by due time is
			// not cheap; look it up by id, or find it in the listing.
			if m.id != "" {
				info, err := s.Lookup(Ref{ID: m.id}, false)
				if err != nil && !errors.Is(err, ErrNotFound) {
					t.Fatal(err)
				}
				if err == nil {
					m.key, _ = ParseKey(info.Key)
				}
			}
			if m.key == (Key{}) {
				m.key = findKey(t, s, m.body)
			}
			msgs = append(msgs, m)
		case op < 60: // reschedule
			m := pick()
			if m == nil || m.key == (Key{}) {
				continue
			}
			due := far()
			switch rng.IntN(3) {
			case 0:
				due = near()
			case 1:
				due = 0 // run now
			}
			at := time.Time{}
			if due != 0 {
				at = time.UnixMilli(due)
			}
			before := time.Now().UnixMilli()
			switch err := s.Reschedule(ref(m), at); {
			case err == nil:
				if m.gone {
					t.Fatalf("step %d: reschedule of %s succeeded after it was gone", step, m.body)
				}
				m.due = max(due, before)
				if due == 0 {
					m.due = before
				}
			case errors.Is(err, ErrNotFound):
				m.gone = true
			case errors.Is(err, ErrInFlight):
			default:
				t.Fatal(err)
			}
		case op < 70: // cancel
			m := pick()
			if m == nil || m.key == (Key{}) || m.gone {
				continue
			}
			switch err := s.CancelRef(ref(m)); {
			case err == nil:
				m.cancelled, m.gone = true, true
			case errors.Is(err, ErrNotFound):
				m.gone = true
			case errors.Is(err, ErrInFlight):
			default:
				t.Fatal(err)
			}
		case op < 90: // lookup
			m := pick()
			if m == nil || m.key == (Key{}) {
				continue
			}
			info, err := s.Lookup(ref(m), true)
			if errors.Is(err, ErrNotFound) {
				m.gone = true
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if m.gone && !m.cancelled && info.State == StatePending {
				t.Fatalf("step %d: %s pending after not found", step, m.body)
			}
			if m.cancelled {
				t.Fatalf("step %d: cancelled %s found: %+v", step, m.body, info)
			}
			if info.State == StatePublished { // retained (IDRetention): no body
				info.Body = []byte(m.body)
			}
			if info.Key != FormatKey(m.key) || string(info.Body) != m.body || info.Size != len(m.body) || info.AcceptedMs == 0 {
				t.Fatalf("step %d: lookup of %s: %+v", step, m.body, info)
			}
			if info.State == StatePending && info.DueMs != m.due && !(m.due < time.Now().UnixMilli()) {
				t.Fatalf("step %d: lookup of %s: due %d, model %d", step, m.body, info.DueMs, m.due)
			}
		default: // list everything, in pages
			checkListing(t, s, msgs, 1+rng.IntN(20))
		}
	}
	// Run everything now and wait for it.
	for _, m := range msgs {
		if !m.gone {
			for {
				before := time.Now().UnixMilli()
				err := s.Reschedule(Ref{Key: m.key}, time.Time{})
				if err == nil {
					m.due = before
				}
				if !errors.Is(err, ErrInFlight) {
					break
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for s.Pending() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	for _, m := range msgs {
		ts := l.times(m.body)
		switch {
		case m.cancelled && len(ts) > 0:
			t.Errorf("%s cancelled, delivered at %v", m.body, ts)
		case !m.cancelled && len(ts) != 1:
			t.Errorf("%s delivered %d times, want once", m.body, len(ts))
		case !m.cancelled && ts[0] < m.due:
			t.Errorf("%s delivered at %d, before its due %d", m.body, ts[0], m.due)
		}
	}
}

// findKey finds body's key through the listing (it is far from due).
func findKey(t *testing.T, s *Scheduler, body string) Key {
	t.Helper()
	cur := ""
	for {
		page, err := s.ListPending(PendingQuery{Limit: 1000, Cursor: cur})
		if err != nil {
			t.Fatal(err)
		}
		for _, pm := range page.Messages {
			if pm.Size == len(body) {
				info, err := s.Lookup(Ref{Key: mustKey(t, pm.Key)}, true)
				if err == nil && string(info.Body) == body {
					return mustKey(t, pm.Key)
				}
			}
		}
		if page.Cursor == "" {
			return Key{} // delivered already
		}
		cur = page.Cursor
	}
}

func mustKey(t testing.TB, s string) Key {
	k, err := ParseKey(s)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// checkListing pages through ListPending with pages of limit: due order,
// no repeats, and every model message pending and due a while from now.
func checkListing(t *testing.T, s *Scheduler, msgs []*modelMsg, limit int) {
	t.Helper()
	start := time.Now().UnixMilli()
	seen := map[string]bool{}
	last := int64(0)
	cur := ""
	for {
		page, err := s.ListPending(PendingQuery{Limit: limit, Cursor: cur})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Messages) > limit {
			t.Fatalf("page of %d, limit %d", len(page.Messages), limit)
		}
		for _, pm := range page.Messages {
			if seen[pm.Key] {
				t.Fatalf("listing repeats %s", pm.Key)
			}
			seen[pm.Key] = true
			if pm.DueMs < last {
				t.Fatalf("listing out of due order: %d after %d", pm.DueMs, last)
			}
			last = pm.DueMs
		}
		if page.Cursor == "" {
			break
		}
		cur = page.Cursor
	}
	for _, m := range msgs {
		if !m.gone && m.key != (Key{}) && m.due > start+5_000 && !seen[FormatKey(m.key)] {
			t.Fatalf("listing misses %s (%s, due in %d ms)", m.body, FormatKey(m.key), m.due-start)
		}
	}
}

// Keys, reschedules and retention survive a restart and compaction; a
// retained id is deduplicated and reported published, until its window
// ends.
func TestOperatorRestartCompactRetention(t *testing.T) {
	dir := t.TempDir()
	l := &sinkLog{got: map[string][]int64{}}
	o := funcSchedulerOpts(t, dir, l)
	o.SegmentSize = 4 << 10
	o.IDRetention = 3 * time.Second
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("far")}, Delay: time.Hour, ID: "far"}); err != nil {
		t.Fatal(err)
	}
	info, err := s.Lookup(Ref{ID: "far"}, false)
	if err != nil || info.State != StatePending || info.Topic != "t" {
		t.Fatalf("lookup: %+v %v", info, err)
	}
	key := mustKey(t, info.Key)
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("soon")}, Delay: 20 * time.Millisecond, ID: "soon"}); err != nil {
		t.Fatal(err)
	}
	newDue := time.Now().Add(2 * time.Hour)
	if err := s.Reschedule(Ref{Key: key}, newDue); err != nil {
		t.Fatal(err)
	}
	// Fill segments, then compact the first: "far" moves again.
	for i := range 100 {
		s.Publish(Pub{Topic: "fill", Bodies: [][]byte{make([]byte, 200)}, Delay: time.Duration(i+1) * time.Millisecond})
	}
	for s.Pending() > 1 {
		time.Sleep(5 * time.Millisecond)
	}
	if len(l.times("soon")) != 1 {
		t.Fatal("soon not delivered")
	}
	for seg, ok := s.j.Compactable(); ok; seg, ok = s.j.Compactable() {
		if _, err := s.compact(seg); err != nil {
			t.Fatal(err)
		}
	}
	if s.moved.Load() == 0 {
		t.Fatal("compaction moved nothing")
	}
	check := func(s *Scheduler, when string) {
		t.Helper()
		info, err := s.Lookup(Ref{ID: "far"}, false)
		if err != nil || info.Key != FormatKey(key) || info.DueMs != ceilMs(newDue.UnixNano()) || info.AcceptedMs == 0 {
			t.Fatalf("%s: lookup of far: %+v %v", when, info, err)
		}
		if info2, err := s.Lookup(Ref{Key: key}, false); err != nil || info2.ID != "far" {
			t.Fatalf("%s: lookup by key: %+v %v", when, info2, err)
		}
		info, err = s.Lookup(Ref{ID: "soon"}, false)
		if err != nil || info.State != StatePublished || info.Attempts != 1 || info.Size != 4 {
			t.Fatalf("%s: lookup of soon: %+v %v", when, info, err)
		}
		if _, err := s.Lookup(Ref{Key: mustKey(t, info.Key)}, false); err != nil {
			t.Fatalf("%s: lookup of soon by key: %v", when, err)
		}
		// A retained id is deduplicated.
		n := s.Pending()
		if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("soon2")}, ID: "soon"}); err != nil || s.Pending() != n {
			t.Fatalf("%s: publish of a retained id: %v, pending %d -> %d", when, err, n, s.Pending())
		}
	}
	check(s, "before restart")
	s.Close(time.Second)
	s, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close(time.Second) }()
	check(s, "after restart")
	if s.Pending() != 1 {
		t.Fatalf("pending %d after restart", s.Pending())
	}
	// The window ends: the id is free again.
	time.Sleep(3500 * time.Millisecond)
	if _, err := s.Lookup(Ref{ID: "soon"}, false); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after the window: %v", err)
	}
	if err := s.Publish(Pub{Topic: "t", Bodies: [][]byte{[]byte("soon3")}, Delay: time.Hour, ID: "soon"}); err != nil || s.Pending() != 2 {
		t.Fatalf("publish after the window: %v, pending %d", err, s.Pending())
	}
	s.Close(time.Second)
	s, err = New(o)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Lookup(Ref{ID: "soon"}, false); err != nil || info.State != StatePending {
		t.Fatalf("after a second restart: %+v %v", info, err)
	}
}

// TestRetainedMemory measures the index memory per retained id.
func TestRetainedMemory(t *testing.T) {
	const n = 200_000
	x := newIndex(nil)
	x.retention = time.Hour
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("order-%010d", i) // 16 bytes
	}
	runtime.GC()
	runtime.GC() // sync.Pool's victims too
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	now := time.Now().UnixMilli()
	x.mu.Lock()
	for i, id := range ids {
		x.retainLocked(id, retainedRef{p: journal.Pos{Seg: 1, Ord: uint32(i)}, key: Key{Seg: 1, Ord: uint32(i)}, topic: "orders", published: now})
	}
	x.mu.Unlock()
	runtime.GC()
	runtime.ReadMemStats(&b)
	per := (float64(b.HeapAlloc) - float64(a.HeapAlloc)) / n
	t.Logf("memory per retained id (16-byte ids, id strings not counted): %.0f bytes", per)
	if per > 400 {
		t.Fatalf("%.0f bytes per retained id", per)
	}
	runtime.KeepAlive(ids)
	runtime.KeepAlive(x)
}

// TestRescheduleSurvivesKill: a child process reschedules messages and
// records each acknowledged reschedule, and is killed with SIGKILL; after
// a restart every acknowledged reschedule holds (the message is delivered
// not before its new due time, once).
func TestRescheduleSurvivesKill(t *testing.T) {
	if dir := os.Getenv("DEFERD_RESCHEDULE_CHILD"); dir != "" {
		rescheduleChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("runs a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestRescheduleSurvivesKill$")
	cmd.Env = append(os.Environ(), "DEFERD_RESCHEDULE_CHILD="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := filepath.Join(dir, "acked")
	for deadline := time.Now().Add(60 * time.Second); opCountLines(acked) < 300; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the child acknowledged too little")
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	due := map[string]int64{} // body -> latest acknowledged due
	for _, ln := range opReadLines(t, acked) {
		f := strings.Fields(ln)
		if len(f) == 2 {
			d, _ := strconv.ParseInt(f[1], 10, 64)
			due[f[0]] = d
		}
	}
	l := &sinkLog{got: map[string][]int64{}}
	s, err := New(funcSchedulerOpts(t, filepath.Join(dir, "data"), l))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	// The last message may have been published an hour out and not yet
	// rescheduled: wait for the acknowledged ones only.
	deadline := time.Now().Add(30 * time.Second)
	for body := range due {
		for len(l.times(body)) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(100 * time.Millisecond)
	for body, d := range due {
		ts := l.times(body)
		if len(ts) != 1 || ts[0] < d {
			t.Errorf("%s: delivered at %v, acknowledged due %d", body, ts, d)
		}
	}
}

func rescheduleChild(dir string) {
	l := &sinkLog{got: map[string][]int64{}}
	o := NewOptions()
	o.DataPath = filepath.Join(dir, "data")
	o.Sink = l.sink()
	o.DirectPublish = false
	s, err := New(o)
	if err != nil {
		panic(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "acked"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		panic(err)
	}
	// Published an hour out; each reschedule moves one to 1-4 s from now
	// (so most are delivered after the restart, at or after that time).
	for i := 0; ; i++ {
		body := fmt.Sprintf("r%d", i)
		if err := s.Publish(Pub{Topic: "r", Bodies: [][]byte{[]byte(body)}, Delay: time.Hour, ID: body}); err != nil {
			panic(err)
		}
		due := time.Now().Add(time.Second + time.Duration(i%3000)*time.Millisecond)
		if err := s.Reschedule(Ref{ID: body}, due); err != nil {
			panic(err)
		}
		fmt.Fprintf(f, "%s %d\n", body, ceilMs(due.UnixNano()))
	}
}

// The HTTP endpoints and their errors.
func TestOperatorHTTP(t *testing.T) {
	l := &sinkLog{got: map[string][]int64{}}
	o := funcSchedulerOpts(t, t.TempDir(), l)
	o.HTTPAddress = "127.0.0.1:0"
	o.IDRetention = time.Minute
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	srv, err := s.ListenHTTP()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Shutdown()
	h := &harness{t: t, e: s, srv: srv, base: "http://" + srv.Addr()}
	h.mustPost("/pub?topic=t&defer=3600000&id=a", []byte("hello"))
	h.mustPost("/mpub?topic=u&defer=7200000", []byte("x\ny"))
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(h.base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, body := get("/message?id=a&body=true")
	var info struct {
		ID, Key, Topic, State string
		DueMs                 int64 `json:"due_ms"`
		AcceptedMs            int64 `json:"accepted_ms"`
		Size                  int
		Attempts              int
		Body                  []byte
		Truncated             *bool
	}
	if code != 200 || json.Unmarshal([]byte(body), &info) != nil || info.ID != "a" || info.State != "pending" || info.Topic != "t" ||
		string(info.Body) != "hello" || info.Truncated == nil || *info.Truncated || info.Size != 5 || info.AcceptedMs == 0 || info.DueMs == 0 {
		t.Fatalf("/message: %d %s", code, body)
	}
	for _, want := range []string{`"id":"a"`, `"key":"`, `"topic":"t"`, `"state":"pending"`, `"due_ms":`, `"accepted_ms":`, `"size":5`, `"attempts":0`} {
		if !strings.Contains(body, want) {
			t.Fatalf("/message %s lacks %s", body, want)
		}
	}
	if code, b2 := get("/message?key=" + info.Key); code != 200 || strings.Contains(b2, `"body"`) || !strings.Contains(b2, `"id":"a"`) {
		t.Fatalf("/message by key: %d %s", code, b2)
	}
	for path, want := range map[string]string{
		"/message?id=nope":       `404 {"message":"NOT_FOUND"}`,
		"/message?key=9-9":       `404 {"message":"NOT_FOUND"}`,
		"/message":               `400 {"message":"MISSING_ARG_ID"}`,
		"/message?key=x":         `400 {"message":"INVALID_KEY"}`,
		"/message?id=a&key=1-0":  `400 {"message":"MISSING_ARG_ID"}`,
		"/pending?after=zz":      `400 {"message":"INVALID_CURSOR"}`,
		"/pending?limit=0":       `400 {"message":"INVALID_LIMIT"}`,
		"/pending?topic=b%20ad":  `400 {"message":"INVALID_TOPIC"}`,
		"/message?id=a&body=yes": `400 {"message":"INVALID_REQUEST"}`,
	} {
		if code, b := get(path); fmt.Sprint(code, " ", b) != want {
			t.Errorf("GET %s: %d %s, want %s", path, code, b, want)
		}
	}
	// /pending: all three in due order, in pages of 2; then one topic.
	code, body = get("/pending?limit=2")
	var page struct {
		Messages []struct {
			Key, ID, Topic string
			DueMs          int64 `json:"due_ms"`
			Size           int
		}
		Cursor string
	}
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page.Messages) != 2 || page.Cursor == "" ||
		page.Messages[0].ID != "a" || page.Messages[1].Topic != "u" {
		t.Fatalf("/pending: %d %s", code, body)
	}
	code, body = get("/pending?limit=2&after=" + page.Cursor)
	if code != 200 || json.Unmarshal([]byte(body), &page) != nil || len(page.Messages) != 1 || page.Cursor != "" || page.Messages[0].Size != 1 {
		t.Fatalf("/pending page 2: %d %s", code, body)
	}
	if code, body = get("/pending?topic=t"); code != 200 || !strings.Contains(body, `"id":"a"`) || strings.Contains(body, `"topic":"u"`) {
		t.Fatalf("/pending?topic=t: %d %s", code, body)
	}
	// /reschedule and its errors.
	for path, want := range map[string]string{
		"/reschedule?id=a":                      `400 {"message":"INVALID_DEFER"}`,
		"/reschedule?id=a&defer=-1":             `400 {"message":"INVALID_DEFER"}`,
		"/reschedule?id=a&defer=1&at=1":         `400 {"message":"INVALID_DEFER"}`,
		"/reschedule?id=a&defer=99999999999999": `400 {"message":"INVALID_DEFER"}`,
		"/reschedule?id=nope&defer=0":           `404 {"message":"NOT_FOUND"}`,
		"/reschedule?defer=0":                   `400 {"message":"MISSING_ARG_ID"}`,
		"/reschedule?key=1&defer=0":             `400 {"message":"INVALID_KEY"}`,
		"/cancel?key=bad":                       `400 {"message":"INVALID_KEY"}`,
		"/cancel?key=9-9":                       `404 {"message":"NOT_FOUND"}`,
	} {
		if code, b := h.post(path, nil); fmt.Sprint(code, " ", b) != want {
			t.Errorf("POST %s: %d %s, want %s", path, code, b, want)
		}
	}
	if code, b := get("/reschedule?id=a&defer=0"); code != 405 {
		t.Errorf("GET /reschedule: %d %s", code, b)
	}
	h.mustPost("/reschedule?key="+info.Key+"&defer=100", nil)
	for deadline := time.Now().Add(5 * time.Second); len(l.times("hello")) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("rescheduled message not delivered")
		}
	}
	if ts := l.times("hello"); ts[0] < info.AcceptedMs+100 {
		t.Fatalf("delivered at %d, rescheduled to %d+", ts[0], info.AcceptedMs+100)
	}
	// Published and retained: reported as such, /pub of it schedules nothing.
	time.Sleep(20 * time.Millisecond)
	if code, b := get("/message?id=a"); code != 200 || !strings.Contains(b, `"state":"published"`) || !strings.Contains(b, `"attempts":1`) {
		t.Fatalf("/message of a published id: %d %s", code, b)
	}
	h.mustPost("/pub?topic=t&id=a", []byte("again"))
	if s.Pending() != 2 {
		t.Fatalf("pending %d after a retained id's /pub", s.Pending())
	}
	// Cancel by key.
	code, body = get("/pending?topic=u&limit=1")
	json.Unmarshal([]byte(body), &page)
	h.mustPost("/cancel?key="+page.Messages[0].Key, nil)
	if code, b := h.post("/cancel?key="+page.Messages[0].Key, nil); code != 404 {
		t.Fatalf("second cancel by key: %d %s", code, b)
	}
	// /stats and /metrics carry the due-time figures.
	if code, b := get("/stats"); code != 200 || !strings.Contains(b, `"due":{"pending":1,`) || !strings.Contains(b, `"due_within":{"1s":`) || !strings.Contains(b, `"oldest_overdue_seconds":`) {
		t.Fatalf("/stats: %d %s", code, b)
	}
	if code, b := get("/metrics"); code != 200 || !strings.Contains(b, "deferd_oldest_overdue_seconds ") ||
		!strings.Contains(b, `deferd_pending_due_within{within="1h"}`) || !strings.Contains(b, `deferd_topic_overdue_messages{topic="u"}`) {
		t.Fatalf("/metrics: %d %s", code, b)
	}
}

// TestDueFigures checks the due-time report: exact when everything fits
// the sample, overdue and the oldest overdue while the sink is down.
func TestDueFigures(t *testing.T) {
	var down sync.Mutex
	down.Lock()
	l := &sinkLog{got: map[string][]int64{}}
	o := funcSchedulerOpts(t, t.TempDir(), l)
	failing := true
	var fmu sync.Mutex
	o.Sink = SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		fmu.Lock()
		defer fmu.Unlock()
		if failing {
			return 0, errors.New("down")
		}
		return l.sink().Publish(topic, bodies)
	})
	o.RetryBackoff = 100 * time.Millisecond
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	pub := func(topic string, d time.Duration, n int) {
		for range n {
			if err := s.Publish(Pub{Topic: topic, Bodies: [][]byte{[]byte("x")}, Delay: d}); err != nil {
				t.Fatal(err)
			}
		}
	}
	pub("a", 0, 3)
	pub("a", 5*time.Second, 2)
	pub("b", 30*time.Minute, 4)
	pub("b", 48*time.Hour, 1)
	time.Sleep(1200 * time.Millisecond)
	s.op.at = time.Time{}
	r := s.Due()
	if r.Pending != 10 || r.Overdue != 3 || r.DueWithin.S10 != 2 || r.DueWithin.H1 != 4 || r.DueWithin.Later != 1 || r.OldestOverdueSeconds < 1 {
		t.Fatalf("report %+v", r)
	}
	if a := r.Topics["a"]; a.Overdue != 3 || a.OldestOverdueSeconds < 1 || a.Pending != 5 || a.AcceptedPerSecond <= 0 {
		t.Fatalf("topic a %+v", a)
	}
	fmu.Lock()
	failing = false
	fmu.Unlock()
	for deadline := time.Now().Add(5 * time.Second); s.Pending() > 7; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not delivered")
		}
	}
	s.op.at = time.Time{}
	if r := s.Due(); r.Overdue != 0 || r.OldestOverdueSeconds != 0 {
		t.Fatalf("after delivery %+v", r.DueFigures)
	}
}

func opReadLines(t *testing.T, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func opCountLines(path string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), "\n")
}
