package nsqdnode

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
)

// A message published over nsqd's HTTP API reaches a go-nsq consumer: the
// node is a real, working nsqd.
func TestStartPublishConsume(t *testing.T) {
	n := StartTest(t, Config{})
	resp, err := http.Post("http://"+n.HTTPAddr+"/pub?topic=t", "application/octet-stream", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("pub: status %d", resp.StatusCode)
	}
	got := make(chan string, 1)
	c, err := nsq.NewConsumer("t", "c", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error { got <- string(m.Body); return nil }))
	if err := c.ConnectToNSQD(n.TCPAddr); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	select {
	case b := <-got:
		if b != "hello" {
			t.Fatalf("body %q, want hello", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
}
