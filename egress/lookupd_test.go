package egress

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// waitNodes waits until l's /nodes lists exactly want.
func waitNodes(t *testing.T, l *nsqdnodetest.Lookupd, want ...string) {
	t.Helper()
	want = slices.Sorted(slices.Values(want))
	waitFor(t, 10*time.Second, fmt.Sprintf("nsqlookupd listing %v", want), func() bool {
		return slices.Equal(l.Nodes(t), want)
	})
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// statsByAddr returns p.Stats keyed by address.
func statsByAddr(p *Publisher) map[string]NodeStats {
	m := make(map[string]NodeStats)
	for _, s := range p.Stats() {
		m[s.Addr] = s
	}
	return m
}

// topicCount is how many messages nsqd has taken for topic.
func topicCount(node *nsqdnode.Node, topic string) uint64 {
	for _, t := range node.NSQD.GetStats(topic, "", false).Topics {
		return t.MessageCount
	}
	return 0
}

func statsAddrs(p *Publisher) []string {
	var out []string
	for _, s := range p.Stats() {
		out = append(out, s.Addr)
	}
	return out
}

// consumeInto adds a consumer of topic on the nsqd at addr to c. stop
// stops it and waits (idempotent; also run by t.Cleanup): stop it before
// its nsqd exits (nsqd v1.3.0 races in Exit with a connected consumer).
func consumeInto(t *testing.T, c *collector, addr, topic string) (stop func()) {
	t.Helper()
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 1000
	cons := c.consumer(t, topic, cfg)
	if err := cons.ConnectToNSQD(addr); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cons.Stop()
			<-cons.StopChan
		})
	}
	t.Cleanup(stop)
	return stop
}

// loadGen publishes batches of unique bodies to topic from several
// goroutines until stop, and records what each Publish acknowledged.
type loadGen struct {
	p     *Publisher
	topic string
	seq   atomic.Uint64
	quit  chan struct{}
	wg    sync.WaitGroup

	mu     sync.Mutex
	acked  [][]byte
	errors []error
}

func startLoad(p *Publisher, topic string, workers, perCall int) *loadGen {
	g := &loadGen{p: p, topic: topic, quit: make(chan struct{})}
	for range workers {
		g.wg.Go(func() {
			for {
				select {
				case <-g.quit:
					return
				default:
				}
				bodies := make([][]byte, perCall)
				for i := range bodies {
					bodies[i] = fmt.Appendf(nil, "%s-%08d", topic, g.seq.Add(1))
				}
				n, err := p.Publish(topic, bodies)
				g.mu.Lock()
				g.acked = append(g.acked, bodies[:n]...)
				if err != nil {
					g.errors = append(g.errors, err)
				}
				g.mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		})
	}
	return g
}

func (g *loadGen) stop() ([][]byte, []error) {
	close(g.quit)
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.acked, g.errors
}

// waitAcked waits until col received every acked body at least once and
// returns how many arrived more than once.
func waitAcked(t *testing.T, col *collector, topic string, acked [][]byte, within time.Duration) (dups int) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		missing, dups := 0, 0
		var first []byte
		for _, b := range acked {
			switch c := col.count(topic, b); {
			case c == 0:
				if missing == 0 {
					first = b
				}
				missing++
			case c > 1:
				dups++
			}
		}
		if missing == 0 {
			return dups
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged bodies never arrived (first %q)", missing, len(acked), first)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Egress finds two nsqds through one nsqlookupd (no static address) and
// spreads batches over both, each body delivered exactly once.
func TestLookupdDiscoversAndSpreads(t *testing.T) {
	l := nsqdnodetest.StartLookupd(t)
	a := l.StartNSQD(t, "")
	b := l.StartNSQD(t, "")
	// /nodes lists an nsqd as soon as it registered, before it has a topic.
	waitNodes(t, l, a.TCPAddr, b.TCPAddr)

	p := newTestPublisher(t, Options{
		LookupdHTTPAddrs:    []string{l.HTTPAddr},
		LookupdPollInterval: 100 * time.Millisecond,
		MaxBatchMsgs:        20,
		ConnsPerAddr:        2,
	})
	// New's own poll: both known before the first Publish.
	got := statsAddrs(p)
	slices.Sort(got)
	if want := slices.Sorted(slices.Values([]string{a.TCPAddr, b.TCPAddr})); !slices.Equal(got, want) {
		t.Fatalf("Stats after New list %v, want %v", got, want)
	}
	for _, s := range p.Stats() {
		if !s.Discovered || s.Draining {
			t.Errorf("stats %+v: want discovered, not draining", s)
		}
	}

	const topic = "discovered"
	col := newCollector(t, []string{a.TCPAddr, b.TCPAddr}, topic)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sent [][]byte
	var id atomic.Uint64
	for range 8 {
		wg.Go(func() {
			for range 20 {
				bodies := make([][]byte, 50)
				for i := range bodies {
					bodies[i] = fmt.Appendf(nil, "body-%d", id.Add(1))
				}
				if n, err := p.Publish(topic, bodies); err != nil || n != len(bodies) {
					t.Errorf("Publish: acked %d of %d: %v", n, len(bodies), err)
					return
				}
				mu.Lock()
				sent = append(sent, bodies...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	col.waitTotal(t, len(sent), 30*time.Second)
	for _, body := range sent {
		if c := col.count(topic, body); c != 1 {
			t.Fatalf("body %q received %d times, want 1", body, c)
		}
	}
	for _, s := range p.Stats() {
		if s.Published == 0 || s.Errors != 0 {
			t.Errorf("stats %+v: want a share of the batches and no errors", s)
		}
		t.Logf("nsqd %s: %d messages in %d batches", s.Addr, s.Published, s.Batches)
	}
}

// An nsqd that registers mid-run gets batches after the next poll; one
// that is stopped mid-run is failed over and then drained, and nothing it
// acknowledged is lost: every acknowledged body reaches a consumer (those
// the stopped nsqd persisted at its exit, after it restarts on its data).
func TestLookupdJoinAndStop(t *testing.T) {
	l := nsqdnodetest.StartLookupd(t)
	a := l.StartNSQD(t, "")
	bDir := t.TempDir()
	b := l.StartNSQD(t, bDir)
	waitNodes(t, l, a.TCPAddr, b.TCPAddr)

	const topic = "churn"
	col := &collector{got: make(map[string]int)}
	consumeInto(t, col, a.TCPAddr, topic)
	stopB := consumeInto(t, col, b.TCPAddr, topic)

	p := newTestPublisher(t, Options{
		LookupdHTTPAddrs:    []string{l.HTTPAddr},
		LookupdPollInterval: 100 * time.Millisecond,
		MaxBatchMsgs:        10,
		ConnsPerAddr:        2,
		Backoff:             10 * time.Millisecond,
		MaxBackoff:          100 * time.Millisecond,
	})
	g := startLoad(p, topic, 4, 10)
	time.Sleep(200 * time.Millisecond)

	// Join: c registers; the next poll gives it connections and batches.
	c := l.StartNSQD(t, "")
	consumeInto(t, col, c.TCPAddr, topic)
	joined := time.Now()
	waitFor(t, 5*time.Second, "batches to the nsqd that joined", func() bool {
		return statsByAddr(p)[c.TCPAddr].Published > 0
	})
	t.Logf("nsqd %s joined: first batch %v after it started", c.TCPAddr, time.Since(joined).Round(time.Millisecond))

	// Stop b under load: batches fail over to a and c, nsqlookupd drops
	// it, the next poll drains it.
	stopB()
	b.Exit()
	l.Forget(t, b.TCPAddr)
	waitFor(t, 10*time.Second, "the stopped nsqd removed from Stats", func() bool {
		_, ok := statsByAddr(p)[b.TCPAddr]
		return !ok
	})
	before := statsByAddr(p)
	time.Sleep(300 * time.Millisecond)
	acked, errs := g.stop()
	for _, err := range errs {
		t.Logf("Publish error (its bodies were not acknowledged; a caller reschedules them): %v", err)
	}
	after := statsByAddr(p)
	for _, addr := range []string{a.TCPAddr, c.TCPAddr} {
		if after[addr].Published <= before[addr].Published {
			t.Errorf("nsqd %s got no batches after the stop of %s: %+v", addr, b.TCPAddr, after[addr])
		}
	}
	var out bytes.Buffer
	p.Metrics().WritePrometheus(&out)
	if strings.Contains(out.String(), b.TCPAddr) {
		t.Errorf("metrics still name the drained nsqd %s:\n%s", b.TCPAddr, out.String())
	}

	// What b acknowledged and its consumer had not taken is in b's data.
	b2 := nsqdnodetest.Start(t, nsqdnode.Config{DataPath: bDir})
	consumeInto(t, col, b2.TCPAddr, topic)
	dups := waitAcked(t, col, topic, acked, 30*time.Second)
	t.Logf("%d bodies acknowledged, all received (%d more than once, %d Publish errors)", len(acked), dups, len(errs))
}

// With both a static list and an nsqlookupd, egress publishes to the union;
// an address in both is one nsqd, and a static nsqd is never removed by
// discovery, even once nsqlookupd stops listing it.
func TestLookupdMergesStatic(t *testing.T) {
	l := nsqdnodetest.StartLookupd(t)
	a := nsqdnodetest.Start(t, nsqdnode.Config{}) // static only
	b := l.StartNSQD(t, "")                       // discovered only
	c := l.StartNSQD(t, "")                       // both
	waitNodes(t, l, b.TCPAddr, c.TCPAddr)

	p := newTestPublisher(t, Options{
		Addrs:               []string{a.TCPAddr, c.TCPAddr},
		LookupdHTTPAddrs:    []string{l.HTTPAddr},
		LookupdPollInterval: 50 * time.Millisecond,
		MaxBatchMsgs:        10,
		ConnsPerAddr:        2,
		Backoff:             10 * time.Millisecond,
		MaxBackoff:          100 * time.Millisecond,
	})
	time.Sleep(200 * time.Millisecond) // several polls, none listing a
	st := p.Stats()
	if got, want := statsAddrs(p), []string{a.TCPAddr, c.TCPAddr, b.TCPAddr}; !slices.Equal(got, want) {
		t.Fatalf("Stats list %v, want %v (static in Addrs order, then discovered)", got, want)
	}
	if st[0].Discovered || st[1].Discovered || !st[2].Discovered {
		t.Fatalf("stats %+v: want a and c static, b discovered", st)
	}

	const topic = "merged"
	col := &collector{got: make(map[string]int)}
	consumeInto(t, col, a.TCPAddr, topic)
	consumeInto(t, col, b.TCPAddr, topic)
	stopC := consumeInto(t, col, c.TCPAddr, topic)
	var sent [][]byte
	for i := range 200 {
		bodies := [][]byte{fmt.Appendf(nil, "m-%d-0", i), fmt.Appendf(nil, "m-%d-1", i)}
		if n, err := p.Publish(topic, bodies); err != nil || n != 2 {
			t.Fatalf("Publish: acked %d: %v", n, err)
		}
		sent = append(sent, bodies...)
	}
	for _, s := range p.Stats() {
		if s.Published == 0 {
			t.Errorf("stats %+v: want a share of the batches", s)
		}
	}
	waitAcked(t, col, topic, sent, 30*time.Second)

	// c leaves nsqlookupd; it stays (static), marked down once tried.
	stopC()
	c.Exit()
	l.Forget(t, c.TCPAddr)
	waitNodes(t, l, b.TCPAddr)
	time.Sleep(200 * time.Millisecond)
	s, ok := statsByAddr(p)[c.TCPAddr]
	if !ok || s.Draining {
		t.Fatalf("static nsqd %s: stats %+v (listed %v): want kept, not draining", c.TCPAddr, s, ok)
	}
	for i := range 50 {
		if n, err := p.Publish(topic, [][]byte{fmt.Appendf(nil, "late-%d", i)}); err != nil || n != 1 {
			t.Fatalf("Publish with the static nsqd down: acked %d: %v", n, err)
		}
	}
}

// fakeLookupd answers GET /nodes with a list the test sets, or 500.
type fakeLookupd struct {
	srv   *httptest.Server
	mu    sync.Mutex
	addrs []string
	fail  bool
	polls atomic.Int64
}

func newFakeLookupd(t *testing.T, addrs ...string) *fakeLookupd {
	f := &fakeLookupd{addrs: addrs}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.polls.Add(1)
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.URL.Path != "/nodes" || f.fail {
			http.Error(w, `{"message":"INTERNAL_ERROR"}`, http.StatusInternalServerError)
			return
		}
		type prod struct {
			BroadcastAddress string   `json:"broadcast_address"`
			TCPPort          int      `json:"tcp_port"`
			Topics           []string `json:"topics"`
		}
		resp := struct {
			Producers []prod `json:"producers"`
		}{Producers: []prod{}}
		for _, a := range f.addrs {
			host, port, _ := strings.Cut(a, ":")
			n, _ := strconv.Atoi(port)
			resp.Producers = append(resp.Producers, prod{host, n, []string{}})
		}
		json.NewEncoder(w).Encode(resp)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeLookupd) set(fail bool, addrs ...string) {
	f.mu.Lock()
	f.fail, f.addrs = fail, addrs
	f.mu.Unlock()
}

// waitPolls waits until the Publisher polled n more times.
func (f *fakeLookupd) waitPolls(t *testing.T, n int64) {
	t.Helper()
	target := f.polls.Load() + n
	waitFor(t, 5*time.Second, "polls", func() bool { return f.polls.Load() >= target })
}

// An nsqd that nsqlookupd stops listing while it is still up is drained
// under load: no new batches go to it, those in flight finish there, no
// Publish fails, and every body arrives exactly once. An nsqlookupd that
// fails keeps the known nsqds; an nsqd listed again gets new connections.
func TestLookupdDrainFinishesInFlight(t *testing.T) {
	a := nsqdnodetest.Start(t, nsqdnode.Config{})
	b := nsqdnodetest.Start(t, nsqdnode.Config{})
	f := newFakeLookupd(t, a.TCPAddr, b.TCPAddr)
	const topic = "drain"
	col := &collector{got: make(map[string]int)}
	consumeInto(t, col, a.TCPAddr, topic)
	consumeInto(t, col, b.TCPAddr, topic)

	p := newTestPublisher(t, Options{
		LookupdHTTPAddrs:    []string{f.srv.URL}, // an http:// URL works as host:port does
		LookupdPollInterval: 20 * time.Millisecond,
		MaxBatchMsgs:        5,
		ConnsPerAddr:        4,
	})
	if got := len(p.Stats()); got != 2 {
		t.Fatalf("Stats after New: %d nsqds, want 2", got)
	}
	g := startLoad(p, topic, 12, 20)
	waitFor(t, 5*time.Second, "batches to b", func() bool { return statsByAddr(p)[b.TCPAddr].Published > 0 })

	f.set(false, a.TCPAddr)
	waitFor(t, 5*time.Second, "b drained", func() bool {
		_, ok := statsByAddr(p)[b.TCPAddr]
		return !ok
	})
	atB := topicCount(b, topic)
	time.Sleep(200 * time.Millisecond)
	if n := topicCount(b, topic); n != atB {
		t.Errorf("drained nsqd b took %d more messages", n-atB)
	}

	// nsqlookupd failing: nothing known is dropped.
	f.set(true)
	f.waitPolls(t, 5)
	if got := statsAddrs(p); !slices.Equal(got, []string{a.TCPAddr}) {
		t.Errorf("with nsqlookupd failing Stats list %v, want [%s]", got, a.TCPAddr)
	}

	// Listed again: new connections, batches again.
	f.set(false, a.TCPAddr, b.TCPAddr)
	waitFor(t, 5*time.Second, "batches to b again", func() bool { return statsByAddr(p)[b.TCPAddr].Published > 0 })
	acked, errs := g.stop()
	for _, err := range errs {
		t.Errorf("Publish: %v", err)
	}
	for _, s := range p.Stats() {
		if s.Errors != 0 || !s.Up {
			t.Errorf("stats %+v: want up, no errors", s)
		}
	}
	waitAcked(t, col, topic, acked, 30*time.Second)
	time.Sleep(200 * time.Millisecond)
	for _, body := range acked {
		if c := col.count(topic, body); c != 1 {
			t.Fatalf("body %q received %d times, want 1", body, c)
		}
	}
	if col.total != len(acked) {
		t.Fatalf("received %d messages, acknowledged %d", col.total, len(acked))
	}
	t.Logf("%d bodies, each once", len(acked))
}

// With only nsqlookupd and no nsqd listed yet, Publish and TryPublish fail
// at once with ErrNoNSQD (transient: the caller retries later); an nsqd
// listed later is used after the next poll. Stop ends the poll loop.
func TestLookupdNoNodeYet(t *testing.T) {
	f := newFakeLookupd(t)
	p, err := New(Options{
		LookupdHTTPAddrs:    []string{f.srv.Listener.Addr().String()},
		LookupdPollInterval: 20 * time.Millisecond,
		Logf:                t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	for _, publish := range []func(string, [][]byte) (int, error){p.Publish, p.TryPublish} {
		start := time.Now()
		n, err := publish("t", [][]byte{[]byte("x")})
		if n != 0 || !errors.Is(err, ErrNoNSQD) || IsPermanent(err) {
			t.Fatalf("publish with no nsqd: %d, %v; want 0, transient ErrNoNSQD", n, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("publish with no nsqd took %v", d)
		}
	}
	a := nsqdnodetest.Start(t, nsqdnode.Config{})
	f.set(false, a.TCPAddr)
	f.waitPolls(t, 2)
	if n, err := p.Publish("t", [][]byte{[]byte("x")}); err != nil || n != 1 {
		t.Fatalf("Publish after discovery: %d, %v", n, err)
	}
	p.Stop()
	polls := f.polls.Load()
	time.Sleep(100 * time.Millisecond)
	if f.polls.Load() != polls {
		t.Errorf("nsqlookupd polled after Stop")
	}
}

func TestLookupdOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"none", Options{}, "at least one nsqd"},
		{"bad lookupd", Options{LookupdHTTPAddrs: []string{"nohostport"}}, "LookupdHTTPAddrs"},
		{"bad scheme", Options{LookupdHTTPAddrs: []string{"ftp://127.0.0.1:1"}}, "LookupdHTTPAddrs"},
		{"duplicate", Options{LookupdHTTPAddrs: []string{"127.0.0.1:1", "127.0.0.1:1"}}, "twice"},
		{"interval", Options{LookupdHTTPAddrs: []string{"127.0.0.1:1"}, LookupdPollInterval: -1}, "LookupdPollInterval"},
	} {
		_, err := New(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
