package egress

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nsqio/go-nsq"
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
	if !nsq.IsValidTopicName(topic) {
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

// sendTimes are the times of one successful send: its MPUB handed to
// go-nsq, and nsqd's OK received.
type sendTimes struct{ sent, ok time.Time }

// send publishes one batch on c and waits for nsqd's answer, Timeout or Stop.
// On failure first reports whether this call was the first to see c's
// Producer fail (and replaced it). On success it sets tm.
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
	// Buffered: if we stop waiting, go-nsq's router can still deliver the
	// answer without blocking.
	done := make(chan *nsq.ProducerTransaction, 1)
	prod := c.prod.Load()
	if prod.lost.Load() {
		// Its connection failed while idle: go-nsq would reconnect it.
		p.replace(c, prod)
		prod = c.prod.Load()
	}
	// The timer covers the connect too: go-nsq connects inside
	// MultiPublishAsync on a Producer's first use, and its IDENTIFY is
	// bounded only by the 10s read timeout (a hung nsqd held a direct
	// publish's reply 10 s, and Stop as long). On a connection's first
	// use the call runs on its own goroutine with a copy of the bodies,
	// so abandoning it keeps none of the caller's (go-nsq copies them
	// too, but only once that goroutine runs).
	t := time.NewTimer(p.opts.Timeout)
	defer t.Stop()
	if prod.used.Load() {
		err = prod.MultiPublishAsync(topic, batch, done)
	} else {
		own := copyBodies(batch)
		errc := make(chan error, 1)
		go func() { errc <- prod.MultiPublishAsync(topic, own, done) }()
		select {
		case err = <-errc:
		case <-t.C:
			return p.failed(c, prod, ErrTimeout)
		case <-p.stopCh:
			return false, ErrStopped
		}
	}
	if err != nil {
		return p.failed(c, prod, p.stoppedOr(err))
	}
	select {
	case tr := <-done:
		if tr.Error != nil {
			return p.failed(c, prod, p.stoppedOr(tr.Error))
		}
	case <-t.C:
		return p.failed(c, prod, ErrTimeout)
	case <-p.stopCh:
		return false, ErrStopped
	}
	tm.sent, tm.ok = start, time.Now()
	prod.used.Store(true)
	n.batchDur.UpdateDuration(start)
	n.batches.Inc()
	n.published.Add(len(batch))
	n.markUp(p)
	return false, nil
}

// copyBodies copies bodies into one new buffer.
func copyBodies(bodies [][]byte) [][]byte {
	n := 0
	for _, b := range bodies {
		n += len(b)
	}
	buf := make([]byte, 0, n)
	out := make([][]byte, len(bodies))
	for i, b := range bodies {
		buf = append(buf, b...)
		out[i] = buf[len(buf)-len(b) : len(buf) : len(buf)]
	}
	return out
}

// failed handles a failed send of prod on c and returns err. Every failure
// from nsqd leaves the connection closed or in doubt (nsqd closes it after
// any MPUB error), so prod is replaced by a new Producer.
//
// Why replace rather than let go-nsq reconnect: a go-nsq v1.1.0 Producer
// that reconnects races with its previous connection's router goroutine
// (producer.go: the router reads w.conn after wg.Done, connect writes it),
// which the race detector reports. A Producer that never reconnects has no
// such race: failed sends replace it here, and a connection that fails
// while idle marks it lost (nsqLogger) so that send replaces it first.
func (p *Publisher) failed(c *conn, prod *producer, err error) (bool, error) {
	if errors.Is(err, ErrStopped) {
		return false, err
	}
	return p.replace(c, prod), err
}

// replace swaps c's Producer old for a new one unless another goroutine
// already did, stops old in the background, and reports whether it swapped.
func (p *Publisher) replace(c *conn, old *producer) bool {
	fresh, err := p.newProducer(c.node.addr)
	if err != nil {
		panic("BUG: go-nsq config validated in New: " + err.Error())
	}
	if !c.prod.CompareAndSwap(old, fresh) {
		fresh.Stop()
		return false
	}
	p.retired.Go(old.Stop)
	return true
}

// replaceIdle replaces the idle Producers of n that have had a connection:
// called when n goes down, so none of them later reconnects (see failed).
// Busy ones are left to finish or fail on their own.
func (p *Publisher) replaceIdle(n *node) {
	if n.gone.Load() {
		return // drain stops them
	}
	for _, c := range n.conns {
		if prod := c.prod.Load(); prod != nil && prod.used.Load() && c.inFlight.Load() == 0 {
			p.replace(c, prod)
		}
	}
}

func (p *Publisher) newProducer(addr string) (*producer, error) {
	prod, err := nsq.NewProducer(addr, p.cfg)
	if err != nil {
		return nil, fmt.Errorf("egress: %s: %w", addr, err)
	}
	pr := &producer{Producer: prod}
	prod.SetLogger(nsqLogger{logf: p.opts.Logf, addr: addr, lost: &pr.lost}, nsq.LogLevelWarning)
	return pr, nil
}

// stoppedOr maps a go-nsq error to ErrStopped when the Publisher is stopping.
func (p *Publisher) stoppedOr(err error) error {
	select {
	case <-p.stopCh:
		return ErrStopped
	default:
		return err
	}
}

// nsqLogger routes one Producer's go-nsq log lines (warnings and errors) to
// Options.Logf, and marks the Producer lost: go-nsq logs them when its
// connection fails, before the Producer could reconnect.
type nsqLogger struct {
	logf func(format string, args ...any)
	addr string
	lost *atomic.Bool
}

func (l nsqLogger) Output(_ int, s string) error {
	l.lost.Store(true)
	l.logf("egress: nsqd %s: %s", l.addr, s)
	return nil
}
