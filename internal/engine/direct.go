package engine

import "sync"

// directQ coalesces concurrent direct publishes (Options.DirectPublish)
// into shared MPUBs, as the journal's group commit coalesces appends: while
// max batches are on their way to nsqd, later requests for the same topic
// join one open batch, and one of its requests sends it when a sender slot
// frees. Single-message /pub requests then share MPUBs instead of costing a
// round trip each.
//
// The senders are the requests' own goroutines, so there is no goroutine to
// stop: a sender sends open batches oldest first until none is open or its
// own batch is done, then hands its slot to a request waiting on the oldest
// open batch (or gives it back). A batch holds at most maxMsgs
// messages unless one request brings more. A request's bodies alias its HTTP
// request; they stay valid because it waits until its batch was sent.
type directQ struct {
	send    func(topic string, bodies [][]byte) (acked int)
	max     int // batches in flight at most (egress connections)
	maxMsgs int // a request joins an open batch only while it stays within this (one MPUB)

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
	lead   chan struct{} // cap 1: a waiter of this batch takes the sender slot
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
		b = &dbatch{topic: topic, done: make(chan struct{}), lead: make(chan struct{}, 1)}
		q.open = append(q.open, b)
	}
	start := len(b.bodies)
	b.bodies = append(b.bodies, bodies...)
	sender := q.senders < q.max
	if sender {
		q.senders++
	}
	q.mu.Unlock()
	if !sender {
		select {
		case <-b.lead:
			sender = true
		case <-b.done:
		}
	}
	for {
		if sender {
			q.sendWhileOpen(b)
		}
		<-b.done // another sender may have b in flight
		// Slots are offered only to open batches, under mu, before a
		// sender takes them: with b done, any offer to b is visible now,
		// and the slot is ours to pass on.
		select {
		case <-b.lead:
			sender = true
		default:
			return min(max(b.acked-start, 0), len(bodies))
		}
	}
}

// sendWhileOpen sends open batches, oldest first, until none is open or
// own has been sent, and passes the caller's sender slot on.
func (q *directQ) sendWhileOpen(own *dbatch) {
	for {
		q.mu.Lock()
		if len(q.open) == 0 {
			q.senders--
			q.mu.Unlock()
			return
		}
		select {
		case <-own.done:
			q.handOffLocked()
			q.mu.Unlock()
			return
		default:
		}
		b := q.open[0]
		q.open[0] = nil
		q.open = q.open[1:]
		q.mu.Unlock()
		b.acked = q.send(b.topic, b.bodies)
		close(b.done)
	}
}

// handOffLocked passes the caller's sender slot to a waiter of the oldest
// open batch that has not been offered one yet, or gives the slot back if
// there is none: then every open batch already has a sender coming. q.mu
// held.
func (q *directQ) handOffLocked() {
	for _, b := range q.open {
		select {
		case b.lead <- struct{}{}:
			return
		default: // offered already
		}
	}
	q.senders--
}
