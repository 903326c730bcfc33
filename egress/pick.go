package egress

import (
	"math/rand/v2"
	"time"
)

// pick returns the connection for the next try, avoiding avoid when it can:
//
//   - a connection of an nsqd whose down backoff has just expired, claimed
//     so that only one caller probes it at a time;
//   - else the least-busy connection of an up nsqd, scanning from a random
//     start so ties spread;
//   - else, with every nsqd down, a connection of the one whose backoff ends
//     first; healthy is then false and the caller should back off first;
//   - nil and false when no nsqd is known.
//
// O(len(conns)), a few atomic loads per connection.
func (p *Publisher) pick(avoid *node) (c *conn, healthy bool) {
	v := p.view.Load()
	if len(v.nodes) == 0 {
		return nil, false
	}
	now := time.Now().UnixNano()
	// Probe an nsqd whose backoff expired. Claiming pushes its downUntil
	// past the longest a try can take, so others keep skipping it; the
	// probe's markUp or markDown then sets it.
	for _, n := range v.nodes {
		if until := n.downUntil.Load(); until != 0 && until <= now && n != avoid {
			claim := now + int64(p.opts.DialTimeout+p.opts.Timeout)
			if n.downUntil.CompareAndSwap(until, claim) {
				return n.leastBusy(), true
			}
		}
	}
	best, bestAvoid := p.leastBusyUp(v, avoid)
	switch {
	case best != nil:
		return best, true
	case bestAvoid != nil:
		return bestAvoid, true
	}
	probe := v.nodes[0]
	for _, n := range v.nodes[1:] {
		if n.downUntil.Load() < probe.downUntil.Load() {
			probe = n
		}
	}
	return probe.leastBusy(), false
}

// leastBusyUp returns the least-busy connection in v of an nsqd that is
// up, other than avoid's, and the least-busy of avoid's own (if avoid is
// up), scanning from a random start so ties spread. Either is nil when
// there is none: with avoid nil, best is nil only if every nsqd is down
// or v has none.
func (p *Publisher) leastBusyUp(v *view, avoid *node) (best, bestAvoid *conn) {
	if len(v.conns) == 0 {
		return nil, nil
	}
	var bestLoad, bestAvoidLoad int32
	start := rand.IntN(len(v.conns))
	for i := range v.conns {
		cc := v.conns[(start+i)%len(v.conns)]
		if cc.node.downUntil.Load() != 0 {
			continue
		}
		load := cc.inFlight.Load()
		if cc.node == avoid {
			if bestAvoid == nil || load < bestAvoidLoad {
				bestAvoid, bestAvoidLoad = cc, load
			}
			continue
		}
		if best == nil || load < bestLoad {
			best, bestLoad = cc, load
		}
	}
	return best, bestAvoid
}

// sleep waits d or until Stop; it reports whether it waited the full d.
func (p *Publisher) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stopCh:
		return false
	}
}

// backoff returns base*2^(n-1) capped at max, for n >= 1.
func backoff(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// jitter returns a duration uniformly in [d/2, d].
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}
