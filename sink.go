package deferd

import (
	"fmt"

	"github.com/deferd/deferd/egress"
)

// Sink is where due messages go. deferd's default sink is egress (MPUB
// batches to nsqd over go-nsq); an embedder may supply its own, such as its
// MQ's client, so that a message its MQ throttled is parked in a local
// Scheduler whose sink is that same MQ.
//
// Publish hands bodies, in order, for topic, and reports how many leading
// bodies were taken (durably, by the sink's own standard: for nsqd, its
// OK). A message counts as published only once taken. If taken <
// len(bodies), err says why: if it wraps ErrRejected, bodies[taken] itself
// was refused and is parked for Options.ParkBackoff; otherwise the rest is
// retried after Options.RetryBackoff. Never dropped either way.
//
// bodies and their bytes are valid only during the call: copy what is
// kept. Publish is called from many goroutines at once (up to PoolSize
// publish tasks and the direct senders) and must be safe for that. It
// should return within a bounded time: Close waits for running calls only
// up to its grace.
type Sink interface {
	Publish(topic string, bodies [][]byte) (taken int, err error)
}

// SinkFunc is a Sink that is a function.
type SinkFunc func(topic string, bodies [][]byte) (taken int, err error)

// Publish calls f.
func (f SinkFunc) Publish(topic string, bodies [][]byte) (int, error) { return f(topic, bodies) }

// nsqdSink is the default sink: egress to nsqd. Its TryPublish (one try, no
// retry) serves DirectPublish, where the caller waits.
type nsqdSink struct{ p *egress.Publisher }

func (s nsqdSink) Publish(topic string, bodies [][]byte) (int, error) {
	return rejected(s.p.Publish(topic, bodies))
}

func (s nsqdSink) TryPublish(topic string, bodies [][]byte) (int, error) {
	return rejected(s.p.TryPublish(topic, bodies))
}

// rejected wraps ErrRejected around egress's permanent errors.
func rejected(acked int, err error) (int, error) {
	if err != nil && egress.IsPermanent(err) {
		err = fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return acked, err
}

// tryPublisher is a Sink with a single-try publish for DirectPublish.
type tryPublisher interface {
	TryPublish(topic string, bodies [][]byte) (int, error)
}
