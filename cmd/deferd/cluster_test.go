package main

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
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

// k9Shard is the shard of id as README states it: FNV-1a 32 of its bytes,
// mod 256 (computed here, not by internal/cluster, to check the map).
func k9Shard(id string) int {
	h := fnv.New32a()
	h.Write([]byte(id))
	return int(h.Sum32() % 256)
}

func k9WaitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// k9PeerStats is what the test reads of /stats' cluster section.
type k9PeerStats struct {
	Cluster struct {
		Peers []struct {
			Address   string `json:"address"`
			Reachable bool   `json:"reachable"`
			LastError string `json:"last_error"`
			Shards    []int  `json:"shards"`
		} `json:"peers"`
		OwnerUnavailable uint64 `json:"owner_unavailable"`
	} `json:"cluster"`
	Pending int64 `json:"pending"`
}

// Message states in the test's book.
const (
	k9Sent  = iota // sent, not acknowledged (or the ack was undone by an ambiguous cancel): may arrive
	k9Acked        // acknowledged and not cancelled: must arrive
	k9Never        // must not arrive: cancelled (200), a deduplicated repeat (200), or refused by a dead instance
)

// Phases of the test; a request that began and ended in the same stable
// phase (0, 2, 4) has its answer checked against that phase.
const (
	k9AllUp = iota
	k9Killing
	k9Dead
	k9Restarting
	k9UpAgain
)

// Three deferd processes with one --cluster-peers list, publishing to two
// nsqds found through an in-process nsqlookupd; a go-nsq consumer finds
// the nsqds the same way. Producers spread /pub (with and without id,
// delays 0-3 s), /mpub, duplicate ids and cancels over the three at
// random. Instance 2 is killed with SIGKILL: the others answer its ids
// 503 {"message":"OWNER_UNAVAILABLE"} (shard = FNV-1a 32 % 256, owner =
// peers[shard % 3], cross-checked with /stats' cluster section) and keep
// answering 200 to everything else. It is restarted on its data path.
// Then every acknowledged message arrives at least once and never before
// its due time; the ones instance 2 held and that came due after the kill
// arrive only after the restart; a message whose cancel got 200 never
// arrives, nor a /pub deduplicated by its id (200 while the first was
// pending, also across the kill), nor a request refused while its
// instance or owner was dead. Duplicates are counted (at-least-once).
func TestClusterKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	testStart := time.Now()
	bin := buildDeferd(t)
	const topic = "k9"

	l := nsqdnodetest.StartLookupd(t)
	lHTTP := l.HTTPAddr
	var nodes []*nsqdnode.Node
	for range 2 {
		n := l.StartNSQD(t, "")
		nodes = append(nodes, n)
		// The topic and channel exist before anything is published, so
		// nsqlookupd lists both nsqds for the consumer.
		nsqdnodetest.CreateTopic(t, n, topic, "c")
	}
	k9WaitUntil(t, 10*time.Second, "nsqlookupd listing topic "+topic+" on both nsqds", func() bool {
		return l.TopicProducers(topic) == 2
	})

	// The consumer, through nsqlookupd.
	var (
		gotMu sync.Mutex
		got   = map[string][]int64{} // body -> arrival times (unix ms)
	)
	cfg := nsq.NewConfig()
	cfg.LookupdPollInterval = 100 * time.Millisecond
	cfg.MaxInFlight = 1000
	cons, err := nsq.NewConsumer(topic, "c", cfg)
	if err != nil {
		t.Fatal(err)
	}
	cons.SetLoggerLevel(nsq.LogLevelError)
	cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		now := time.Now().UnixMilli()
		gotMu.Lock()
		got[string(m.Body)] = append(got[string(m.Body)], now)
		gotMu.Unlock()
		return nil
	}))
	if err := cons.ConnectToNSQLookupd(lHTTP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cons.Stop()
		select {
		case <-cons.StopChan:
		case <-time.After(5 * time.Second):
		}
	})
	k9WaitUntil(t, 10*time.Second, "the consumer connected to both nsqds", func() bool { return cons.Stats().Connections == 2 })

	// The three instances.
	peers := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	dirs := []string{t.TempDir(), t.TempDir(), t.TempDir()}
	argsOf := func(i int) []string {
		return []string{"--http-address", peers[i], "--data-path", dirs[i],
			"--cluster-peers", strings.Join(peers, ","), "--tcp-address", "127.0.0.1:0",
			"--lookupd-http-address", lHTTP, "--lookupd-poll-interval", "100ms",
			"--cluster-forward-timeout", "1s", "--cluster-poll-interval", "100ms"}
	}
	procs := make([]*proc, 3)
	for i := range procs {
		procs[i] = startDeferd(t, bin, argsOf(i)...)
	}
	for i := range procs {
		waitPing(t, "http://"+peers[i], procs[i])
	}
	const dead = 2 // the instance killed

	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	// do sends one request; err is set when no HTTP answer came.
	do := func(method string, at int, pq, body string) (int, string, error) {
		req, _ := http.NewRequest(method, "http://"+peers[at]+pq, strings.NewReader(body))
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, "", err
		}
		return resp.StatusCode, string(b), nil
	}

	// The book: every body sent, its earliest due time (unix ms, taken
	// before its request began), its state and who holds it (the
	// instance it was sent to, or its id's owner).
	type entry struct {
		minDue int64
		state  int
		holder int
	}
	var (
		bookMu sync.Mutex
		book   = map[string]*entry{}
		seq    atomic.Int64
		idSeq  atomic.Int64
		phase  atomic.Int32
	)
	newBody := func() string { return "k9-" + strconv.FormatInt(seq.Add(1), 10) }
	note := func(b string, minDue int64, holder int) {
		bookMu.Lock()
		book[b] = &entry{minDue: minDue, holder: holder}
		bookMu.Unlock()
	}
	set := func(state int, bs ...string) {
		bookMu.Lock()
		for _, b := range bs {
			book[b].state = state
		}
		bookMu.Unlock()
	}
	idOwned := func(owner int, prefix string) string {
		for {
			id := prefix + strconv.FormatInt(idSeq.Add(1), 10)
			if k9Shard(id)%3 == owner {
				return id
			}
		}
	}
	const unavailable = `{"message":"OWNER_UNAVAILABLE"}`
	var (
		cntMu sync.Mutex
		cnt   = map[string]int{}
	)
	count := func(what string) {
		cntMu.Lock()
		cnt[what]++
		cntMu.Unlock()
	}

	// req is one request of a producer, its book keeping and the checks
	// of its answer in a stable phase. owner is the id's owner (-1: no
	// id). It reports whether the request was acknowledged (200).
	var (
		errMu  sync.Mutex
		errCnt int
	)
	failf := func(format string, a ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if errCnt++; errCnt <= 20 {
			t.Errorf(format, a...)
		}
	}
	pub := func(at, owner int, pq string, bodies []string, delay int64) (acked bool) {
		holder := at
		if owner >= 0 {
			holder = owner
		}
		now := time.Now().UnixMilli()
		for _, b := range bodies {
			note(b, now+delay, holder)
		}
		p0 := phase.Load()
		st, ans, err := do("POST", at, pq, strings.Join(bodies, "\n"))
		p1 := phase.Load()
		if err == nil && st == 200 {
			set(k9Acked, bodies...)
			return true
		}
		if p0 != p1 || p0 == k9Killing || p0 == k9Restarting {
			count("unacked in a transition")
			return false
		}
		switch {
		case p0 == k9Dead && at == dead:
			if err == nil {
				failf("%s to the dead instance: %d %s", pq, st, ans)
			}
			set(k9Never, bodies...) // nothing listened
			count("refused by the dead instance")
		case p0 == k9Dead && owner == dead:
			if err != nil || st != 503 || ans != unavailable {
				failf("%s via %s with its owner dead: %d %q %v, want 503 %s", pq, peers[at], st, ans, err, unavailable)
			}
			set(k9Never, bodies...) // its owner was dead throughout
			count("503 OWNER_UNAVAILABLE")
		default:
			failf("phase %d: %s via %s: %d %q %v, want 200", p0, pq, peers[at], st, ans, err)
		}
		return false
	}
	// cancel cancels id (owned by owner) whose message is body.
	cancel := func(at, owner int, id, body string) {
		p0 := phase.Load()
		st, ans, err := do("POST", at, "/cancel?id="+id, "")
		p1 := phase.Load()
		switch {
		case err == nil && st == 200:
			set(k9Never, body)
			count("cancelled (200)")
		case err == nil && (st == 404 || st == 409):
			count(fmt.Sprintf("cancel %d (went out)", st)) // it arrives
		case p0 == p1 && p0 == k9Dead && (at == dead && err != nil || owner == dead && st == 503 && ans == unavailable):
			count("cancel refused, owner or instance dead") // not acted: it arrives
		default:
			if p0 == p1 && p0 != k9Killing && p0 != k9Restarting {
				failf("phase %d: /cancel?id=%s via %s: %d %q %v", p0, id, peers[at], st, ans, err)
			}
			set(k9Sent, body) // may or may not have been cancelled
			count("cancel ambiguous")
		}
	}

	op := func(r *rand.Rand) {
		target := func() int {
			if phase.Load() == k9Dead && r.IntN(10) != 0 {
				return r.IntN(2) // mostly the living, sometimes the dead one
			}
			return r.IntN(3)
		}
		delay := int64(r.IntN(3001))
		dq := "&defer=" + strconv.FormatInt(delay, 10)
		if r.IntN(5) == 0 {
			delay, dq = 0, "" // no defer: due now (published directly)
		}
		switch r.IntN(6) {
		case 0: // /pub without id
			pub(target(), -1, "/pub?topic="+topic+dq, []string{newBody()}, delay)
			count("pub")
		case 1: // /mpub of 2-8
			var bs []string
			for range 2 + r.IntN(7) {
				bs = append(bs, newBody())
			}
			pub(target(), -1, "/mpub?topic="+topic+dq, bs, delay)
			count("mpub")
		case 2: // /pub?id= anywhere
			owner := r.IntN(3)
			pub(target(), owner, "/pub?topic="+topic+dq+"&id="+idOwned(owner, "p"), []string{newBody()}, delay)
			count("pub id")
		case 3: // /pub?id= pending, then the same id again elsewhere
			owner := r.IntN(3)
			id := idOwned(owner, "d")
			first := int64(1000 + r.IntN(2001))
			if !pub(target(), owner, "/pub?topic="+topic+"&defer="+strconv.FormatInt(first, 10)+"&id="+id, []string{newBody()}, first) {
				return
			}
			b2 := newBody()
			if pub(target(), owner, "/pub?topic="+topic+dq+"&id="+id, []string{b2}, delay) {
				set(k9Never, b2) // deduplicated: no second message
				count("deduplicated (200)")
			}
		case 4, 5: // /pub?id=, then /cancel?id= elsewhere (some after it went out)
			owner := r.IntN(3)
			id := idOwned(owner, "c")
			b := newBody()
			if !pub(target(), owner, "/pub?topic="+topic+dq+"&id="+id, []string{b}, delay) {
				return
			}
			if r.IntN(2) == 0 {
				time.Sleep(time.Duration(r.IntN(300)) * time.Millisecond)
			}
			cancel(target(), owner, id, b)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			for {
				select {
				case <-stop:
					return
				default:
				}
				op(r)
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	stopLoad := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	defer stopLoad()

	time.Sleep(1500 * time.Millisecond)

	// Before the kill, instance 2 holds messages: ids it owns, sent to
	// the others, and id-less ones sent to it. Some come due while it is
	// down (1 s), some after its restart (5 s): these are published again
	// (deduplicated) and cancelled after the restart, others cancelled now.
	var across, acrossCancel, cancelledBefore []string // ids
	acrossBody := map[string]string{}
	for i := range 20 {
		for _, d := range []int64{1000, 5000} {
			b := newBody()
			if !pub(i%2, dead, "/pub?topic="+topic+"&defer="+strconv.FormatInt(d, 10)+"&id="+idOwned(dead, "w"), []string{b}, d) {
				t.Fatalf("/pub of an id owned by the instance to kill failed")
			}
			b = newBody()
			if !pub(dead, -1, "/pub?topic="+topic+"&defer="+strconv.FormatInt(d, 10), []string{b}, d) {
				t.Fatalf("/pub to the instance to kill failed")
			}
		}
		for _, l := range []*[]string{&across, &acrossCancel, &cancelledBefore} {
			id := idOwned(dead, "x")
			b := newBody()
			d := int64(5000)
			if l == &cancelledBefore {
				d = 1000
			}
			if !pub(i%2, dead, "/pub?topic="+topic+"&defer="+strconv.FormatInt(d, 10)+"&id="+id, []string{b}, d) {
				t.Fatalf("/pub of an id owned by the instance to kill failed")
			}
			*l = append(*l, id)
			acrossBody[id] = b
		}
	}
	for i, id := range cancelledBefore {
		if st, ans, err := do("POST", i%3, "/cancel?id="+id, ""); err != nil || st != 200 {
			t.Fatalf("/cancel?id=%s before the kill: %d %s %v", id, st, ans, err)
		}
		set(k9Never, acrossBody[id])
	}
	var st2 k9PeerStats
	if _, ans, err := do("GET", dead, "/stats", ""); err != nil || json.Unmarshal([]byte(ans), &st2) != nil || st2.Pending == 0 {
		t.Fatalf("/stats of instance %d before the kill: pending %d, %v", dead, st2.Pending, err)
	}

	phase.Store(k9Killing)
	killMs := time.Now().UnixMilli()
	if err := procs[dead].cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-procs[dead].done
	phase.Store(k9Dead)
	t.Logf("killed instance %d (pid %d) with %d pending", dead, procs[dead].cmd.Process.Pid, st2.Pending)

	// Its ids: 503 OWNER_UNAVAILABLE from both others, for every request
	// naming one. (Each id's shard is checked against /stats' map.)
	for _, at := range []int{0, 1} {
		var ps k9PeerStats
		if _, ans, err := do("GET", at, "/stats", ""); err != nil || json.Unmarshal([]byte(ans), &ps) != nil || len(ps.Cluster.Peers) != 3 {
			t.Fatalf("/stats of %s: %v %s", peers[at], err, ans)
		}
		for k := range 5 {
			id := idOwned(dead, "z")
			if !slices.Contains(ps.Cluster.Peers[dead].Shards, k9Shard(id)) || ps.Cluster.Peers[dead].Address != peers[dead] {
				t.Errorf("shard %d of %s not in /stats' shards of %s: %+v", k9Shard(id), id, peers[dead], ps.Cluster.Peers[dead])
			}
			b := newBody()
			note(b, 0, dead)
			set(k9Never, b)
			for _, rq := range []struct{ method, pq string }{
				{"POST", "/pub?topic=" + topic + "&defer=" + strconv.Itoa(k*100) + "&id=" + id}, {"POST", "/cancel?id=" + id},
				{"POST", "/reschedule?id=" + id + "&defer=10"}, {"GET", "/message?id=" + id},
			} {
				if st, ans, err := do(rq.method, at, rq.pq, b); err != nil || st != 503 || ans != unavailable {
					t.Errorf("%s %s via %s with its owner dead: %d %q %v, want 503 %s", rq.method, rq.pq, peers[at], st, ans, err, unavailable)
				}
			}
		}
		// The id-less keep working where they land.
		b := newBody()
		if !pub(at, -1, "/pub?topic="+topic, []string{b}, 0) {
			t.Errorf("id-less /pub to %s while %s is dead refused", peers[at], peers[dead])
		}
	}
	for _, at := range []int{0, 1} {
		k9WaitUntil(t, 5*time.Second, fmt.Sprintf("/stats of %s: %s unreachable", peers[at], peers[dead]), func() bool {
			var ps k9PeerStats
			_, ans, err := do("GET", at, "/stats", "")
			return err == nil && json.Unmarshal([]byte(ans), &ps) == nil && len(ps.Cluster.Peers) == 3 &&
				!ps.Cluster.Peers[dead].Reachable && ps.Cluster.Peers[dead].LastError != "" &&
				ps.Cluster.Peers[1-at].Reachable && ps.Cluster.OwnerUnavailable > 0
		})
	}
	if d := time.Until(time.UnixMilli(killMs).Add(1500 * time.Millisecond)); d > 0 {
		time.Sleep(d)
	}

	phase.Store(k9Restarting)
	restartMs := time.Now().UnixMilli()
	procs[dead] = startDeferd(t, bin, argsOf(dead)...)
	waitPing(t, "http://"+peers[dead], procs[dead])
	phase.Store(k9UpAgain)
	t.Logf("instance %d back after %d ms down", dead, time.Now().UnixMilli()-killMs)

	// What it held before the kill is still known: a repeated /pub of
	// those ids is deduplicated, a /cancel of them answers 200, via the
	// others.
	for i, id := range across {
		b := newBody()
		if !pub(i%2, dead, "/pub?topic="+topic+"&id="+id, []string{b}, 0) {
			t.Fatalf("/pub?id=%s again after the restart refused", id)
		}
		set(k9Never, b)
	}
	for i, id := range acrossCancel {
		if st, ans, err := do("POST", i%2, "/cancel?id="+id, ""); err != nil || st != 200 {
			t.Errorf("/cancel?id=%s (published before the kill, due in 5 s) after the restart: %d %s %v", id, st, ans, err)
			continue
		}
		set(k9Never, acrossBody[id])
	}

	time.Sleep(1500 * time.Millisecond)
	stopLoad()
	stopMs := time.Now().UnixMilli()

	// Every acknowledged message arrives; then wait past the due time of
	// everything that must not, for late strays.
	bookMu.Lock()
	defer bookMu.Unlock()
	var must []string
	var neverDue int64
	states := map[int]int{}
	for b, e := range book {
		states[e.state]++
		switch e.state {
		case k9Acked:
			must = append(must, b)
		case k9Never:
			neverDue = max(neverDue, e.minDue)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		gotMu.Lock()
		missing := 0
		for _, b := range must {
			if len(got[b]) == 0 {
				missing++
			}
		}
		gotMu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			var ex []string
			gotMu.Lock()
			for _, b := range must {
				if len(got[b]) == 0 && len(ex) < 10 {
					e := book[b]
					ex = append(ex, fmt.Sprintf("%s (held by %d, due >= %+d ms after the kill)", b, e.holder, e.minDue-killMs))
				}
			}
			gotMu.Unlock()
			t.Fatalf("%d of %d acknowledged messages never arrived, e.g. %v", missing, len(must), ex)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := time.Until(time.UnixMilli(max(neverDue, stopMs) + 700)); d > 0 {
		time.Sleep(d)
	}

	gotMu.Lock()
	defer gotMu.Unlock()
	dups, afterRestart, bad := 0, 0, 0
	for b, ats := range got {
		e, ok := book[b]
		if !ok {
			t.Errorf("%s arrived, never sent", b)
			continue
		}
		dups += len(ats) - 1
		if e.state == k9Never {
			if bad++; bad <= 10 {
				t.Errorf("%s arrived %d time(s), %+d ms after the kill: it must not (cancelled with 200, a deduplicated /pub, or refused while its instance was dead)", b, len(ats), ats[0]-killMs)
			}
			continue
		}
		for _, a := range ats {
			if a < e.minDue {
				t.Errorf("%s arrived %d ms before its due time", b, e.minDue-a)
			}
			// The dead instance's own, due after the kill: only it
			// publishes them, after its restart.
			if e.holder == dead && e.minDue > killMs+2 && a < restartMs {
				t.Errorf("%s (held by instance %d, due %d ms after the kill) arrived %d ms after the kill, before the restart", b, dead, e.minDue-killMs, a-killMs)
			}
		}
		if e.holder == dead && e.minDue > killMs+2 && e.minDue < restartMs {
			afterRestart++
		}
	}
	if afterRestart == 0 {
		t.Errorf("no message of instance %d came due while it was down", dead)
	}
	cntMu.Lock()
	defer cntMu.Unlock()
	for _, k := range []string{"cancelled (200)", "deduplicated (200)", "503 OWNER_UNAVAILABLE", "refused by the dead instance"} {
		if cnt[k] == 0 {
			t.Errorf("the load made no %q", k)
		}
	}
	t.Logf("%d bodies sent: %d must arrive (all did; %d duplicates), %d must not (none did), %d either way; %d came due while instance %d was down; counts %v; %.1fs in all",
		len(book), len(must), dups, states[k9Never], states[k9Sent], afterRestart, dead, cnt, time.Since(testStart).Seconds())
}
