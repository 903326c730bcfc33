package deferd

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

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
