package deferd_test

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd"
)

// Embed the scheduler with deferd's default sink, here a real nsqd in the
// same process: a message published with a delay reaches an nsqd consumer
// once it is due.
func Example_nsqdSink() {
	dir, _ := os.MkdirTemp("", "deferd-example")
	defer os.RemoveAll(dir)

	opts := deferd.NewOptions()
	opts.DataPath = dir
	opts.EmbeddedNSQD = true // or: opts.NSQDTCPAddresses = []string{"127.0.0.1:4150"}
	opts.EmbeddedNSQDTCPAddress, opts.EmbeddedNSQDHTTPAddress = "127.0.0.1:0", "127.0.0.1:0"
	opts.Logf = func(string, ...any) {}
	s, err := deferd.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(5 * time.Second)

	sent := time.Now()
	if err := s.Publish(deferd.Pub{Topic: "billing", Bodies: [][]byte{[]byte("renew")}, Delay: 200 * time.Millisecond}); err != nil {
		log.Fatal(err)
	}

	got := make(chan string, 1)
	c, _ := nsq.NewConsumer("billing", "example", nsq.NewConfig())
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error { got <- string(m.Body); return nil }))
	if err := c.ConnectToNSQD(s.NSQDTCPAddresses()[0]); err != nil {
		log.Fatal(err)
	}
	defer c.Stop()
	body := <-got
	fmt.Println(body, time.Since(sent) >= 200*time.Millisecond)
	// Output: renew true
}

// Embed the scheduler with a function as its sink: the service's own MQ
// client, or, as here, a channel. When the MQ throttles, the service parks
// the message in its local Scheduler, whose sink is that same MQ.
func Example_funcSink() {
	dir, _ := os.MkdirTemp("", "deferd-example")
	defer os.RemoveAll(dir)

	out := make(chan string, 16)
	opts := deferd.NewOptions()
	opts.DataPath = dir
	opts.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		for _, b := range bodies {
			out <- topic + ": " + string(b) // copy: bodies are valid only during the call
		}
		return len(bodies), nil
	})
	opts.Logf = func(string, ...any) {}
	s, err := deferd.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(5 * time.Second)

	s.Publish(deferd.Pub{Topic: "orders", Bodies: [][]byte{[]byte("later")}, Delay: 100 * time.Millisecond})
	s.Publish(deferd.Pub{Topic: "orders", Bodies: [][]byte{[]byte("now")}}) // due now: straight to the sink
	s.Publish(deferd.Pub{Topic: "orders", Bodies: [][]byte{[]byte("at")}, At: time.Now().Add(50 * time.Millisecond), ID: "order-7"})
	err = s.Cancel("order-7")
	fmt.Println("cancel:", err)
	fmt.Println(<-out)
	fmt.Println(<-out)
	// Output:
	// cancel: <nil>
	// orders: now
	// orders: later
}

// Run deferd's nsqd-compatible HTTP API in-process, on a free loopback
// port: producers that POST /pub to nsqd can POST to it unchanged.
func Example_httpAPI() {
	dir, _ := os.MkdirTemp("", "deferd-example")
	defer os.RemoveAll(dir)

	opts := deferd.NewOptions()
	opts.DataPath = dir
	opts.HTTPAddress = "127.0.0.1:0"
	opts.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) { return len(bodies), nil })
	opts.Logf = func(string, ...any) {}
	s, err := deferd.New(opts)
	if err != nil {
		log.Fatal(err)
	}
	srv, err := s.ListenHTTP()
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve()
	defer func() { srv.Shutdown(); s.Close(5 * time.Second) }()

	resp, err := http.Post("http://"+srv.Addr()+"/pub?topic=hello&defer=60000", "text/plain", strings.NewReader("in a minute"))
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	fmt.Println(resp.StatusCode, s.Pending())
	// Output: 200 1
}
