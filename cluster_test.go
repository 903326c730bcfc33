package deferd

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/valyala/fasthttp"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/cluster"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// clusterInst is one in-process cluster instance: a Scheduler and its
// HTTP API on a fixed address.
type clusterInst struct {
	addr string
	s    *Scheduler
	srv  *ingest.Server
	done chan struct{}
	down bool
}

// freeAddrs reserves n loopback addresses (closed again: each instance
// binds its own).
func freeAddrs(t *testing.T, n int) []string {
	var out []string
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

func startInst(t *testing.T, peers []string, self, dir string, mod func(*Options)) *clusterInst {
	t.Helper()
	opts := testOptions(dir)
	opts.HTTPAddress = self
	opts.ClusterPeers = peers
	opts.ClusterForwardTimeout = time.Second
	opts.ClusterPollInterval = 100 * time.Millisecond
	opts.Logf = func(f string, a ...any) { t.Logf(self+": "+f, a...) }
	if mod != nil {
		mod(&opts)
	}
	var ln net.Listener
	var err error
	for try := 0; ; try++ { // a just-closed port may take a moment
		if ln, err = net.Listen("tcp", self); err == nil || try == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	opts.HTTPListener = ln
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := s.ListenHTTP()
	if err != nil {
		t.Fatal(err)
	}
	c := &clusterInst{addr: self, s: s, srv: srv, done: make(chan struct{})}
	go func() { srv.Serve(); close(c.done) }()
	t.Cleanup(func() { c.stop() })
	return c
}

// stop is a hard stop: no grace for requests or publishes.
func (c *clusterInst) stop() {
	if c.down {
		return
	}
	c.down = true
	c.srv.ShutdownWithin(10 * time.Millisecond)
	<-c.done
	c.s.Close(0)
	// The client's keep-alive connections to it are dead now; a later
	// instance may get the same port, and a POST reusing one reads EOF.
	clusterHTTP.CloseIdleConnections()
}

var clusterHTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

func call(t *testing.T, method, addr, pq, body string) (int, string) {
	req, _ := http.NewRequest(method, "http://"+addr+pq, strings.NewReader(body))
	resp, err := clusterHTTP.Do(req)
	if err != nil {
		t.Errorf("%s %s%s: %v", method, addr, pq, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// idOwnedBy is a fresh id whose owner is peer k of n.
func idOwnedBy(k, n int, prefix string, seq *atomic.Int64) string {
	for {
		id := prefix + strconv.FormatInt(seq.Add(1), 10)
		if cluster.ShardOf(id)%n == k {
			return id
		}
	}
}

// Three instances, two nsqds found through nsqlookupd, a consumer that
// finds them the same way. Producers spread /pub, /mpub, ids, cancels,
// reschedules and duplicate ids over the three at random; one instance is
// stopped hard (its ids get 503 OWNER_UNAVAILABLE, the others carry on)
// and restarted on its data path. Every acknowledged message arrives, at
// least once and never early; cancelled ones and deduplicated repeats do
// not.
func TestClusterThreeInstances(t *testing.T) {
	l := nsqdnodetest.StartLookupd(t)
	lHTTP := l.HTTPAddr
	var nodes []*nsqdnode.Node
	for range 2 {
		n := l.StartNSQD(t, "")
		nodes = append(nodes, n)
		// The topic and channel exist before anything is published.
		nsqdnodetest.CreateTopic(t, n, "clu", "c")
	}
	for _, n := range nodes {
		waitUntil(t, 10*time.Second, "nsqlookupd listing an nsqd", func() bool { return l.Lists(t, n.TCPAddr) })
	}

	waitUntil(t, 10*time.Second, "nsqlookupd listing topic clu on both nsqds", func() bool {
		return l.TopicProducers("clu") == 2
	})

	// The consumer.
	var mu sync.Mutex
	got := map[string][]int64{} // seq -> arrival times (ms)
	cfg := nsq.NewConfig()
	cfg.LookupdPollInterval = 100 * time.Millisecond
	cfg.MaxInFlight = 500
	cons, err := nsq.NewConsumer("clu", "c", cfg)
	if err != nil {
		t.Fatal(err)
	}
	cons.SetLoggerLevel(nsq.LogLevelError)
	cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		now := time.Now().UnixMilli()
		mu.Lock()
		got[string(m.Body)] = append(got[string(m.Body)], now)
		mu.Unlock()
		return nil
	}))
	if err := cons.ConnectToNSQLookupd(lHTTP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cons.Stop)

	peers := freeAddrs(t, 3)
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	withLookupd := func(o *Options) {
		o.LookupdHTTPAddresses = []string{lHTTP}
		o.LookupdPollInterval = 100 * time.Millisecond
	}
	inst := make([]*clusterInst, 3)
	for i := range inst {
		inst[i] = startInst(t, peers, peers[i], dirs[i], withLookupd)
	}

	// What must arrive (body -> not before, unix ms) and must not.
	var emu sync.Mutex
	expect := map[string]int64{}
	never := map[string]bool{}
	var seq, idSeq atomic.Int64
	body := func() string { return "m" + strconv.FormatInt(seq.Add(1), 10) }
	var dupes, cancels, resched, forwardedPubs atomic.Int64

	op := func(r *rand.Rand, alive []int) {
		at := func() string { return peers[alive[r.IntN(len(alive))]] }
		d := int64(r.IntN(800))
		now := time.Now().UnixMilli()
		switch r.IntN(6) {
		case 0: // /pub, no id
			b := body()
			if st, ans := call(t, "POST", at(), "/pub?topic=clu&defer="+strconv.FormatInt(d, 10), b); st != 200 {
				t.Errorf("/pub: %d %s", st, ans)
				return
			}
			emu.Lock()
			expect[b] = now + d
			emu.Unlock()
		case 1: // /mpub of 5
			var bs []string
			for range 5 {
				bs = append(bs, body())
			}
			if st, ans := call(t, "POST", at(), "/mpub?topic=clu&defer="+strconv.FormatInt(d, 10), strings.Join(bs, "\n")); st != 200 {
				t.Errorf("/mpub: %d %s", st, ans)
				return
			}
			emu.Lock()
			for _, b := range bs {
				expect[b] = now + d
			}
			emu.Unlock()
		case 2: // /pub?id=, then the same id elsewhere: deduplicated
			id := idOwnedBy(alive[r.IntN(len(alive))], 3, "dup", &idSeq)
			b, b2 := body(), body()
			if st, ans := call(t, "POST", at(), "/pub?topic=clu&defer=1000&id="+id, b); st != 200 {
				t.Errorf("/pub id: %d %s", st, ans)
				return
			}
			if st, ans := call(t, "POST", at(), "/pub?topic=clu&defer=0&id="+id, b2); st != 200 {
				t.Errorf("/pub id again: %d %s", st, ans)
				return
			}
			dupes.Add(1)
			emu.Lock()
			expect[b] = now + 1000
			never[b2] = true
			emu.Unlock()
		case 3: // /pub?id=, cancelled through another instance
			id := idOwnedBy(alive[r.IntN(len(alive))], 3, "can", &idSeq)
			b := body()
			if st, ans := call(t, "POST", at(), "/pub?topic=clu&defer=1500&id="+id, b); st != 200 {
				t.Errorf("/pub id: %d %s", st, ans)
				return
			}
			if st, ans := call(t, "POST", at(), "/cancel?id="+id, ""); st != 200 {
				t.Errorf("/cancel: %d %s", st, ans)
				emu.Lock()
				expect[b] = now + 1500 // not cancelled: it arrives
				emu.Unlock()
				return
			}
			cancels.Add(1)
			emu.Lock()
			never[b] = true
			emu.Unlock()
		case 4: // /pub?id= a minute away, rescheduled to soon elsewhere
			id := idOwnedBy(alive[r.IntN(len(alive))], 3, "res", &idSeq)
			b := body()
			if st, ans := call(t, "POST", at(), "/pub?topic=clu&defer=60000&id="+id, b); st != 200 {
				t.Errorf("/pub id: %d %s", st, ans)
				return
			}
			due := time.Now().UnixMilli() + 300
			if st, ans := call(t, "POST", at(), "/reschedule?id="+id+"&at="+strconv.FormatInt(due, 10), ""); st != 200 {
				t.Errorf("/reschedule: %d %s", st, ans)
				return
			}
			if st, ans := call(t, "GET", at(), "/message?id="+id, ""); st != 200 || !strings.Contains(ans, `"due_ms":`+strconv.FormatInt(due, 10)) {
				t.Errorf("/message after reschedule: %d %s", st, ans)
			}
			resched.Add(1)
			emu.Lock()
			expect[b] = due
			emu.Unlock()
		case 5: // /pub?id= landing anywhere
			id := idOwnedBy(r.IntN(3), 3, "any", &idSeq)
			if !containsInt(alive, cluster.ShardOf(id)%3) {
				return
			}
			b := body()
			if st, ans := call(t, "POST", at(), "/pub?topic=clu&defer="+strconv.FormatInt(d, 10)+"&id="+id, b); st != 200 {
				t.Errorf("/pub id: %d %s", st, ans)
				return
			}
			forwardedPubs.Add(1)
			emu.Lock()
			expect[b] = now + d
			emu.Unlock()
		}
	}
	load := func(d time.Duration, alive []int) {
		var wg sync.WaitGroup
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
				for end := time.Now().Add(d); time.Now().Before(end) && !t.Failed(); {
					op(r, alive)
				}
			}()
		}
		wg.Wait()
	}
	load(1500*time.Millisecond, []int{0, 1, 2})

	// Messages pending on instance 2 when it goes: ids it owns (sent to
	// the others) and id-less ones sent to it.
	now := time.Now().UnixMilli()
	for range 50 {
		id := idOwnedBy(2, 3, "kill", &idSeq)
		b := body()
		if st, ans := call(t, "POST", peers[0], "/pub?topic=clu&defer=1500&id="+id, b); st != 200 {
			t.Fatalf("/pub id: %d %s", st, ans)
		}
		b2 := body()
		if st, ans := call(t, "POST", peers[2], "/pub?topic=clu&defer=1500", b2); st != 200 {
			t.Fatalf("/pub: %d %s", st, ans)
		}
		emu.Lock()
		expect[b], expect[b2] = now+1500, now+1500
		emu.Unlock()
	}
	inst[2].stop()
	dead := idOwnedBy(2, 3, "dead", &idSeq)
	for _, at := range peers[:2] {
		for _, rq := range []struct{ method, pq string }{
			{"POST", "/pub?topic=clu&defer=10&id=" + dead}, {"POST", "/cancel?id=" + dead},
			{"POST", "/reschedule?id=" + dead + "&defer=10"}, {"GET", "/message?id=" + dead},
		} {
			if st, ans := call(t, rq.method, at, rq.pq, "x"); st != 503 || ans != `{"message":"OWNER_UNAVAILABLE"}` {
				t.Errorf("%s %s with its owner down: %d %s, want 503 OWNER_UNAVAILABLE", rq.method, rq.pq, st, ans)
			}
		}
	}
	load(700*time.Millisecond, []int{0, 1}) // the others carry on
	waitUntil(t, 5*time.Second, "/stats: peer 2 unreachable", func() bool {
		var st struct {
			Cluster ClusterStats `json:"cluster"`
		}
		_, b := call(t, "GET", peers[0], "/stats", "")
		json.Unmarshal([]byte(b), &st)
		return len(st.Cluster.Peers) == 3 && !st.Cluster.Peers[2].Reachable && st.Cluster.Peers[2].LastError != ""
	})

	inst[2] = startInst(t, peers, peers[2], dirs[2], withLookupd)
	// The test's client still holds keep-alive connections to the stopped
	// process: a POST reusing one would read EOF (not retried, POST is not
	// idempotent), as any client's would after a restart.
	clusterHTTP.CloseIdleConnections()
	load(500*time.Millisecond, []int{0, 1, 2})

	// Everything acknowledged arrives.
	emu.Lock()
	defer emu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for b := range expect {
			if len(got[b]) == 0 {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never arrived", missing, len(expect))
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // late strays of what must not come
	mu.Lock()
	defer mu.Unlock()
	dup := 0
	for b, ats := range got {
		if never[b] {
			t.Errorf("%s arrived: it was cancelled or a deduplicated repeat", b)
			continue
		}
		due, ok := expect[b]
		if !ok {
			t.Errorf("%s arrived, never acknowledged", b)
			continue
		}
		for _, a := range ats {
			if a < due {
				t.Errorf("%s arrived %d ms early", b, due-a)
			}
		}
		dup += len(ats) - 1
	}
	for _, n := range nodes { // egress spread the messages over both
		resp, err := http.Get("http://" + n.HTTPAddr + "/stats?format=json&topic=clu")
		if err != nil {
			t.Fatal(err)
		}
		var ns struct {
			Topics []struct {
				MessageCount int64 `json:"message_count"`
			} `json:"topics"`
		}
		json.NewDecoder(resp.Body).Decode(&ns)
		resp.Body.Close()
		if len(ns.Topics) != 1 || ns.Topics[0].MessageCount == 0 {
			t.Errorf("nsqd %s got no message of topic clu: %+v", n.TCPAddr, ns)
		}
	}
	t.Logf("%d messages acknowledged and delivered (%d duplicates), %d dedupes, %d cancels, %d reschedules, %d id pubs anywhere; across 2 nsqds",
		len(expect), dup, dupes.Load(), cancels.Load(), resched.Load(), forwardedPubs.Load())
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// memSink collects what a test's schedulers deliver, per body.
type memSink struct {
	mu  sync.Mutex
	got map[string]int
}

func (m *memSink) sink() Sink {
	return SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, b := range bodies {
			m.got[string(b)]++
		}
		return len(bodies), nil
	})
}

func (m *memSink) count(b string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.got[b]
}

// Peer lists that disagree: an owner refuses forwarded requests with 503
// PEER_LIST_MISMATCH, relayed as is; a client's own requests are served.
func TestClusterPeerListMismatch(t *testing.T) {
	addrs := freeAddrs(t, 3)
	ms := &memSink{got: map[string]int{}}
	sink := func(o *Options) { o.Sink = ms.sink() }
	a := startInst(t, addrs[:2], addrs[0], t.TempDir(), sink)
	startInst(t, []string{addrs[0], addrs[1], addrs[2]}, addrs[1], t.TempDir(), sink)
	var seq atomic.Int64
	id := idOwnedBy(1, 2, "mm", &seq) // b's by a's map
	if st, ans := call(t, "POST", a.addr, "/pub?topic=t&defer=10&id="+id, "x"); st != 503 || ans != `{"message":"PEER_LIST_MISMATCH"}` {
		t.Fatalf("forwarded to a peer with another list: %d %s", st, ans)
	}
	if st, _ := call(t, "POST", a.addr, "/pub?topic=t", "y"); st != 200 {
		t.Fatalf("id-less /pub: %d", st)
	}
	var st struct {
		Cluster ClusterStats `json:"cluster"`
	}
	_, body := call(t, "GET", addrs[1], "/stats", "")
	json.Unmarshal([]byte(body), &st)
	if st.Cluster.MismatchRefused == 0 {
		t.Fatalf("b's /stats: no refused peer connection: %s", body)
	}
}

// A peer-list change: instance A ran alone and holds messages with ids;
// restarted with [A, B], it hands B's ids to B (which schedules them at
// their due time) and drops its own copies. Each arrives once.
func TestClusterHandoff(t *testing.T) {
	addrs := freeAddrs(t, 2)
	ms := &memSink{got: map[string]int{}}
	sink := func(o *Options) { o.Sink = ms.sink() }
	dirA := t.TempDir()
	a := startInst(t, addrs[:1], addrs[0], dirA, sink)
	var ids []string
	due := time.Now().UnixMilli() + 2500
	for i := range 200 {
		id := "h" + strconv.Itoa(i)
		ids = append(ids, id)
		if st, ans := call(t, "POST", a.addr, "/pub?topic=t&at="+strconv.FormatInt(due, 10)+"&id="+id, "body-"+id); st != 200 {
			t.Fatalf("/pub: %d %s", st, ans)
		}
	}
	a.stop()

	b := startInst(t, addrs, addrs[1], t.TempDir(), sink)
	a = startInst(t, addrs, addrs[0], dirA, sink)
	waitUntil(t, 5*time.Second, "hand-off done", func() bool {
		cs := a.s.Stats().Cluster
		return cs != nil && cs.Handoff.Done
	})
	m, _ := cluster.NewMap(addrs, addrs[0])
	movedWant := 0
	for _, id := range ids {
		owner := m.Owner(id)
		if owner == 1 {
			movedWant++
		}
		// Each id is pending on its owner only, asked through either.
		for _, at := range addrs {
			st, ans := call(t, "GET", at, "/message?id="+id, "")
			if st != 200 || !strings.Contains(ans, `"due_ms":`+strconv.FormatInt(due, 10)) {
				t.Fatalf("/message?id=%s at %s: %d %s", id, at, st, ans)
			}
		}
		if _, err := []*clusterInst{a, b}[1-owner].s.Lookup(Ref{ID: id}, false); err == nil {
			t.Fatalf("%s still pending on its old instance", id)
		}
	}
	if got := a.s.Stats().Cluster.Handoff.Moved; got != uint64(movedWant) {
		t.Fatalf("moved %d, want %d", got, movedWant)
	}
	waitUntil(t, 5*time.Second, "every message delivered", func() bool {
		for _, id := range ids {
			if ms.count("body-"+id) == 0 {
				return false
			}
		}
		return true
	})
	if time.Now().UnixMilli() < due {
		t.Fatal("delivered early")
	}
	for _, id := range ids {
		if n := ms.count("body-" + id); n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
	t.Logf("%d of %d ids moved to B", movedWant, len(ids))
}

// TestClusterFigures measures (DEFERD_CLUSTER_FIGURES=1; writes
// /tmp/figures-cluster.md): an id-bearing /pub landing on a non-owner
// against one sent to its owner, and the process CPU per id-less /pub
// with 1, 2 and 3 instances (load spread over them; the sink discards).
func TestClusterFigures(t *testing.T) {
	if os.Getenv("DEFERD_CLUSTER_FIGURES") == "" {
		t.Skip("set DEFERD_CLUSTER_FIGURES=1")
	}
	const conc, dur = 32, 3 * time.Second
	discard := func(o *Options) {
		o.Sink = SinkFunc(func(string, [][]byte) (int, error) { return 0, errors.New("down") })
		o.Logf = func(string, ...any) {}
		o.Fsync = "never"
		o.SegmentSize = 64 << 20
		o.MaxPending, o.MaxPendingBytes = 50_000_000, 64<<30
	}
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	// run sends /pub for dur from conc goroutines; target(g, i) is the
	// address and query of request i of goroutine g.
	run := func(target func(g, i int) (string, string)) (rate float64, cpuPer time.Duration) {
		clients := map[string]*fasthttp.HostClient{}
		var cmu sync.Mutex
		hc := func(a string) *fasthttp.HostClient {
			cmu.Lock()
			defer cmu.Unlock()
			if clients[a] == nil {
				clients[a] = &fasthttp.HostClient{Addr: a, MaxConns: conc}
			}
			return clients[a]
		}
		var n atomic.Int64
		c0, t0 := cpu(), time.Now()
		var wg sync.WaitGroup
		for g := range conc {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
				for i := 0; time.Since(t0) < dur; i++ {
					a, pq := target(g, i)
					req.Reset()
					req.Header.SetMethod("POST")
					req.SetRequestURI("http://" + a + pq)
					req.SetBodyString("a message body of some fifty bytes, more or less..")
					if err := hc(a).Do(req, resp); err != nil || resp.StatusCode() != 200 {
						t.Errorf("%s%s: %v %d %s", a, pq, err, resp.StatusCode(), resp.Body())
						return
					}
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		el, c := time.Since(t0), cpu()-c0
		return float64(n.Load()) / el.Seconds(), c / time.Duration(n.Load())
	}
	var out strings.Builder
	fmt.Fprintf(&out, "# deferd cluster figures\n\n%s, GOMAXPROCS %d, %d client goroutines in the same process, %v per figure, fsync never, sink refusing (messages stay pending), 50 B bodies.\n\n",
		time.Now().Format("2006-01-02"), runtime.GOMAXPROCS(0), conc, dur)

	// 1. id-bearing /pub: owner-direct vs via a non-owner.
	peers := freeAddrs(t, 3)
	var insts []*clusterInst
	for i := range 3 {
		insts = append(insts, startInst(t, peers, peers[i], t.TempDir(), discard))
	}
	var idn atomic.Int64
	ownerID := func(k int) string { return idOwnedBy(k, 3, "b", &idn) }
	direct, dcpu := run(func(g, i int) (string, string) {
		k := (g + i) % 3
		return peers[k], "/pub?topic=b&defer=3600000&id=" + ownerID(k)
	})
	via, vcpu := run(func(g, i int) (string, string) {
		k := (g + i) % 3
		return peers[(k+1)%3], "/pub?topic=b&defer=3600000&id=" + ownerID(k)
	})
	fmt.Fprintf(&out, "## id-bearing /pub, 3 instances\n\n| landing | req/s | process CPU per request |\n| --- | --- | --- |\n| owner (direct) | %.0f | %v |\n| non-owner (forwarded, one loopback round trip more) | %.0f (%.2fx) | %v |\n\n",
		direct, dcpu, via, via/direct, vcpu)
	for _, c := range insts {
		c.stop()
	}

	// 2. id-less /pub with 1, 2 and 3 instances.
	fmt.Fprintf(&out, "## id-less /pub (defer=3600000: journaled), spread over the instances\n\n| instances | req/s (all) | process CPU per message (all instances + client) |\n| --- | --- | --- |\n")
	for n := 1; n <= 3; n++ {
		ps := freeAddrs(t, n)
		var is []*clusterInst
		for i := range n {
			is = append(is, startInst(t, ps, ps[i], t.TempDir(), discard))
		}
		rate, per := run(func(g, i int) (string, string) { return ps[(g+i)%n], "/pub?topic=b&defer=3600000" })
		fmt.Fprintf(&out, "| %d | %.0f | %v |\n", n, rate, per)
		for _, c := range is {
			c.stop()
		}
	}
	os.WriteFile("/tmp/figures-cluster.md", []byte(out.String()), 0o644)
	t.Log("\n" + out.String())
}
