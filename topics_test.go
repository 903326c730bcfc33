package deferd_test

import (
	"errors"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd"
)

// startCapped starts a Scheduler with MaxTopics 3 and a sink that takes
// everything, serving HTTP and TCP; it returns the scheduler, the HTTP
// base URL, the TCP address and what the sink got per topic.
func startCapped(t *testing.T) (*deferd.Scheduler, string, string, func(string) int) {
	t.Helper()
	var mu sync.Mutex
	got := map[string]int{}
	o := deferd.NewOptions()
	o.DataPath = t.TempDir()
	o.HTTPAddress, o.TCPAddress = "127.0.0.1:0", "127.0.0.1:0"
	o.MaxTopics = 3
	o.Logf = t.Logf
	o.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		mu.Lock()
		got[topic] += len(bodies)
		mu.Unlock()
		return len(bodies), nil
	})
	s, err := deferd.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(5 * time.Second) })
	hs, err := s.ListenHTTP()
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve()
	t.Cleanup(func() { hs.Shutdown() })
	ts, err := s.ListenTCP()
	if err != nil {
		t.Fatal(err)
	}
	go ts.Serve()
	t.Cleanup(func() { ts.Shutdown() })
	return s, "http://" + hs.Addr(), ts.Addr(), func(topic string) int {
		mu.Lock()
		defer mu.Unlock()
		return got[topic]
	}
}

// Past MaxTopics pending topics a publish to a new topic is refused on
// every front end (library, HTTP /pub and /mpub, TCP PUB, MPUB and DPUB),
// due now or later, and nothing of it reaches the sink; a topic already
// pending still passes, and one whose last message was published frees
// its slot.
func TestMaxTopicsRefusesNewTopics(t *testing.T) {
	s, base, tcpAddr, sunk := startCapped(t)
	body := [][]byte{[]byte("x")}
	for _, p := range []deferd.Pub{
		{Topic: "a", Bodies: body, Delay: time.Hour},
		{Topic: "b", Bodies: body, Delay: time.Hour},
		{Topic: "c", Bodies: body, Delay: 300 * time.Millisecond},
	} {
		if err := s.Publish(p); err != nil {
			t.Fatalf("publish to %s: %v", p.Topic, err)
		}
	}
	for _, p := range []deferd.Pub{{Topic: "d", Bodies: body, Delay: time.Hour}, {Topic: "d", Bodies: body}} {
		if err := s.Publish(p); !errors.Is(err, deferd.ErrTooManyTopics) {
			t.Fatalf("Publish to a 4th topic (delay %v): %v, want ErrTooManyTopics", p.Delay, err)
		}
	}
	if err := s.Publish(deferd.Pub{Topic: "a", Bodies: body}); err != nil {
		t.Fatalf("publish to a pending topic: %v", err)
	}
	for _, path := range []string{"/pub?topic=d", "/pub?topic=d&defer=1000", "/mpub?topic=d"} {
		resp, err := http.Post(base+path, "", strings.NewReader("x"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 503 || string(b) != `{"message":"TOO_MANY_TOPICS"}` {
			t.Fatalf("POST %s: %d %s, want 503 TOO_MANY_TOPICS", path, resp.StatusCode, b)
		}
	}
	// One producer per command: nsqd's answer closes the connection.
	for cmd, pub := range map[string]func(p *nsq.Producer) error{
		"PUB":  func(p *nsq.Producer) error { return p.Publish("d", []byte("x")) },
		"MPUB": func(p *nsq.Producer) error { return p.MultiPublish("d", body) },
		"DPUB": func(p *nsq.Producer) error { return p.DeferredPublish("d", time.Second, []byte("x")) },
	} {
		p, err := nsq.NewProducer(tcpAddr, nsq.NewConfig())
		if err != nil {
			t.Fatal(err)
		}
		p.SetLogger(log.New(io.Discard, "", 0), nsq.LogLevelError)
		want := "E_" + cmd + "_FAILED " + cmd + " failed TOO_MANY_TOPICS"
		err = pub(p)
		p.Stop()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("TCP %s to a 4th topic: %v, want %s", cmd, err, want)
		}
	}
	if n := sunk("d"); n != 0 {
		t.Fatalf("the sink got %d messages of the refused topic", n)
	}

	// c's one message goes out after 300 ms: its slot is free then.
	deadline := time.Now().Add(10 * time.Second)
	for sunk("c") == 0 || s.Publish(deferd.Pub{Topic: "d", Bodies: body, Delay: time.Hour}) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("c published %d, and d still refused", sunk("c"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Publish(deferd.Pub{Topic: "e", Bodies: body, Delay: time.Hour}); !errors.Is(err, deferd.ErrTooManyTopics) {
		t.Fatalf("a new topic with a, b, d pending: %v, want ErrTooManyTopics", err)
	}
}

// With the embedded nsqd its topics count too (it keeps each until it is
// deleted there, at about 0.8 MB of heap each): due-now publishes, which
// deferd never holds pending, fill the cap; deleting a topic in nsqd
// frees its slot.
func TestMaxTopicsCountsEmbeddedNSQDTopics(t *testing.T) {
	o := deferd.NewOptions()
	o.DataPath = t.TempDir()
	o.EmbeddedNSQD = true
	o.EmbeddedNSQDTCPAddress, o.EmbeddedNSQDHTTPAddress = "127.0.0.1:0", "127.0.0.1:0"
	o.MaxTopics = 2
	o.Logf = t.Logf
	s, err := deferd.New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	body := [][]byte{[]byte("x")}
	for _, topic := range []string{"x", "y"} {
		if err := s.Publish(deferd.Pub{Topic: topic, Bodies: body}); err != nil {
			t.Fatal(err)
		}
	}
	if s.Pending() != 0 {
		t.Fatalf("pending %d after due-now publishes, want 0 (they went straight to nsqd)", s.Pending())
	}
	if err := s.Publish(deferd.Pub{Topic: "z", Bodies: body, Delay: time.Hour}); !errors.Is(err, deferd.ErrTooManyTopics) {
		t.Fatalf("a 3rd topic with nsqd holding 2: %v, want ErrTooManyTopics", err)
	}
	if err := s.Publish(deferd.Pub{Topic: "x", Bodies: body, Delay: time.Hour}); err != nil {
		t.Fatalf("publish to a topic nsqd holds: %v", err)
	}
	resp, err := http.Post("http://"+s.EmbeddedNSQDHTTPAddress()+"/topic/delete?topic=y", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("nsqd /topic/delete: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.Publish(deferd.Pub{Topic: "z", Bodies: body, Delay: time.Hour}) != nil {
		if time.Now().After(deadline) {
			t.Fatal("z still refused 10 s after nsqd deleted y")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Without the embedded nsqd the default cap is DefaultMaxTopicsExternal:
// more topics than DefaultMaxTopics are taken, pending at once.
func TestMaxTopicsDefaultExternal(t *testing.T) {
	o := deferd.NewOptions()
	o.DataPath = t.TempDir()
	o.Logf = t.Logf
	o.Sink = deferd.SinkFunc(func(_ string, b [][]byte) (int, error) { return len(b), nil })
	s, err := deferd.New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	body := [][]byte{[]byte("m")}
	for i := range deferd.DefaultMaxTopics + 50 {
		topic := "t" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + string(rune('a'+i/26))
		if err := s.Publish(deferd.Pub{Topic: topic, Bodies: body, Delay: time.Hour}); err != nil {
			t.Fatalf("topic %d (%s): %v", i, topic, err)
		}
	}
	if got := len(s.Stats().PendingByTopic); got != deferd.DefaultMaxTopics+50 {
		t.Errorf("pending topics %d, want %d", got, deferd.DefaultMaxTopics+50)
	}
}
