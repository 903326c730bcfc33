package benchmarks

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
)

// ChannelOptions sizes the channel design. The zero value means the original
// sizing: capacity 24,000 and 20 workers.
type ChannelOptions struct {
	Capacity int
	Workers  int
}

// Channel is the design many services start with: a buffered Go channel of
// messages read by a fixed pool of worker goroutines, each of which takes a
// message, sleeps until it is due, and publishes it to nsqd. It is FIFO, so a
// long delay at the head blocks a worker while later, shorter ones wait
// (head-of-line blocking), and a full channel blocks the producer. All state
// is in memory: a crash loses every pending message.
type Channel struct {
	opt ChannelOptions

	env  Env
	prod *nsq.Producer

	mu   sync.Mutex // guards ch, stop and wg across Crash
	ch   chan Msg
	stop chan struct{}
	wg   sync.WaitGroup
}

// NewChannel returns a channel design; see ChannelOptions for defaults.
func NewChannel(opt ChannelOptions) *Channel {
	if opt.Capacity <= 0 {
		opt.Capacity = 24000
	}
	if opt.Workers <= 0 {
		opt.Workers = 20
	}
	return &Channel{opt: opt}
}

func (c *Channel) Name() string { return "channel" }

func (c *Channel) Start(env Env) error {
	p, err := newProducer(env.NSQDTCPAddr)
	if err != nil {
		return err
	}
	c.env, c.prod = env, p
	c.startWorkers()
	return nil
}

func (c *Channel) startWorkers() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ch = make(chan Msg, c.opt.Capacity)
	c.stop = make(chan struct{})
	for range c.opt.Workers {
		c.wg.Add(1)
		go c.worker(c.ch, c.stop)
	}
}

func (c *Channel) worker(ch <-chan Msg, stop <-chan struct{}) {
	defer c.wg.Done()
	t := time.NewTimer(0)
	<-t.C
	for {
		var m Msg
		select {
		case <-stop:
			return
		case m = <-ch:
		}
		if d := time.Until(m.DueTime()); d > 0 {
			t.Reset(d)
			select {
			case <-stop:
				return // the message held by this worker is lost
			case <-t.C:
			}
		}
		if err := c.prod.Publish(c.env.Topic, m.Body); err != nil {
			c.env.logf("channel: publish: %v", err)
		}
	}
}

// Submit sends each message into the channel, blocking while it is full.
func (c *Channel) Submit(ctx context.Context, msgs []Msg) (int, error) {
	c.mu.Lock()
	ch := c.ch
	c.mu.Unlock()
	for i, m := range msgs {
		select {
		case ch <- m:
		case <-ctx.Done():
			return i, ctx.Err()
		}
	}
	return len(msgs), nil
}

func (c *Channel) stopWorkers() {
	c.mu.Lock()
	close(c.stop)
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *Channel) Stop() error {
	c.stopWorkers()
	c.prod.Stop()
	return nil
}

// Crash simulates a process crash: the workers stop, the channel and every
// message a worker holds are discarded, and a fresh, empty design starts.
func (c *Channel) Crash() error {
	c.stopWorkers()
	c.startWorkers()
	return nil
}

func (c *Channel) CrashNote() string {
	return "in-process state discarded (channel + worker-held messages), workers restarted"
}

func (c *Channel) External() []int { return nil }

func (c *Channel) Memory() (int64, string) { return SelfRSS(), selfRSSNote }

var _ Crasher = (*Channel)(nil)

func (c *Channel) String() string {
	return fmt.Sprintf("channel(cap=%d,workers=%d)", c.opt.Capacity, c.opt.Workers)
}
