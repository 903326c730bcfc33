package benchmarks

import (
	"context"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/wheel"
)

func init() {
	registerDesign("wheel", func() Design { return NewWheelDesign(4) })
}

// WheelDesign is deferd's timing wheel alone, in this process: AddAfter per
// message, one Run driver, and publishers that MPUB each due batch. No
// journal, no HTTP: it shows what the data structure costs and how late it
// is, and (like the channel design) a crash loses everything pending.
type WheelDesign struct {
	Publishers int

	env  Env
	prod *nsq.Producer
	w    *wheel.Wheel[[]byte]
	out  chan *wheel.Batch[[]byte]
	stop chan struct{}
	wg   sync.WaitGroup
}

func NewWheelDesign(publishers int) *WheelDesign {
	return &WheelDesign{Publishers: max(1, publishers)}
}

func (d *WheelDesign) Name() string { return "wheel" }

func (d *WheelDesign) Start(env Env) error {
	p, err := newProducer(env.NSQDTCPAddr)
	if err != nil {
		return err
	}
	d.env, d.prod = env, p
	d.w = wheel.New[[]byte](wheel.Options{})
	d.out = make(chan *wheel.Batch[[]byte], 64)
	d.stop = make(chan struct{})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		if b := d.w.Run(d.stop, d.out); b != nil {
			b.Release()
		}
	}()
	for range d.Publishers {
		d.wg.Add(1)
		go d.publisher()
	}
	return nil
}

func (d *WheelDesign) publisher() {
	defer d.wg.Done()
	var bodies [][]byte
	for {
		select {
		case <-d.stop:
			return
		case b := <-d.out:
			bodies = bodies[:0]
			for _, it := range b.Items {
				bodies = append(bodies, it.Value)
			}
			b.Release()
			for i := 0; i < len(bodies); i += 500 {
				if err := d.prod.MultiPublish(d.env.Topic, bodies[i:min(len(bodies), i+500)]); err != nil {
					d.env.logf("wheel: publish: %v", err)
				}
			}
		}
	}
}

// Submit adds each message with AddAfter(due - now).
func (d *WheelDesign) Submit(ctx context.Context, msgs []Msg) (int, error) {
	for _, m := range msgs {
		d.w.AddAfter(time.Until(m.DueTime()), m.Body)
	}
	return len(msgs), nil
}

func (d *WheelDesign) Stop() error {
	close(d.stop)
	d.wg.Wait()
	d.prod.Stop()
	return nil
}

// Crash simulates a process crash: the driver and publishers stop, the wheel
// and every pending message in it are discarded, and an empty one starts.
func (d *WheelDesign) Crash() error {
	close(d.stop)
	d.wg.Wait()
	d.prod.Stop()
	return d.Start(d.env)
}

func (d *WheelDesign) CrashNote() string {
	return "in-process state discarded (the wheel has no journal), restarted empty"
}

func (d *WheelDesign) External() []int { return nil }

func (d *WheelDesign) Memory() (int64, string) { return SelfRSS(), selfRSSNote }
