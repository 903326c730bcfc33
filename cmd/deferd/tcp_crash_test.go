package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// SIGKILL deferd while go-nsq Producers publish to its TCP listener (PUB,
// MPUB, DPUB with delays from 0 to 3 s), restart it on the same data path
// and TCP port (the Producers reconnect on their next publish): every body
// whose publish returned OK reaches a consumer on the external nsqd at
// least once, none before its due time (the moment its publish began plus
// its delay), and nothing arrives that was never sent. Duplicates are
// allowed (at-least-once) and counted.
func TestTCPCrashLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildDeferd(t)
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	data := t.TempDir()
	httpAddr, tcpAddr := freeAddr(t), freeAddr(t)
	base := "http://" + httpAddr
	args := []string{"--http-address", httpAddr, "--tcp-address", tcpAddr, "--data-path", data,
		"--nsqd-tcp-address", node.TCPAddr, "--segment-size", "262144"}

	// sent is every body a producer tried to publish, with its due time
	// (taken before the publish began: deferd's own due time is no
	// earlier); acked are those whose publish returned OK.
	var (
		sentMu sync.Mutex
		sent   = map[string]time.Time{}
		acked  []string
	)
	type arrival struct {
		n     int
		first time.Time
	}
	var (
		mu       sync.Mutex
		received = map[string]*arrival{}
	)
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 1000
	c, err := nsq.NewConsumer("tcpcrash", "test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		now := time.Now()
		mu.Lock()
		a := received[string(m.Body)]
		if a == nil {
			a = &arrival{first: now}
			received[string(m.Body)] = a
		}
		a.n++
		mu.Unlock()
		return nil
	}))
	if err := c.ConnectToNSQD(node.TCPAddr); err != nil {
		t.Fatal(err)
	}
	defer func() { c.Stop(); <-c.StopChan }()

	p1 := startDeferd(t, bin, args...)
	waitPing(t, base, p1)

	// Producers publish until told to stop, across the kill and the
	// restart; a failed publish (deferd down, connection cut) is simply
	// not acknowledged.
	var (
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		failed  = map[string]int{} // error text -> count, for the log; under sentMu
		nFailed int
	)
	// newProducer makes a go-nsq Producer for deferd's TCP listener. A
	// producer whose publish failed is replaced by a new one rather than
	// left to reconnect: go-nsq v1.1.0's router reads Producer.conn after
	// releasing the WaitGroup that a reconnect waits for (a data race under
	// -race; see TestTCPGoNSQBackendError in ingest).
	newProducer := func() *nsq.Producer {
		pr, err := nsq.NewProducer(tcpAddr, nsq.NewConfig())
		if err != nil {
			panic(err) // only for an invalid config
		}
		pr.SetLoggerLevel(nsq.LogLevelError)
		return pr
	}
	const producers = 4
	for w := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pr := newProducer()
			defer func() { pr.Stop() }()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var bodies [][]byte
				n := 1
				if i%3 == 1 {
					n = 10
				}
				for k := range n {
					bodies = append(bodies, fmt.Appendf(nil, "w%d-%d-%d", w, i, k))
				}
				var delay time.Duration
				if i%3 == 2 {
					delay = time.Duration(i*137%3001) * time.Millisecond
				}
				var err error
				start := time.Now()
				sentMu.Lock()
				for _, b := range bodies {
					sent[string(b)] = start.Add(delay)
				}
				sentMu.Unlock()
				switch i % 3 {
				case 0:
					err = pr.Publish("tcpcrash", bodies[0])
				case 1:
					err = pr.MultiPublish("tcpcrash", bodies)
				default:
					err = pr.DeferredPublish("tcpcrash", delay, bodies[0])
				}
				if err != nil {
					sentMu.Lock()
					failed[err.Error()]++
					nFailed++
					sentMu.Unlock()
					pr.Stop()
					pr = newProducer()
					time.Sleep(10 * time.Millisecond)
					continue
				}
				sentMu.Lock()
				for _, b := range bodies {
					acked = append(acked, string(b))
				}
				sentMu.Unlock()
			}
		}()
	}
	stopLoad := func() {
		select {
		case <-stop:
		default:
			close(stop)
			wg.Wait()
		}
	}
	defer stopLoad()

	time.Sleep(1500 * time.Millisecond)
	var st struct {
		Pending int64  `json:"pending"`
		Direct  uint64 `json:"published_direct"`
	}
	if resp, err := http.Get(base + "/stats"); err != nil {
		t.Fatal(err)
	} else {
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || st.Direct == 0 || st.Pending == 0 {
			t.Fatalf("/stats before the kill: published_direct %d, pending %d, err %v; the test needs both", st.Direct, st.Pending, err)
		}
	}
	sentMu.Lock()
	ackedAtKill := len(acked)
	sentMu.Unlock()
	if err := p1.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p1.done
	if ackedAtKill < 300 {
		t.Fatalf("only %d bodies acknowledged before the kill; the test needs more load", ackedAtKill)
	}
	t.Logf("killed with %d acknowledged, %d pending and %d published directly by then", ackedAtKill, st.Pending, st.Direct)
	time.Sleep(300 * time.Millisecond)

	p2 := startDeferd(t, bin, args...)
	waitPing(t, base, p2)
	time.Sleep(time.Second) // the producers reconnect and publish again
	stopLoad()

	sentMu.Lock()
	nAcked := len(acked)
	sentMu.Unlock()
	if nAcked <= ackedAtKill {
		t.Fatalf("no publish succeeded after the restart (%d acknowledged in all)", nAcked)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		missing := 0
		for _, b := range acked {
			if received[b] == nil {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged bodies lost across kill -9", missing, nAcked)
		}
		time.Sleep(100 * time.Millisecond)
	}

	mu.Lock()
	defer mu.Unlock()
	dups, early, unknown := 0, 0, 0
	for b, a := range received {
		dups += a.n - 1
		due, ok := sent[b]
		switch {
		case !ok:
			unknown++
			t.Errorf("received %q, never sent", b)
		case a.first.Before(due):
			early++
			if early <= 10 {
				t.Errorf("%q arrived %v before its due time", b, due.Sub(a.first))
			}
		}
	}
	if early > 0 || unknown > 0 {
		t.Fatalf("%d bodies early, %d never sent", early, unknown)
	}
	var errs []string
	for k, v := range failed {
		errs = append(errs, fmt.Sprintf("%d x %s", v, k))
	}
	t.Logf("all %d acknowledged bodies delivered (%d received, %d unacknowledged among them), none early; %d duplicates; %d failed publishes: %v",
		nAcked, len(received), len(received)-nAcked, dups, nFailed, errs)

	p2.terminate(t)
}
