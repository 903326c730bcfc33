package egress

import (
	"errors"
	"time"

	"github.com/deferd/deferd/internal/nsqname"
)

// publish is Publish, or TryPublish when once is set, reporting to obs if
// not nil.
func (p *Publisher) publish(topic string, bodies [][]byte, once bool, obs BatchObserver) (acked int, err error) {
	p.mu.RLock()
	if p.stopped {
		p.mu.RUnlock()
		return 0, ErrStopped
	}
	p.active.Add(1)
	p.mu.RUnlock()
	defer p.active.Done()

	if len(bodies) == 0 {
		return 0, nil
	}
	if !nsqname.ValidTopic(topic) {
		p.permanent.Inc()
		return 0, &PublishError{Topic: topic, Err: ErrBadTopic, permanent: true}
	}
	limit := p.opts.MaxBatchMsgs
	for acked < len(bodies) {
		n, verr := p.nextBatch(bodies[acked:], limit)
		if n == 0 {
			p.permanent.Inc()
			return acked, &PublishError{Topic: topic, Index: acked, Err: verr, permanent: true}
		}
		batch := bodies[acked : acked+n]
		var tm sendTimes
		addr, tries, err := p.sendBatch(topic, batch, once, &tm)
		if err == nil {
			acked += n
			if obs != nil {
				obs.ObserveBatch(n, tm.sent, tm.ok)
			}
			continue
		}
		if errors.Is(err, ErrStopped) {
			return acked, err
		}
		switch classify(err) {
		case classSplit:
			if n > 1 {
				limit = (n + 1) / 2
				continue
			}
			fallthrough
		case classPermanent:
			p.permanent.Inc()
			return acked, &PublishError{Topic: topic, Addr: addr, Index: acked, Attempts: tries, Err: err, permanent: true}
		}
		if !once {
			p.gaveUp.Inc()
		}
		return acked, &PublishError{Topic: topic, Addr: addr, Index: acked, Attempts: tries, Err: err}
	}
	return acked, nil
}

// nextBatch returns how many leading bodies fit in one batch of at most
// limit messages. It returns 0 and the reason when the first body can never
// be sent.
func (p *Publisher) nextBatch(bodies [][]byte, limit int) (int, error) {
	size := 4 // message count
	n := 0
	for n < len(bodies) && n < limit {
		b := bodies[n]
		switch {
		case len(b) == 0:
			return n, ErrEmptyBody
		case len(b) > p.opts.MaxMsgSize:
			return n, ErrBodyTooLarge
		case size+4+len(b) > p.opts.MaxBatchBytes:
			return n, nil
		}
		size += 4 + len(b)
		n++
	}
	return n, nil
}

// sendBatch tries batch up to Attempts times, or once on an nsqd that is up
// if once is set. It returns the address of the last try, the number of
// tries and the last error (nil on success). Errors that are the batch's
// own fault end it at once. tm gets the times of the try that succeeded.
func (p *Publisher) sendBatch(topic string, batch [][]byte, once bool, tm *sendTimes) (addr string, tries int, err error) {
	if once {
		for {
			c, _ := p.leastBusyUp(p.view.Load(), nil)
			if c == nil {
				return "", 0, ErrNoNSQD
			}
			first, err := p.send(c, topic, batch, tm)
			if errors.Is(err, errNodeGone) {
				continue // removed since the pick, nothing sent: pick again
			}
			if err != nil && !errors.Is(err, ErrStopped) {
				c.node.failed(err, first && nodeFault(err), p)
			}
			return c.node.addr, 1, err
		}
	}
	c, _ := p.pick(nil)
	for tries = 1; ; tries++ {
		if c == nil { // no nsqd known (discovery listed none, or removed them)
			return addr, tries - 1, ErrNoNSQD
		}
		addr = c.node.addr
		var first bool
		first, err = p.send(c, topic, batch, tm)
		if errors.Is(err, errNodeGone) {
			tries-- // nothing was sent: not a try
			c, _ = p.pick(nil)
			continue
		}
		if err == nil || errors.Is(err, ErrStopped) {
			return addr, tries, err
		}
		// Only the first caller to see a connection fail marks its nsqd
		// down: the batches pipelined behind it on the same connection
		// fail too, and are not more evidence.
		c.node.failed(err, first && nodeFault(err), p)
		if classify(err) != classRetry || tries >= p.opts.Attempts {
			return addr, tries, err
		}
		p.retries.Inc()
		avoid := c.node
		var healthy bool
		if c, healthy = p.pick(avoid); healthy {
			continue // another connection, preferably on another nsqd, at once
		}
		if !p.sleep(jitter(backoff(p.opts.Backoff, p.opts.MaxBackoff, tries))) {
			return addr, tries, ErrStopped
		}
		c, _ = p.pick(avoid)
	}
}

// nodeFault reports whether a retryable err says something about the nsqd
// rather than the topic: E_MPUB_FAILED means the topic was being deleted or
// nsqd was exiting (the next try tells which).
func nodeFault(err error) bool {
	switch protocolCode(err) {
	case "E_MPUB_FAILED", "E_PUB_FAILED":
		return false
	}
	return classify(err) == classRetry
}

// sendTimes are the times of one successful send: its MPUB written to
// the connection, and nsqd's OK received.
type sendTimes struct{ sent, ok time.Time }

// send publishes one batch on c and waits for nsqd's answer, Timeout or Stop.
// On failure first reports whether this call was the first to see c's
// link fail (and replaced it). On success it sets tm.
func (p *Publisher) send(c *conn, topic string, batch [][]byte, tm *sendTimes) (first bool, err error) {
	n := c.node
	n.inFlight.Add(1)
	c.inFlight.Add(1)
	defer func() {
		c.inFlight.Add(-1)
		n.inFlight.Add(-1)
	}()
	// After the Add: drain sets gone, then waits for inFlight to be 0, so
	// either it sees this send or this send sees gone.
	if n.gone.Load() {
		return false, errNodeGone
	}
	start := time.Now()
	l := c.link.Load()
	if l.lost.Load() {
		// Its connection failed, possibly while idle: a link never redials.
		p.replace(c, l)
		l = c.link.Load()
	}
	// The timer covers the dial too: a link dials on first use, and
	// go-nsq's IDENTIFY is bounded only by its 10s read timeout (a hung
	// nsqd held a direct publish's reply 10 s, and Stop as long). The dial
	// runs on its own goroutine, so this call can give up on it; it keeps
	// none of the bodies.
	t := time.NewTimer(p.opts.Timeout)
	defer t.Stop()
	select {
	case <-l.dialed:
	default:
		select {
		case <-l.dial():
		case <-t.C:
			return p.failed(c, l, ErrTimeout)
		case <-p.stopCh:
			return false, ErrStopped
		}
	}
	ans, err := l.write(topic, batch)
	if err != nil {
		return p.failed(c, l, p.stoppedOr(err))
	}
	select {
	case err := <-ans:
		if err != nil {
			return p.failed(c, l, p.stoppedOr(err))
		}
	case <-t.C:
		return p.failed(c, l, ErrTimeout)
	case <-p.stopCh:
		return false, ErrStopped
	}
	tm.sent, tm.ok = start, time.Now()
	l.used.Store(true)
	n.batchDur.UpdateDuration(start)
	n.batches.Inc()
	n.published.Add(len(batch))
	n.markUp(p)
	return false, nil
}

// failed handles a failed send on c's link l and returns err. Every
// failure leaves the connection closed or in doubt (nsqd closes it after
// any MPUB error; a timed-out MPUB may still be answered), so l is
// replaced by a fresh link, which dials on its first use.
func (p *Publisher) failed(c *conn, l *link, err error) (bool, error) {
	if errors.Is(err, ErrStopped) {
		return false, err
	}
	return p.replace(c, l), err
}

// replace swaps c's link old for a fresh one unless another goroutine
// already did, stops old in the background, and reports whether it
// swapped. A fresh link costs nothing until its first use.
func (p *Publisher) replace(c *conn, old *link) bool {
	if !c.link.CompareAndSwap(old, p.newLink(c.node.addr)) {
		return false
	}
	p.retired.Go(old.stop)
	return true
}

// replaceIdle replaces the idle links of n that have had a connection:
// called when n goes down, so that the next batch on each dials again
// rather than writing into a connection that is likely dead too. Busy
// ones are left to finish or fail on their own.
func (p *Publisher) replaceIdle(n *node) {
	if n.gone.Load() {
		return // drain stops them
	}
	for _, c := range n.conns {
		if l := c.link.Load(); l != nil && l.used.Load() && c.inFlight.Load() == 0 {
			p.replace(c, l)
		}
	}
}

func (p *Publisher) newLink(addr string) *link { return newLink(addr, p.cfg, p.opts.Logf) }

// stoppedOr maps a go-nsq error to ErrStopped when the Publisher is stopping.
func (p *Publisher) stoppedOr(err error) error {
	select {
	case <-p.stopCh:
		return ErrStopped
	default:
		return err
	}
}
