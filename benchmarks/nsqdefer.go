package benchmarks

import (
	"context"
	"time"

	"github.com/nsqio/go-nsq"
)

// NSQDefer is nsqd's own deferred publish: each message goes straight into
// nsqd with DPUB (go-nsq DeferredPublishAsync), delay = due - now. nsqd
// holds deferred messages in an in-memory priority queue per channel and
// caps the delay at --max-req-timeout (1 h by default). nsqd runs in this
// process, so its CPU and memory are this process's.
type NSQDefer struct {
	// ScanRefresh is how long Start waits for nsqd to pick up the run's new
	// channel (default nsqd's QueueScanRefreshInterval, 5 s, + 200 ms).
	ScanRefresh time.Duration

	env  Env
	prod *nsq.Producer
}

func NewNSQDefer() *NSQDefer { return &NSQDefer{} }

func (n *NSQDefer) Name() string { return "nsqd-defer" }

func (n *NSQDefer) Start(env Env) error {
	p, err := newProducer(env.NSQDTCPAddr)
	if err != nil {
		return err
	}
	n.env, n.prod = env, p
	// nsqd's queue scan loop, which moves due deferred messages to
	// consumers, learns of new channels only every QueueScanRefreshInterval
	// (5 s). The harness made this run's channel a moment ago; wait until
	// nsqd scans it, as it would in a long-running deployment.
	w := n.ScanRefresh
	if w <= 0 {
		w = 5200 * time.Millisecond
	}
	time.Sleep(w)
	return nil
}

// Submit sends one DPUB per message, pipelined, and waits for every reply.
func (n *NSQDefer) Submit(ctx context.Context, msgs []Msg) (int, error) {
	done := make(chan *nsq.ProducerTransaction, len(msgs))
	sent := 0
	var firstErr error
	for _, m := range msgs {
		d := time.Until(m.DueTime())
		if d < 0 {
			d = 0
		}
		if err := n.prod.DeferredPublishAsync(n.env.Topic, d, m.Body, done); err != nil {
			firstErr = err
			break
		}
		sent++
	}
	ok := 0
	for range sent {
		select {
		case t := <-done:
			if t.Error == nil {
				ok++
			} else if firstErr == nil {
				firstErr = t.Error
			}
		case <-ctx.Done():
			return ok, ctx.Err()
		}
	}
	// Replies come back in order, so ok successes are the first ok messages
	// unless an error sits between them; that only happens when nsqd fails.
	return ok, firstErr
}

func (n *NSQDefer) Stop() error {
	n.prod.Stop()
	return nil
}

func (n *NSQDefer) External() []int { return nil }

func (n *NSQDefer) Memory() (int64, string) { return SelfRSS(), selfRSSNote + " (nsqd in-process)" }
