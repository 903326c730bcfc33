package egress

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// newTestPublisher starts a Publisher whose logs go to t and which is stopped
// by t.Cleanup.
func newTestPublisher(t *testing.T, opts Options) *Publisher {
	t.Helper()
	opts.Logf = t.Logf
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}

// collector consumes topics from nsqds and counts each distinct body.
type collector struct {
	mu    sync.Mutex
	got   map[string]int
	total int
}

func newCollector(t *testing.T, addrs []string, topics ...string) *collector {
	t.Helper()
	c := &collector{got: make(map[string]int)}
	for _, topic := range topics {
		cfg := nsq.NewConfig()
		cfg.MaxInFlight = 1000
		cfg.LookupdPollInterval = time.Second
		cons := c.consumer(t, topic, cfg)
		if err := cons.ConnectToNSQDs(addrs); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			// Wait: nsqd v1.3.0 races in Exit with a still-connected consumer.
			cons.Stop()
			<-cons.StopChan
		})
	}
	return c
}

// consumer is a go-nsq Consumer of topic (channel "test", 4 handlers)
// configured by cfg that counts each body it takes in c; the caller
// connects and stops it.
func (c *collector) consumer(t *testing.T, topic string, cfg *nsq.Config) *nsq.Consumer {
	t.Helper()
	cons, err := nsq.NewConsumer(topic, "test", cfg)
	if err != nil {
		t.Fatal(err)
	}
	cons.SetLogger(nsqLogger{logf: t.Logf, addr: "consumer"}, nsq.LogLevelError)
	cons.AddConcurrentHandlers(nsq.HandlerFunc(func(m *nsq.Message) error {
		c.mu.Lock()
		c.got[topic+"\x00"+string(m.Body)]++
		c.total++
		c.mu.Unlock()
		return nil
	}), 4)
	return cons
}

// waitTotal waits until at least n messages arrived, then a little longer so
// duplicates would show.
func (c *collector) waitTotal(t *testing.T, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		c.mu.Lock()
		total := c.total
		c.mu.Unlock()
		if total >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("received %d messages, want %d", total, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
}

func (c *collector) count(topic string, body []byte) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[topic+"\x00"+string(body)]
}

// makeBody returns a unique body of size n >= 8 that holds zero bytes and
// newlines.
func makeBody(r *rand.Rand, id uint64, n int) []byte {
	b := make([]byte, n)
	binary.BigEndian.PutUint64(b, id) // leading zero bytes
	for i := 8; i < n; i++ {
		switch r.IntN(8) {
		case 0:
			b[i] = '\n'
		case 1:
			b[i] = 0
		default:
			b[i] = byte(r.IntN(256))
		}
	}
	return b
}

// Many goroutines publish thousands of mixed-size binary bodies across
// topics and two nsqds; a consumer gets each exactly once, byte-identical.
func TestPublishConcurrentExactlyOnce(t *testing.T) {
	a := nsqdnodetest.Start(t, nsqdnode.Config{})
	b := nsqdnodetest.Start(t, nsqdnode.Config{})
	addrs := []string{a.TCPAddr, b.TCPAddr}
	p := newTestPublisher(t, Options{Addrs: addrs, MaxBatchMsgs: 50, ConnsPerAddr: 2})
	topics := []string{"alpha", "beta", "gamma"}
	col := newCollector(t, addrs, topics...)

	const workers, calls = 16, 8
	start := time.Now()
	var id atomic.Uint64
	var mu sync.Mutex
	sent := make(map[string][][]byte)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range calls {
				topic := topics[r.IntN(len(topics))]
				bodies := make([][]byte, 1+r.IntN(80))
				for i := range bodies {
					size := 8 + r.IntN(64)
					if r.IntN(10) == 0 {
						size = 8 + r.IntN(20000)
					}
					bodies[i] = makeBody(r, id.Add(1), size)
				}
				acked, err := p.Publish(topic, bodies)
				if err != nil || acked != len(bodies) {
					t.Errorf("Publish: acked %d of %d, err %v", acked, len(bodies), err)
					return
				}
				mu.Lock()
				sent[topic] = append(sent[topic], bodies...)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	t.Logf("published in %v", time.Since(start))
	n := 0
	for _, bs := range sent {
		n += len(bs)
	}
	col.waitTotal(t, n, 30*time.Second)
	t.Logf("received in %v", time.Since(start))
	for topic, bs := range sent {
		for _, body := range bs {
			if c := col.count(topic, body); c != 1 {
				t.Fatalf("topic %s body %x...: received %d times, want 1", topic, body[:8], c)
			}
		}
	}
	if col.total != n {
		t.Fatalf("received %d messages, sent %d", col.total, n)
	}
	var published, batches uint64
	for _, s := range p.Stats() {
		if !s.Up || s.Errors != 0 {
			t.Errorf("stats %+v: want up with no errors", s)
		}
		if s.Published == 0 {
			t.Errorf("stats %+v: nsqd got no messages; want load spread over both", s)
		}
		published += s.Published
		batches += s.Batches
	}
	if published != uint64(n) {
		t.Errorf("stats: published %d, want %d", published, n)
	}
	t.Logf("%d messages in %d batches over %d nsqds", n, batches, len(addrs))

	var out bytes.Buffer
	p.Metrics().WritePrometheus(&out)
	for _, want := range []string{
		fmt.Sprintf("deferd_egress_published_total{nsqd=%q} %d", a.TCPAddr, p.Stats()[0].Published),
		fmt.Sprintf("deferd_egress_errors_total{nsqd=%q} 0", b.TCPAddr),
		fmt.Sprintf("deferd_egress_up{nsqd=%q} 1", a.TCPAddr),
		"deferd_egress_retries_total 0",
	} {
		if !bytes.Contains(out.Bytes(), []byte(want+"\n")) {
			t.Errorf("metrics lack %q:\n%s", want, out.String())
		}
	}
}

// With nsqd limits small, batches stay within MaxBatchMsgs and MaxBatchBytes
// (nsqd never answers E_BAD_BODY), and a body over MaxMsgSize stops Publish
// before it with a permanent error.
func TestBatchLimits(t *testing.T) {
	const maxMsg, maxBody = 1000, 8000
	node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: maxMsg, MaxBodySize: maxBody})
	p := newTestPublisher(t, Options{Addrs: []string{node.TCPAddr}, MaxMsgSize: maxMsg, MaxBatchBytes: maxBody, MaxBatchMsgs: 20})
	col := newCollector(t, []string{node.TCPAddr}, "limits")

	r := rand.New(rand.NewPCG(7, 7))
	var bodies [][]byte
	for i := range 3000 {
		size := 8 + r.IntN(200)
		if i%7 == 0 {
			size = maxMsg // exactly at the limit
		}
		bodies = append(bodies, makeBody(r, uint64(i), size))
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			part := bodies[w*len(bodies)/4 : (w+1)*len(bodies)/4]
			if acked, err := p.Publish("limits", part); err != nil || acked != len(part) {
				t.Errorf("Publish: acked %d of %d, err %v", acked, len(part), err)
			}
		})
	}
	wg.Wait()
	s := p.Stats()[0]
	if s.Errors != 0 {
		t.Fatalf("stats %+v: nsqd refused batches", s)
	}
	if minBatches := uint64(len(bodies) / 20); s.Batches < minBatches {
		t.Fatalf("%d batches for %d bodies, want >= %d (MaxBatchMsgs 20)", s.Batches, len(bodies), minBatches)
	}
	col.waitTotal(t, len(bodies), 30*time.Second)
	for _, b := range bodies {
		if c := col.count("limits", b); c != 1 {
			t.Fatalf("body %x received %d times, want 1", b[:8], c)
		}
	}

	// A body over MaxMsgSize, an empty body: acked stops before it.
	for _, tc := range []struct {
		name string
		bad  []byte
		want error
	}{
		{"too large", make([]byte, maxMsg+1), ErrBodyTooLarge},
		{"empty", []byte{}, ErrEmptyBody},
	} {
		batch := [][]byte{[]byte("one"), []byte("two"), tc.bad, []byte("after")}
		acked, err := p.Publish("limits", batch)
		if acked != 2 || !IsPermanent(err) || !errors.Is(err, tc.want) {
			t.Fatalf("%s: acked %d, err %v; want 2 and permanent %v", tc.name, acked, err, tc.want)
		}
		var pe *PublishError
		if !errors.As(err, &pe) || pe.Index != 2 {
			t.Fatalf("%s: err %#v, want *PublishError at index 2", tc.name, err)
		}
	}
	if _, err := p.Publish("bad topic!", [][]byte{[]byte("x")}); !IsPermanent(err) || !errors.Is(err, ErrBadTopic) {
		t.Fatalf("bad topic: err %v, want permanent ErrBadTopic", err)
	}
}

// When the Publisher's limits are larger than nsqd's, nsqd's E_BAD_BODY and
// E_BAD_MESSAGE make Publish halve the batch: everything that fits gets
// through, and the one body nsqd refuses is a permanent error at its index.
func TestSplitOnNSQDRefusal(t *testing.T) {
	const maxMsg, maxBody = 1000, 8000
	node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: maxMsg, MaxBodySize: maxBody})
	p := newTestPublisher(t, Options{Addrs: []string{node.TCPAddr}, MaxMsgSize: 4000, MaxBatchBytes: 64000, MaxBatchMsgs: 100})
	col := newCollector(t, []string{node.TCPAddr}, "split")

	r := rand.New(rand.NewPCG(1, 2))
	bodies := make([][]byte, 90)
	for i := range bodies {
		bodies[i] = makeBody(r, uint64(i), 500) // 90*504 > 8000: E_BAD_BODY
	}
	bodies[70] = makeBody(r, 70, 2000) // > nsqd's max-msg-size: E_BAD_MESSAGE
	acked, err := p.Publish("split", bodies)
	if acked != 70 || !IsPermanent(err) {
		t.Fatalf("acked %d, err %v; want 70 and a permanent error", acked, err)
	}
	if code := protocolCode(err); code != "E_BAD_MESSAGE" {
		t.Fatalf("err %v: code %q, want E_BAD_MESSAGE", err, code)
	}
	col.waitTotal(t, 70, 30*time.Second)
	for _, b := range bodies[:70] {
		if c := col.count("split", b); c != 1 {
			t.Fatalf("body %x received %d times, want 1", b[:8], c)
		}
	}
	if p.Stats()[0].Up != true {
		t.Fatal("nsqd marked down for a refused body")
	}
}

// Failover between two nsqds, giving up when both are down, and resuming
// when one is restarted on the same port and data path, with nothing lost.
func TestFailoverAndRestart(t *testing.T) {
	dirA, dirB := t.TempDir(), t.TempDir()
	a, err := nsqdnode.Start(nsqdnode.Config{DataPath: dirA})
	if err != nil {
		t.Fatal(err)
	}
	b, err := nsqdnode.Start(nsqdnode.Config{DataPath: dirB})
	if err != nil {
		t.Fatal(err)
	}
	addrA, addrB := a.TCPAddr, b.TCPAddr
	t.Cleanup(func() { a.Exit(); b.Exit() })

	const backoff = 20 * time.Millisecond
	p := newTestPublisher(t, Options{
		Addrs: []string{addrA, addrB}, ConnsPerAddr: 2, MaxBatchMsgs: 10,
		Attempts: 3, Backoff: backoff, MaxBackoff: 200 * time.Millisecond,
	})
	var (
		id    uint64
		acked [][]byte
	)
	publish := func(n int) (int, error) {
		bodies := make([][]byte, n)
		for i := range bodies {
			id++
			bodies[i] = fmt.Appendf(nil, "msg-%d\n\x00", id)
		}
		k, err := p.Publish("failover", bodies)
		acked = append(acked, bodies[:k]...)
		return k, err
	}
	for range 10 {
		if k, err := publish(25); err != nil {
			t.Fatalf("both up: acked %d, err %v", k, err)
		}
	}

	a.Exit()
	for range 20 {
		if k, err := publish(25); err != nil {
			t.Fatalf("A down: acked %d, err %v", k, err)
		}
	}
	st := p.Stats()
	if st[0].Up || st[0].LastError == "" || st[0].Errors == 0 || !st[1].Up {
		t.Fatalf("A down: stats %+v, want A down with its error and B up", st)
	}

	b.Exit()
	start := time.Now()
	k, err := publish(25)
	took := time.Since(start)
	if err == nil || k != 0 || IsPermanent(err) {
		t.Fatalf("both down: acked %d, err %v; want 0 and a transient error", k, err)
	}
	// Attempts tries with backoff between, jittered at most to the full
	// value: 20ms + 40ms, plus slack for the race detector.
	if limit := time.Second; took > limit {
		t.Fatalf("both down: Publish took %v, want < %v", took, limit)
	}
	t.Logf("both down: gave up after %v: %v", took, err)

	a, err = nsqdnode.Start(nsqdnode.Config{TCPAddress: addrA, DataPath: dirA})
	if err != nil {
		t.Fatalf("restart A on %s: %v", addrA, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		k, err := publish(25)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("A restarted: publishing did not resume: acked %d, err %v", k, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for range 10 {
		if k, err := publish(25); err != nil {
			t.Fatalf("A restarted: acked %d, err %v", k, err)
		}
	}
	if st := p.Stats(); !st[0].Up {
		t.Fatalf("A restarted: stats %+v, want A up", st)
	}

	b, err = nsqdnode.Start(nsqdnode.Config{TCPAddress: addrB, DataPath: dirB})
	if err != nil {
		t.Fatalf("restart B on %s: %v", addrB, err)
	}
	// Every acknowledged body is in A's or B's data (at least once).
	col := newCollector(t, []string{addrA, addrB}, "failover")
	col.waitTotal(t, len(acked), 30*time.Second)
	for _, body := range acked {
		if col.count("failover", body) == 0 {
			t.Fatalf("acknowledged body %q lost", body)
		}
	}
}

// Stop makes running and later Publish calls return ErrStopped promptly,
// including ones waiting in backoff.
func TestStop(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	deadAddr := nsqdnodetest.ClosedAddr(t)

	p := newTestPublisher(t, Options{Addrs: []string{node.TCPAddr}, MaxBatchMsgs: 10})
	body := bytes.Repeat([]byte("x"), 500)
	bodies := make([][]byte, 2000)
	for i := range bodies {
		bodies[i] = body
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for {
				if _, err := p.Publish("stop", bodies); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	p.Stop()
	wg.Wait()
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("Stop and return of running Publish calls took %v", took)
	}
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("running Publish returned %v, want ErrStopped", err)
		}
	}
	if _, err := p.Publish("stop", bodies[:1]); !errors.Is(err, ErrStopped) {
		t.Fatalf("Publish after Stop: %v, want ErrStopped", err)
	}
	p.Stop() // idempotent

	// A Publish sleeping in a long backoff against a dead nsqd.
	q := newTestPublisher(t, Options{Addrs: []string{deadAddr}, Attempts: 100, Backoff: time.Second, MaxBackoff: 5 * time.Second})
	done := make(chan error, 1)
	go func() {
		_, err := q.Publish("stop", bodies[:1])
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	start = time.Now()
	q.Stop()
	select {
	case err := <-done:
		if !errors.Is(err, ErrStopped) {
			t.Fatalf("Publish in backoff returned %v, want ErrStopped", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Publish in backoff did not return within 2s of Stop")
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("Stop during backoff took %v", took)
	}
}

func TestNewValidates(t *testing.T) {
	for _, o := range []Options{
		{},
		{Addrs: []string{"nohost"}},
		{Addrs: []string{"127.0.0.1:1", "127.0.0.1:1"}},
		{Addrs: []string{"127.0.0.1:1"}, MaxMsgSize: 100, MaxBatchBytes: 100},
		{Addrs: []string{"127.0.0.1:1"}, ConnsPerAddr: -1},
		{Addrs: []string{"127.0.0.1:1"}, Backoff: time.Second, MaxBackoff: time.Millisecond},
	} {
		if p, err := New(o); err == nil {
			p.Stop()
			t.Errorf("New(%+v) succeeded, want an error", o)
		}
	}
}

func TestIsPermanent(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{nsq.ErrNotConnected, false},
		{ErrTimeout, false},
		{ErrStopped, false},
		{nsq.ErrProtocol{Reason: "E_BAD_TOPIC MPUB topic name \"x!\" is not valid"}, true},
		{nsq.ErrProtocol{Reason: "E_BAD_MESSAGE MPUB invalid message(3) body size 0"}, true},
		{nsq.ErrProtocol{Reason: "E_MPUB_FAILED MPUB failed exiting"}, false},
		{fmt.Errorf("wrapped: %w", ErrBodyTooLarge), true},
		{&PublishError{Err: nsq.ErrProtocol{Reason: "E_BAD_BODY x"}, permanent: true}, true},
		{&PublishError{Err: nsq.ErrNotConnected}, false},
	} {
		if got := IsPermanent(tc.err); got != tc.want {
			t.Errorf("IsPermanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestNodeFault(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nsq.ErrNotConnected, true},
		{ErrTimeout, true},
		{nsq.ErrProtocol{Reason: "E_MPUB_FAILED MPUB failed exiting"}, false},
		{nsq.ErrProtocol{Reason: "E_BAD_BODY MPUB body too big"}, false},
		{nsq.ErrProtocol{Reason: "E_BAD_TOPIC x"}, false},
	} {
		if got := nodeFault(tc.err); got != tc.want {
			t.Errorf("nodeFault(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	for n, want := range map[int]time.Duration{1: 50, 2: 100, 3: 200, 4: 300, 10: 300} {
		if got := backoff(50, 300, n); got != want {
			t.Errorf("backoff(50, 300, %d) = %v, want %v", n, got, want)
		}
	}
	for range 1000 {
		if d := jitter(100); d < 50 || d > 100 {
			t.Fatalf("jitter(100) = %v, want in [50, 100]", d)
		}
	}
}

// TryPublish gives each batch one try on an nsqd that is up: a failure
// comes back at once (no retry, no backoff) with the acknowledged prefix,
// the failed nsqd is then skipped, and with every nsqd down nothing is
// sent at all.
func TestTryPublish(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	dead := nsqdnodetest.ClosedAddr(t)
	const backoff = time.Minute // a sleep of it would time the test out
	p := newTestPublisher(t, Options{
		Addrs: []string{dead, node.TCPAddr}, ConnsPerAddr: 1, MaxBatchMsgs: 10,
		Attempts: 3, Backoff: backoff, MaxBackoff: backoff,
	})
	var acked [][]byte
	failures := 0
	for i := range 20 {
		bodies := make([][]byte, 25)
		for j := range bodies {
			bodies[j] = fmt.Appendf(nil, "try-%d-%d", i, j)
		}
		k, err := p.TryPublish("try", bodies)
		acked = append(acked, bodies[:k]...)
		if err != nil {
			failures++
			var pe *PublishError
			if !errors.As(err, &pe) || pe.Addr != dead || pe.Attempts != 1 || pe.Index != k || IsPermanent(err) {
				t.Fatalf("TryPublish: acked %d, err %#v; want one transient try on %s", k, err, dead)
			}
			if k%10 != 0 {
				t.Fatalf("acked %d: not whole batches", k)
			}
		} else if k != 25 {
			t.Fatalf("TryPublish: acked %d of 25 without an error", k)
		}
	}
	// Only the first try on the dead nsqd can fail: it is marked down then.
	if failures > 1 {
		t.Fatalf("%d calls failed, want at most 1", failures)
	}
	if st := p.Stats(); st[0].Up || !st[1].Up {
		t.Fatalf("stats %+v, want %s down and the live nsqd up", st, dead)
	}
	if p.gaveUp.Get() != 0 || p.retries.Get() != 0 {
		t.Fatalf("gave up %d, retries %d: TryPublish does neither", p.gaveUp.Get(), p.retries.Get())
	}
	col := newCollector(t, []string{node.TCPAddr}, "try")
	col.waitTotal(t, len(acked), 10*time.Second)
	for _, b := range acked {
		if n := col.count("try", b); n != 1 {
			t.Fatalf("acknowledged body %q arrived %d times", b, n)
		}
	}
	col.mu.Lock()
	total := col.total
	col.mu.Unlock()
	if total != len(acked) {
		t.Fatalf("nsqd delivered %d messages, %d were acknowledged", total, len(acked))
	}

	// Every nsqd down: the first call fails on the dial, the next ones
	// return ErrNoNSQD without trying.
	q := newTestPublisher(t, Options{Addrs: []string{dead}, Backoff: backoff, MaxBackoff: backoff})
	if k, err := q.TryPublish("try", [][]byte{[]byte("x")}); k != 0 || err == nil || errors.Is(err, ErrNoNSQD) {
		t.Fatalf("first try on a dead nsqd: acked %d, err %v; want 0 and the dial error", k, err)
	}
	for range 3 {
		if k, err := q.TryPublish("try", [][]byte{[]byte("x")}); k != 0 || !errors.Is(err, ErrNoNSQD) {
			t.Fatalf("every nsqd down: acked %d, err %v; want 0 and ErrNoNSQD", k, err)
		}
	}
}

// An nsqd that accepts the connection and never answers: TryPublish gives
// up after Options.Timeout, although go-nsq's connect (IDENTIFY) waits for
// its 10 s read timeout. (It took 10 s: the timer started after the
// connect.)
func TestTimeoutCoversConnect(t *testing.T) {
	hung, unhang := nsqdnodetest.HungAddr(t)
	defer unhang() // before the Publisher's Stop, which waits for the stuck connect
	p := newTestPublisher(t, Options{Addrs: []string{hung}, Timeout: 300 * time.Millisecond})
	start := time.Now()
	k, err := p.TryPublish("hung", [][]byte{[]byte("x")})
	d := time.Since(start)
	if k != 0 || !errors.Is(err, ErrTimeout) {
		t.Fatalf("TryPublish to a hung nsqd: acked %d, err %v; want 0 and ErrTimeout", k, err)
	}
	if d > 5*time.Second {
		t.Fatalf("TryPublish with Timeout 300ms took %v", d)
	}
	t.Logf("TryPublish gave up after %v", d)
}

// nsqd restarts while every connection is idle, so no publish fails to
// tell egress: the next publish must see the old connection closed,
// dial a new one and reach the new nsqd, with nothing lost.
func TestIdleConnectionsAcrossNSQDRestart(t *testing.T) {
	dir := t.TempDir()
	node, err := nsqdnode.Start(nsqdnode.Config{DataPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := node.TCPAddr
	p := newTestPublisher(t, Options{Addrs: []string{addr}, ConnsPerAddr: 1})
	if _, err := p.Publish("idle", [][]byte{[]byte("before")}); err != nil {
		t.Fatal(err)
	}
	node.Exit()
	time.Sleep(200 * time.Millisecond) // the idle connection sees nsqd go
	node, err = nsqdnode.Start(nsqdnode.Config{DataPath: dir, TCPAddress: addr})
	if err != nil {
		t.Fatalf("restart nsqd on %s: %v", addr, err)
	}
	t.Cleanup(node.Exit)
	for i := range 3 {
		if k, err := p.Publish("idle", [][]byte{fmt.Appendf(nil, "after-%d", i)}); err != nil || k != 1 {
			t.Fatalf("publish %d after the restart: acked %d, %v", i, k, err)
		}
	}
	col := newCollector(t, []string{addr}, "idle")
	col.waitTotal(t, 4, 10*time.Second)
}
