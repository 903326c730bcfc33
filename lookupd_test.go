package deferd

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func egressAddrs(s *Scheduler) []string {
	var out []string
	for _, n := range s.Stats().Egress {
		out = append(out, n.Addr)
	}
	return out
}

// A Scheduler given only Options.LookupdHTTPAddresses publishes, due now
// and delayed, to the nsqd that nsqlookupd lists, and to one that
// registers later once a poll found it.
func TestLookupdHTTPAddresses(t *testing.T) {
	l := nsqdnodetest.StartLookupd(t)
	a := l.StartNSQD(t, "")
	waitUntil(t, 10*time.Second, "nsqlookupd listing nsqd a", func() bool { return l.Lists(t, a.TCPAddr) })

	opts := testOptions(t.TempDir())
	opts.LookupdHTTPAddresses = []string{l.HTTPAddr}
	opts.LookupdPollInterval = 100 * time.Millisecond
	opts.Logf = t.Logf
	s, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close(5 * time.Second) })
	if got := egressAddrs(s); len(got) != 1 || got[0] != a.TCPAddr {
		t.Fatalf("egress nsqds after New: %v, want [%s]", got, a.TCPAddr)
	}
	if st := s.Stats().Egress[0]; !st.Discovered {
		t.Errorf("egress stats %+v: want discovered", st)
	}

	const topic = "lookupd"
	colA := consume(t, a.TCPAddr, topic)
	start := time.Now()
	if err := s.Publish(Pub{Topic: topic, Bodies: [][]byte{[]byte("now")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Publish(Pub{Topic: topic, Bodies: [][]byte{[]byte("later")}, Delay: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	got := colA.waitCount(t, 2, 10*time.Second)
	for _, r := range got {
		if string(r.body) == "later" && r.at.Sub(start) < 300*time.Millisecond {
			t.Errorf("delayed message arrived %v after publish, before its delay", r.at.Sub(start))
		}
	}

	// b registers mid-run: the next poll adds it, and it takes batches.
	b := l.StartNSQD(t, "")
	colB := consume(t, b.TCPAddr, topic)
	waitUntil(t, 10*time.Second, "egress to list nsqd b", func() bool {
		return strings.Contains(strings.Join(egressAddrs(s), ","), b.TCPAddr)
	})
	// Messages due together go out as one MPUB, to one nsqd: publish
	// rounds with their own due times (separate batches), each delivered
	// before the next, until b has taken one (egress picks the least busy
	// healthy nsqd per batch, so b gets one within a few rounds).
	n := 0
	for round := 0; round < 50 && len(colB.snapshot()) == 0; round++ {
		for range 10 {
			if err := s.Publish(Pub{Topic: topic, Bodies: [][]byte{fmt.Appendf(nil, "m-%d", n)}, Delay: 20 * time.Millisecond}); err != nil {
				t.Fatal(err)
			}
			n++
		}
		waitUntil(t, 20*time.Second, "the round delivered", func() bool {
			return len(colA.snapshot())+len(colB.snapshot()) >= n+2
		})
	}
	if len(colB.snapshot()) == 0 {
		t.Errorf("nsqd b (discovered mid-run) received none of %d messages in 50 rounds of batches", n)
	}
	t.Logf("a received %d, b %d", len(colA.snapshot()), len(colB.snapshot()))
	if err := s.Close(5 * time.Second); err != nil { // before the nsqds' cleanup
		t.Error(err)
	}
}

// LookupdHTTPAddresses is a sink choice of its own, and combines with
// NSQDTCPAddresses; not with Sink or EmbeddedNSQD.
func TestLookupdOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(*Options)
		ok   bool
	}{
		{"lookupd only", func(o *Options) {}, true},
		{"with nsqd", func(o *Options) { o.NSQDTCPAddresses = []string{"127.0.0.1:1"} }, true},
		{"with embedded", func(o *Options) { o.EmbeddedNSQD = true }, false},
		{"with sink", func(o *Options) {
			o.Sink = SinkFunc(func(string, [][]byte) (int, error) { return 0, nil })
		}, false},
		{"no interval", func(o *Options) { o.LookupdPollInterval = 0 }, false},
	} {
		o := testOptions(t.TempDir())
		o.LookupdHTTPAddresses = []string{"127.0.0.1:4161"}
		tc.set(&o)
		if err := o.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: Validate: %v, want ok %v", tc.name, err, tc.ok)
		}
	}
}
