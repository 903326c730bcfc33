package deferd

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	dto "github.com/prometheus/client_model/go"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// protoHarness is a harness with a TCP listener too, and a go-nsq
// Producer connected to it. stop stops the Producer, the listeners and
// the Scheduler, in that order; it runs at cleanup too (once in all).
func protoHarness(t *testing.T, o Options) (h *harness, p *nsq.Producer, stop func()) {
	t.Helper()
	o.TCPAddress = "127.0.0.1:0"
	h = startHarness(t, o)
	ts, err := h.e.ListenTCP()
	if err != nil {
		t.Fatal(err)
	}
	go ts.Serve()
	p, err = nsq.NewProducer(ts.Addr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	stop = sync.OnceFunc(func() {
		p.Stop()
		ts.Shutdown()
		h.stop()
	})
	t.Cleanup(stop)
	return h, p, stop
}

// waitPublished waits until s has published n messages in all.
func waitPublished(t *testing.T, s *Scheduler, n uint64) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); s.Stats().Published < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("published %d, want %d", s.Stats().Published, n)
		}
	}
}

// checkProtoCounts checks that /stats (lateness_ms.by_proto) and /metrics
// (deferd_delivery_lateness_by_proto_seconds{proto}) count want per
// protocol, every protocol present, and that /metrics' series add up to
// the total lateness histogram's count.
func checkProtoCounts(t *testing.T, h *harness, want map[string]uint64) {
	t.Helper()
	var st struct {
		Lateness struct {
			ByProto map[string]StageLateness `json:"by_proto"`
		} `json:"lateness_ms"`
	}
	if err := json.Unmarshal(promGet(t, h.base+"/stats"), &st); err != nil {
		t.Fatal(err)
	}
	if len(st.Lateness.ByProto) != len(protoNames) {
		t.Errorf("/stats lateness_ms.by_proto: %v, want %v", st.Lateness.ByProto, protoNames)
	}
	for _, name := range protoNames {
		got := st.Lateness.ByProto[name]
		if got.Count != want[name] {
			t.Errorf("/stats lateness_ms.by_proto.%s.count %d, want %d", name, got.Count, want[name])
		}
		if got.P50 < 0 || got.P50 > got.P99 || got.P99 > got.Max || (got.Count > 0) != (got.Max > 0) {
			t.Errorf("/stats lateness_ms.by_proto.%s: %+v", name, got)
		}
	}
	text := promGet(t, h.base+"/metrics")
	fams := promCheck(t, text)
	f := fams[protoFamily]
	if f.GetType() != dto.MetricType_HISTOGRAM || len(f.GetMetric()) != len(protoNames) {
		t.Fatalf("family %s: %v", protoFamily, f)
	}
	if n := bytes.Count(text, []byte("# HELP "+protoFamily+" ")); n != 1 || help[protoFamily] == "" {
		t.Errorf("%s: %d HELP lines, help table %q", protoFamily, n, help[protoFamily])
	}
	var sum uint64
	for _, m := range f.GetMetric() {
		var proto string
		for _, l := range m.GetLabel() {
			if l.GetName() == "proto" {
				proto = l.GetValue()
			}
		}
		c := m.GetHistogram().GetSampleCount()
		if c != want[proto] {
			t.Errorf(`%s{proto=%q} count %d, want %d`, protoFamily, proto, c, want[proto])
		}
		sum += c
	}
	total := fams["deferd_delivery_lateness_le_seconds"].GetMetric()[0].GetHistogram().GetSampleCount()
	if sum != total {
		t.Errorf("%s counts add up to %d, deferd_delivery_lateness_le_seconds to %d", protoFamily, sum, total)
	}
}

// Messages published over HTTP, over nsqd's TCP protocol (go-nsq) and with
// Publish, delayed and due at once, reach a real nsqd, and each counts in
// the lateness of its own protocol, in /stats and /metrics.
func TestLatenessByProto(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h, p, _ := protoHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "lp")

	h.mustPost("/pub?topic=lp&defer=300", []byte("h1"))
	h.mustPost("/pub?topic=lp&defer=300&id=h-id", []byte("h2"))
	h.mustPost("/mpub?topic=lp&defer=400", []byte("h3\nh4\nh5"))
	h.mustPost("/pub?topic=lp", []byte("h6")) // due now: the direct path
	if err := p.DeferredPublish("lp", 300*time.Millisecond, []byte("t1")); err != nil {
		t.Fatal(err)
	}
	if err := p.DeferredPublish("lp", 500*time.Millisecond, []byte("t2")); err != nil {
		t.Fatal(err)
	}
	if err := p.MultiPublish("lp", [][]byte{[]byte("t3"), []byte("t4")}); err != nil { // due now
		t.Fatal(err)
	}
	for _, pub := range []Pub{
		{Topic: "lp", Bodies: [][]byte{[]byte("l1"), []byte("l2")}, Delay: 300 * time.Millisecond},
		{Topic: "lp", Bodies: [][]byte{[]byte("l3")}},
	} {
		if err := h.e.Publish(pub); err != nil {
			t.Fatal(err)
		}
	}
	col.waitCount(t, 13, 15*time.Second)
	waitPublished(t, h.e, 13)
	checkProtoCounts(t, h, map[string]uint64{"http": 6, "tcp": 4, "lib": 3})
}

// A message replayed from the journal after a restart counts as
// "recovered" (the journal does not keep the protocol); one moved by a
// reschedule keeps its protocol; one published after the restart counts
// under its own.
func TestLatenessByProtoRestart(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	h, p, stop := protoHarness(t, o)
	h.mustPost("/mpub?topic=lr&defer=1500", []byte("h1\nh2"))
	if err := p.DeferredPublish("lr", 1500*time.Millisecond, []byte("t1")); err != nil {
		t.Fatal(err)
	}
	if err := h.e.Publish(Pub{Topic: "lr", Bodies: [][]byte{[]byte("l1")}, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	if code, body := h.post("/pub?topic=lr&defer=3600000&id=moved", []byte("h3")); code != 200 {
		t.Fatalf("pub: %d %s", code, body)
	}
	// Reschedule moves the record (index.moveOut, moveIn): its protocol
	// goes with it.
	if err := h.e.Reschedule(Ref{ID: "moved"}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitPublished(t, h.e, 1)
	checkProtoCounts(t, h, map[string]uint64{"http": 1})
	stop()

	h2, p2, _ := protoHarness(t, o)
	if h2.e.Pending() != 4 {
		t.Fatalf("pending %d after restart, want 4", h2.e.Pending())
	}
	if err := p2.DeferredPublish("lr", 100*time.Millisecond, []byte("t2")); err != nil {
		t.Fatal(err)
	}
	waitPublished(t, h2.e, 4) // the three due in 1.5 s, and t2
	checkProtoCounts(t, h2, map[string]uint64{"recovered": 3, "tcp": 1})
	if err := h2.e.Reschedule(Ref{Key: mustKeyOfPending(t, h2)}, time.Time{}); err != nil {
		t.Fatal(err)
	}
	waitPublished(t, h2.e, 5)
	checkProtoCounts(t, h2, map[string]uint64{"recovered": 4, "tcp": 1})
}

// mustKeyOfPending returns the key of h's one pending message.
func mustKeyOfPending(t *testing.T, h *harness) Key {
	t.Helper()
	var page struct {
		Messages []struct {
			Key string `json:"key"`
		} `json:"messages"`
	}
	resp, err := http.Get(h.base + "/pending?topic=lr")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil || len(page.Messages) != 1 {
		t.Fatalf("/pending: %+v, %v", page, err)
	}
	k, err := ParseKey(strings.TrimSpace(page.Messages[0].Key))
	if err != nil {
		t.Fatal(err)
	}
	return k
}
