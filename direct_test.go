package deferd

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// Messages already due and without an id go straight to nsqd: when the 200
// arrives nsqd has them, and the journal never saw them. Delayed messages
// and messages with an id still go through the journal. Every body arrives
// once, unchanged.
func TestDirectPublish(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "d")
	var want []string
	var lines [][]byte
	for i := 0; i < 100; i++ {
		b := fmt.Sprintf("m%03d %s", i, strings.Repeat("x", i))
		lines = append(lines, []byte(b))
		want = append(want, b)
	}
	h.mustPost("/mpub?topic=d", bytes.Join(lines, []byte("\n")))
	if n := topicCount(node, "d"); n != 100 {
		t.Fatalf("nsqd has %d messages when the 200 arrived, want 100", n)
	}
	h.mustPost("/pub?topic=d&defer=0", []byte("defer0"))
	h.mustPost(fmt.Sprintf("/pub?topic=d&at=%d", time.Now().Add(-time.Minute).UnixMilli()), []byte("past"))
	if n := topicCount(node, "d"); n != 102 {
		t.Fatalf("nsqd has %d messages, want 102", n)
	}
	if a := h.e.j.Stats().Appends; a != 0 {
		t.Fatalf("journal appended %d records for messages published directly", a)
	}
	s := h.stats()
	if s.Accepted != 102 || s.Published != 102 || s.PublishedDirect != 102 || s.Pending != 0 || s.Early != 0 {
		t.Fatalf("stats: accepted %d published %d direct %d pending %d early %d, want 102/102/102/0/0",
			s.Accepted, s.Published, s.PublishedDirect, s.Pending, s.Early)
	}

	// An id (dedupe, cancel) or a delay takes the journal path.
	h.mustPost("/pub?topic=d&id=k1", []byte("with-id"))
	h.mustPost("/pub?topic=d&defer=30", []byte("defer30"))
	if a := h.e.j.Stats().Appends; a != 2 {
		t.Fatalf("journal appended %d records, want 2 (id, delay)", a)
	}
	want = append(want, "defer0", "past", "with-id", "defer30")
	col.waitCount(t, len(want), 10*time.Second)
	time.Sleep(100 * time.Millisecond) // duplicates would show by now
	got := col.snapshot()
	var bodies []string
	for _, r := range got {
		bodies = append(bodies, string(r.body))
	}
	sort.Strings(bodies)
	sort.Strings(want)
	if strings.Join(bodies, "|") != strings.Join(want, "|") {
		t.Fatalf("received %d bodies %q, want %d %q", len(bodies), bodies, len(want), want)
	}
	if s := h.stats(); s.Published != 104 || s.PublishedDirect != 102 || s.Pending != 0 || s.DirectJournaled != 0 {
		t.Fatalf("stats: published %d direct %d pending %d direct_journaled %d, want 104/102/0/0",
			s.Published, s.PublishedDirect, s.Pending, s.DirectJournaled)
	}
}

// With DirectPublish off, messages due at once are journaled first, like
// every other message.
func TestDirectPublishOff(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.DirectPublish = false
	h := startHarness(t, o)
	col := consume(t, node.TCPAddr, "o")
	h.mustPost("/mpub?topic=o", []byte("a\nb\nc"))
	if a := h.e.j.Stats().Appends; a != 3 {
		t.Fatalf("journal appended %d records, want 3", a)
	}
	col.waitCount(t, 3, 10*time.Second)
	if s := h.stats(); s.PublishedDirect != 0 || s.Published != 3 {
		t.Fatalf("stats: direct %d published %d, want 0 and 3", s.PublishedDirect, s.Published)
	}
}

// Many concurrent /pub and /mpub requests due now share MPUBs: when each
// 200 arrives nsqd has that request's messages, and every body arrives
// exactly once.
func TestDirectPublishConcurrent(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "cc")
	const workers, perWorker = 32, 20
	var wg sync.WaitGroup
	var mu sync.Mutex
	var want []string
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				var bodies []string
				if i%2 == 0 {
					bodies = []string{fmt.Sprintf("w%d-%d", w, i)}
					if !postOK(t, h.base+"/pub?topic=cc", bodies[0]) {
						return
					}
				} else {
					bodies = []string{fmt.Sprintf("w%d-%d-a", w, i), fmt.Sprintf("w%d-%d-b", w, i)}
					if !postOK(t, h.base+"/mpub?topic=cc", strings.Join(bodies, "\n")) {
						return
					}
				}
				mu.Lock()
				want = append(want, bodies...)
				n := len(want)
				mu.Unlock()
				// Everything acknowledged so far (this request's messages
				// included) is in nsqd already.
				if got := topicCount(node, "cc"); got < uint64(n) {
					t.Errorf("nsqd has %d messages after %d were acknowledged", got, n)
				}
			}
		}()
	}
	wg.Wait()
	if a := h.e.j.Stats().Appends; a != 0 {
		t.Fatalf("journal appended %d records", a)
	}
	col.waitCount(t, len(want), 10*time.Second)
	time.Sleep(100 * time.Millisecond) // duplicates would show by now
	seen := map[string]int{}
	for _, r := range col.snapshot() {
		seen[string(r.body)]++
	}
	for _, b := range want {
		if seen[b] != 1 {
			t.Fatalf("body %q arrived %d times", b, seen[b])
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("received %d distinct bodies, sent %d", len(seen), len(want))
	}
	if s := h.stats(); s.PublishedDirect != uint64(len(want)) || s.Pending != 0 {
		t.Fatalf("stats: direct %d pending %d, want %d and 0", s.PublishedDirect, s.Pending, len(want))
	}
}

// nsqd stops and comes back while producers keep sending messages due now:
// what was sent straight to nsqd before it stopped, what was journaled while
// it was down and what went straight again after: every acknowledged body
// arrives.
func TestDirectPublishNSQDOutage(t *testing.T) {
	node, restart := restartableNSQD(t)
	addr := node.TCPAddr
	h := startHarness(t, testOptions(t.TempDir(), addr))

	var (
		mu    sync.Mutex
		acked []string
		seq   atomic.Int64
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	client := &http.Client{Timeout: 10 * time.Second}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var bodies []string
				path := "/pub?topic=out"
				if i%2 == 0 {
					path = "/mpub?topic=out"
					for range 10 {
						bodies = append(bodies, fmt.Sprintf("w%d-%d", w, seq.Add(1)))
					}
				} else {
					bodies = []string{fmt.Sprintf("w%d-%d", w, seq.Add(1))}
				}
				resp, err := client.Post(h.base+path, "text/plain", strings.NewReader(strings.Join(bodies, "\n")))
				if err != nil {
					t.Errorf("POST: %v", err)
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					mu.Lock()
					acked = append(acked, bodies...)
					mu.Unlock()
				}
			}
		}()
	}
	// waitFor polls cond for up to 20s.
	waitFor := func(what string, cond func(Stats) bool) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); !cond(h.stats()); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				close(stop)
				wg.Wait()
				t.Fatalf("%s: not within 20s; stats %+v", what, h.stats())
			}
		}
	}
	waitFor("messages published directly", func(s Stats) bool { return s.PublishedDirect > 0 })
	node.Exit()
	waitFor("due-now messages journaled while nsqd is down", func(s Stats) bool { return s.Pending > 0 })
	restart()
	direct1 := h.stats().PublishedDirect
	waitFor("direct publishing resumed", func(s Stats) bool { return s.PublishedDirect > direct1+100 })
	close(stop)
	wg.Wait()

	col := consume(t, addr, "out")
	mu.Lock()
	want := append([]string(nil), acked...)
	mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		seen := map[string]bool{}
		for _, r := range col.snapshot() {
			seen[string(r.body)] = true
		}
		missing := 0
		for _, b := range want {
			if !seen[b] {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never arrived; stats %+v", missing, len(want), h.stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d acknowledged, all delivered; %d published directly, %d went through the journal while nsqd was down",
		len(want), h.stats().PublishedDirect, h.e.j.Stats().Appends)
}

// postOK posts body to url and reports whether it got 200 OK; it reports
// any other outcome with t.Errorf, so it is safe from any goroutine.
func postOK(t *testing.T, url, body string) bool {
	resp, err := http.Post(url, "text/plain", strings.NewReader(body))
	if err != nil {
		t.Errorf("POST %s: %v", url, err)
		return false
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "OK" {
		t.Errorf("POST %s: %d %q", url, resp.StatusCode, b)
		return false
	}
	return true
}

// direct_journaled counts due messages nsqd did not take that the journal
// did, not those refused: with no nsqd to take them and no room to journal
// them, nothing is counted.
func TestDirectJournaledCountsOnlyJournaled(t *testing.T) {
	o := testOptions(t.TempDir(), nsqdnodetest.ClosedAddr(t)) // every direct publish fails
	o.MaxPending = 2
	h := startHarness(t, o)
	if code, body := h.post("/mpub?topic=c", []byte("a\nb\nc")); code != http.StatusServiceUnavailable {
		t.Fatalf("3 messages with room for 2: %d %s", code, body)
	}
	if s := h.stats(); s.DirectJournaled != 0 || s.Pending != 0 {
		t.Fatalf("after a refused request: direct_journaled %d, pending %d; want 0, 0", s.DirectJournaled, s.Pending)
	}
	h.mustPost("/mpub?topic=c", []byte("a\nb"))
	if s := h.stats(); s.DirectJournaled != 2 || s.Pending != 2 || s.PublishedDirect != 0 {
		t.Fatalf("after 2 journaled: direct_journaled %d, pending %d, published_direct %d; want 2, 2, 0",
			s.DirectJournaled, s.Pending, s.PublishedDirect)
	}
}

// With nsqd hung, the pool fills with publish tasks retrying. A direct
// publish (a message due at once) must still answer within about
// Egress.Timeout (then it is journaled): its sender used to be a pool task,
// so its reply waited for a wheel task to finish (14 s, not 5).
func TestDirectPublishNotBehindFullPool(t *testing.T) {
	hung, unhang := nsqdnodetest.HungAddr(t)
	defer unhang()
	o := testOptions(t.TempDir(), hung)
	o.PoolSize = 2
	o.TaskSize = 1
	o.PublishBackoff = 50 * time.Millisecond
	o.Logf = func(string, ...any) {}
	h := startHarness(t, o)
	// 20 messages due in 200ms, in 20 tasks: more than the pool holds.
	var lines [][]byte
	for i := range 20 {
		lines = append(lines, fmt.Appendf(nil, "m%d", i))
	}
	h.mustPost(fmt.Sprintf("/mpub?topic=g&at=%d", time.Now().Add(200*time.Millisecond).UnixMilli()), bytes.Join(lines, []byte("\n")))
	time.Sleep(time.Second)
	t.Logf("pool running %d waiting %d", h.e.pool.Running(), h.e.pool.Waiting())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var worst time.Duration
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			code, resp := h.post(fmt.Sprintf("/pub?topic=d%d", i), []byte("now"))
			d := time.Since(start)
			mu.Lock()
			worst = max(worst, d)
			mu.Unlock()
			t.Logf("direct /pub %d: %d %s in %v", i, code, resp, d.Round(time.Millisecond))
		}()
	}
	wg.Wait()
	t.Logf("worst direct /pub latency with nsqd hung and the pool full: %v", worst.Round(time.Millisecond))
	if worst > 9*time.Second { // Egress.Timeout is 5 s
		t.Fatalf("a direct /pub took %v with the pool busy retrying", worst)
	}
}

// directQ under many concurrent callers: every
// body is sent exactly once, in its caller's order, in batches of one topic
// and at most maxMsgs (unless one call brings more), never more than max
// batches at once; each caller learns how many of its own bodies the
// batch's acknowledged prefix covered; nobody waits forever.
func TestDirectQCoalesces(t *testing.T) {
	for _, max := range []int{1, 2, 4} {
		t.Run(fmt.Sprint("max=", max), func(t *testing.T) {
			var (
				mu       sync.Mutex
				sent     = map[string]int{} // body -> times sent
				acked    = map[string]bool{}
				inFlight atomic.Int32
				peak     atomic.Int32
				batches  atomic.Int32
				shared   atomic.Int32 // batches carrying bodies of more than one call
			)
			const maxMsgs = 8
			q := &directQ{max: max, maxMsgs: maxMsgs}
			q.send = func(topic string, bodies [][]byte) int {
				n := inFlight.Add(1)
				for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
				}
				defer inFlight.Add(-1)
				time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
				batches.Add(1)
				// Acknowledge a random prefix, as nsqd failing mid-way would.
				k := len(bodies)
				if rand.IntN(4) == 0 {
					k = rand.IntN(len(bodies) + 1)
				}
				mu.Lock()
				defer mu.Unlock()
				callers := map[string]bool{}
				for i, b := range bodies {
					var c, topicOf string
					fmt.Sscanf(string(b), "%s %s", &topicOf, &c)
					if topicOf != topic {
						t.Errorf("body %q in a batch for %s", b, topic)
					}
					callers[c] = true
					sent[string(b)]++
					if i < k {
						acked[string(b)] = true
					}
				}
				if len(callers) > 1 {
					shared.Add(1)
					if len(bodies) > maxMsgs {
						t.Errorf("a shared batch of %d bodies, limit %d", len(bodies), maxMsgs)
					}
				}
				return k
			}
			var wg sync.WaitGroup
			for g := range 64 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for c := range 50 {
						topic := fmt.Sprint("t", (g+c)%3)
						n := 1 + rand.IntN(3)
						if c%17 == 0 {
							n = maxMsgs + 3 // alone bigger than a batch
						}
						var bodies [][]byte
						for i := range n {
							bodies = append(bodies, fmt.Appendf(nil, "%s g%d-c%d %d", topic, g, c, i))
						}
						got := q.publish(topic, bodies)
						mu.Lock()
						want := 0
						for want < n && acked[string(bodies[want])] {
							want++
						}
						for _, b := range bodies {
							if sent[string(b)] != 1 {
								t.Errorf("body %q sent %d times", b, sent[string(b)])
							}
						}
						mu.Unlock()
						if got != want {
							t.Errorf("call g%d-c%d: publish returned %d, its acknowledged prefix is %d", g, c, got, want)
						}
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(time.Minute):
				t.Fatal("callers still waiting after a minute")
			}
			if p := peak.Load(); p > int32(max) {
				t.Errorf("%d batches in flight at once, max %d", p, max)
			}
			// The last sender gives its slot back just after its batch's
			// callers return.
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
				q.mu.Lock()
				senders, open := q.senders, len(q.open)
				q.mu.Unlock()
				if senders == 0 && open == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after all calls: %d senders, %d open batches", senders, open)
				}
			}
			if shared.Load() == 0 {
				t.Errorf("no batch carried more than one call's bodies (%d batches)", batches.Load())
			}
			t.Logf("%d calls in %d batches, %d shared, peak %d in flight", 64*50, batches.Load(), shared.Load(), peak.Load())
		})
	}
}
