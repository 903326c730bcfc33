package deferd_test

import (
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd"
)

// A go-nsq Producer, unchanged, publishes to a Scheduler's TCP listener:
// PUB and MPUB due now reach the sink before their OK, DPUB (here 1.5 s,
// and 2 h, which nsqd refuses) goes through the journal and the wheel and
// reaches the sink never before its delay.
func TestTCPProducerEndToEnd(t *testing.T) {
	type got struct {
		body string
		at   time.Time
	}
	var mu sync.Mutex
	var seen []got
	opts := deferd.NewOptions()
	opts.DataPath = t.TempDir()
	opts.TCPAddress = "127.0.0.1:0"
	opts.Logf = t.Logf
	opts.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		mu.Lock()
		for _, b := range bodies {
			seen = append(seen, got{topic + ":" + string(b), time.Now()})
		}
		mu.Unlock()
		return len(bodies), nil
	})
	s, err := deferd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	srv, err := s.ListenTCP()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Shutdown()

	p, err := nsq.NewProducer(srv.Addr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	defer p.Stop()
	if err := p.Ping(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if err := p.Publish("t", []byte("now")); err != nil {
		t.Fatal(err)
	}
	if err := p.MultiPublish("t", [][]byte{[]byte("m1"), []byte("m2")}); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := len(seen)
	mu.Unlock()
	if n != 3 {
		t.Fatalf("due-now PUB and MPUB: %d at the sink after their OK, want 3", n)
	}
	sent := time.Now()
	if err := p.DeferredPublish("t", 1500*time.Millisecond, []byte("later")); err != nil {
		t.Fatal(err)
	}
	if err := p.DeferredPublish("t", 2*time.Hour, []byte("much later")); err != nil {
		t.Fatalf("DPUB of 2 h (nsqd allows 1 h): %v", err)
	}
	if s.Pending() != 2 {
		t.Fatalf("pending %d after two DPUBs, want 2", s.Pending())
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n = len(seen)
		mu.Unlock()
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the 1.5 s DPUB did not arrive: %d at the sink", n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if last := seen[3]; last.body != "t:later" || last.at.Sub(sent) < 1500*time.Millisecond {
		t.Fatalf("DPUB: %q after %v, want t:later after >= 1.5 s", last.body, last.at.Sub(sent))
	}
}
