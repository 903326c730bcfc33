package nsqdnode_test

import (
	"encoding/json"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
)

// A message published over nsqd's HTTP API reaches a go-nsq consumer: the
// node is a real, working nsqd.
func TestStartPublishConsume(t *testing.T) {
	n := nsqdnodetest.Start(t, nsqdnode.Config{})
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

// nsqdnode.MemQueueNone is nsqd's --mem-queue-size=0: published messages go to the
// disk queue; the default keeps them in memory.
func TestMemQueueNone(t *testing.T) {
	for _, c := range []struct {
		size        int64
		wantBackend int64
	}{{0, 0}, {nsqdnode.MemQueueNone, 3}} {
		n := nsqdnodetest.Start(t, nsqdnode.Config{MemQueueSize: c.size})
		for range 3 {
			resp, err := http.Post("http://"+n.HTTPAddr+"/pub?topic=t", "application/octet-stream", strings.NewReader("m"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
		var st struct {
			Topics []struct {
				Depth        int64 `json:"depth"`
				BackendDepth int64 `json:"backend_depth"`
			} `json:"topics"`
		}
		resp, err := http.Get("http://" + n.HTTPAddr + "/stats?format=json&topic=t")
		if err != nil {
			t.Fatal(err)
		}
		err = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		if err != nil || len(st.Topics) != 1 {
			t.Fatalf("stats: %v, %+v", err, st)
		}
		if got := st.Topics[0]; got.Depth != 3 || got.BackendDepth != c.wantBackend {
			t.Fatalf("MemQueueSize %d: depth %d, on disk %d; want 3, %d", c.size, got.Depth, got.BackendDepth, c.wantBackend)
		}
	}
}
