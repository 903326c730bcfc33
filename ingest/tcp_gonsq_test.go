package ingest

import (
	"errors"
	"fmt"
	"log"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/errs"
)

// tcpSetErr makes r's Publish and Cancel return err (nil: succeed).
func (r *recorder) tcpSetErr(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

// newTCPProducer is a go-nsq Producer for s, stopped by t.Cleanup before
// s shuts down.
func newTCPProducer(t *testing.T, s *TCPServer, cfg *nsq.Config) *nsq.Producer {
	t.Helper()
	if cfg == nil {
		cfg = nsq.NewConfig()
	}
	p, err := nsq.NewProducer(s.Addr(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.SetLogger(log.New(tWriter{t}, "", 0), nsq.LogLevelWarning)
	t.Cleanup(p.Stop)
	return p
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// go-nsq's Producer publishes to deferd unchanged: every call reaches the
// backend once, with the right topic, bodies and due time.
func TestTCPGoNSQProducer(t *testing.T) {
	rec := &recorder{}
	s := startTCP(t, TCPOptions{}, rec)
	p := newTCPProducer(t, s, nil)
	if err := p.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	step := func(name string, call func() error, want ...tcpPub) {
		t.Helper()
		beforeNs := time.Now().UnixNano()
		if err := call(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		checkPubs(t, rec.take(), want, beforeNs, nowMs())
	}
	step("Publish", func() error { return p.Publish("t", []byte("hello")) }, tcpPub{"t", []string{"hello"}, 0})
	step("MultiPublish", func() error { return p.MultiPublish("m", bs("a", "bb", "ccc")) }, tcpPub{"m", []string{"a", "bb", "ccc"}, 0})
	step("DeferredPublish", func() error { return p.DeferredPublish("d", 1500*time.Millisecond, []byte("later")) },
		tcpPub{"d", []string{"later"}, 1500})
	step("DeferredPublish 2h", func() error { return p.DeferredPublish("d", 2*time.Hour, []byte("much later")) },
		tcpPub{"d", []string{"much later"}, 2 * 3600 * 1000})
	step("DeferredPublish 0", func() error { return p.DeferredPublish("d", 0, []byte("now")) }, tcpPub{"d", []string{"now"}, 0})

	// Pipelined: one OK per publish, in order.
	const n = 200
	done := make(chan *nsq.ProducerTransaction, n)
	for i := range n {
		if err := p.PublishAsync("a", []byte(fmt.Sprint(i)), done, i); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		tr := <-done
		if tr.Error != nil || tr.Args[0].(int) != i {
			t.Fatalf("transaction %d: %v, args %v", i, tr.Error, tr.Args)
		}
	}
	pubs := rec.take()
	if len(pubs) != n {
		t.Fatalf("%d publishes, want %d", len(pubs), n)
	}
	for i, pr := range pubs {
		if string(pr.Bodies[0]) != fmt.Sprint(i) {
			t.Fatalf("publish %d has body %q", i, pr.Bodies[0])
		}
	}
	if got := s.m.accepted.Get(); got != 1 {
		t.Errorf("%d connections, want 1", got)
	}
	if err := p.Publish("bad*topic", []byte("x")); err == nil || !strings.Contains(err.Error(), "E_BAD_TOPIC") {
		t.Errorf("bad topic: %v", err)
	}
}

// An idle go-nsq connection lives across heartbeats: go-nsq answers each
// with a NOP, which renews the read deadline of two intervals.
func TestTCPGoNSQHeartbeats(t *testing.T) {
	rec := &recorder{}
	s := startTCP(t, TCPOptions{}, rec)
	cfg := nsq.NewConfig()
	cfg.HeartbeatInterval = time.Second
	p := newTCPProducer(t, s, cfg)
	if err := p.Ping(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "3 heartbeats", func() bool { return s.m.heartbeat.Get() >= 3 }) // past two intervals of silence
	if err := p.Publish("t", []byte("after heartbeats")); err != nil {
		t.Fatal(err)
	}
	if got := s.m.accepted.Get(); got != 1 {
		t.Errorf("%d connections, want 1 (the idle one was dropped)", got)
	}
	if pubs := rec.take(); len(pubs) != 1 {
		t.Errorf("%d publishes, want 1", len(pubs))
	}
}

// A backend error reaches the producer as an error; the connection is
// closed, and the producer reconnects and succeeds on its next publish.
func TestTCPGoNSQBackendError(t *testing.T) {
	rec := &recorder{}
	s := startTCP(t, TCPOptions{}, rec)
	p := newTCPProducer(t, s, nil)
	if err := p.Ping(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		err  error
		call func() error
		want string
	}{
		{errs.OverCapacity, func() error { return p.Publish("t", []byte("x")) }, "E_PUB_FAILED PUB failed OVER_CAPACITY"},
		{errs.JournalUnavailable, func() error { return p.MultiPublish("t", bs("x", "y")) }, "E_MPUB_FAILED MPUB failed JOURNAL_UNAVAILABLE"},
		{errs.Closed, func() error { return p.DeferredPublish("t", time.Second, []byte("x")) }, "E_DPUB_FAILED DPUB failed EXITING"},
		{fmt.Errorf("wrapped: %w", errs.OverCapacity), func() error { return p.Publish("t", []byte("x")) }, "E_PUB_FAILED PUB failed OVER_CAPACITY"},
		{errors.New("disk on fire"), func() error { return p.Publish("t", []byte("x")) }, "E_PUB_FAILED PUB failed INTERNAL_ERROR"},
	} {
		conns := s.m.accepted.Get()
		rec.tcpSetErr(c.err)
		err := c.call()
		var pe nsq.ErrProtocol
		if !errors.As(err, &pe) || pe.Error() != c.want {
			t.Fatalf("%v: got %v, want %q", c.err, err, c.want)
		}
		rec.tcpSetErr(nil)
		waitFor(t, "the connection to close", func() bool { return s.open.Load() == 0 })
		// go-nsq v1.1.0's router reads p.conn after releasing the
		// WaitGroup that reconnecting waits for: a data race unless
		// something orders it before the reconnect. Its last log call
		// takes logGuard, and so does SetLoggerLevel, once it has run.
		time.Sleep(100 * time.Millisecond)
		p.SetLoggerLevel(nsq.LogLevelWarning)
		// go-nsq learns of the close asynchronously; until then it says
		// ErrNotConnected without sending anything.
		for err = p.Publish("t", []byte("again")); errors.Is(err, nsq.ErrNotConnected); err = p.Publish("t", []byte("again")) {
			time.Sleep(5 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("publish after %v: %v", c.err, err)
		}
		if got := s.m.accepted.Get(); got != conns+1 {
			t.Errorf("%d connections, want %d (one reconnect)", got, conns+1)
		}
		if pubs := rec.take(); len(pubs) != 1 || string(pubs[0].Bodies[0]) != "again" {
			t.Errorf("after reconnect: %+v", pubs)
		}
	}
}
