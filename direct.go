package deferd

import "sync"

// directQ coalesces concurrent direct publishes (Options.DirectPublish)
// into shared MPUBs, as the journal's group commit coalesces appends: while
// max batches are on their way to nsqd, later requests for a topic join an
// open batch, which goes out as one MPUB when a sender is free. Single-
// message /pub requests then share MPUBs instead of costing a round trip
// each.
//
// Senders are short-lived goroutines, not tasks on the wheel's publish
// pool, which a slow nsqd fills with retrying tasks: a request that opens a
// sender slot starts one, and it sends open batches, oldest first, until
// none is open; there are at most max, and none outlives the requests it
// serves. A batch holds at most maxMsgs messages unless one request brings
// more. A request's bodies alias its HTTP request; they stay valid because
// the request waits until its batch was sent.
type directQ struct {
	send    func(topic string, bodies [][]byte) (acked int) // must not panic
	max     int                                             // senders (batches in flight) at most: egress connections
	maxMsgs int                                             // a request joins an open batch only while it stays within this (one MPUB)

	mu      sync.Mutex
	open    []*dbatch // not yet taken by a sender, oldest first
	senders int
}

// dbatch is one MPUB's worth of bodies for one topic, from one or more
// requests.
type dbatch struct {
	topic  string
	bodies [][]byte
	acked  int           // leading bodies nsqd acknowledged; set before done closes
	done   chan struct{} // closed when sent
}

// publish sends bodies to topic together with what concurrent callers send
// and returns how many leading bodies nsqd acknowledged. It blocks until
// they were sent. Safe for concurrent use.
func (q *directQ) publish(topic string, bodies [][]byte) int {
	q.mu.Lock()
	var b *dbatch
	for _, ob := range q.open {
		if ob.topic == topic && len(ob.bodies)+len(bodies) <= q.maxMsgs {
			b = ob
			break
		}
	}
	if b == nil {
		b = &dbatch{topic: topic, done: make(chan struct{})}
		q.open = append(q.open, b)
	}
	start := len(b.bodies)
	b.bodies = append(b.bodies, bodies...)
	spawn := q.senders < q.max
	if spawn {
		q.senders++
	}
	q.mu.Unlock()
	if spawn {
		go q.sendOpen()
	}
	<-b.done
	return min(max(b.acked-start, 0), len(bodies))
}

// sendOpen sends open batches, oldest first, until none is open, and gives
// its sender slot back. Checking for an open batch and giving the slot back
// happen under one lock, so a batch opened meanwhile always has a sender.
func (q *directQ) sendOpen() {
	for {
		q.mu.Lock()
		if len(q.open) == 0 {
			q.senders--
			q.mu.Unlock()
			return
		}
		b := q.open[0]
		q.open[0] = nil
		q.open = q.open[1:]
		q.mu.Unlock()
		b.acked = q.send(b.topic, b.bodies)
		close(b.done)
	}
}
