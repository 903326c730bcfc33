package nsqdnodetest

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nsqio/nsq/nsqlookupd"

	"github.com/deferd/deferd/internal/nsqdnode"
)

// Lookupd is a real in-process nsqlookupd (v1.3.0) on free loopback ports.
type Lookupd struct {
	TCPAddr, HTTPAddr string
	L                 *nsqlookupd.NSQLookupd
}

// StartLookupd starts an nsqlookupd that tb.Cleanup stops. Start it before
// the nsqds that register with it, so that it is stopped after them.
func StartLookupd(tb testing.TB) *Lookupd {
	tb.Helper()
	o := nsqlookupd.NewOptions()
	o.TCPAddress = "127.0.0.1:0"
	o.HTTPAddress = "127.0.0.1:0"
	o.BroadcastAddress = "127.0.0.1"
	o.Logger = log.New(io.Discard, "", 0)
	if err := o.LogLevel.Set("warn"); err != nil {
		tb.Fatal(err)
	}
	l, err := nsqlookupd.New(o)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := l.Main(); err != nil {
			tb.Logf("nsqlookupd: %v", err)
		}
	}()
	tl := &Lookupd{TCPAddr: l.RealTCPAddr().String(), HTTPAddr: l.RealHTTPAddr().String(), L: l}
	// Exit before Main started its servers would race with it (as nsqd's):
	// wait until it answers.
	waitFor(tb, 10*time.Second, "nsqlookupd /ping", func() bool {
		resp, err := http.Get("http://" + tl.HTTPAddr + "/ping")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	tb.Cleanup(func() {
		l.Exit()
		<-done
	})
	return tl
}

// StartNSQD starts an nsqd (as Start) that registers with l, broadcasting
// 127.0.0.1, with its data in dir ("": a temp dir).
func (l *Lookupd) StartNSQD(tb testing.TB, dir string) *nsqdnode.Node {
	tb.Helper()
	return Start(tb, nsqdnode.Config{
		DataPath:            dir,
		LookupdTCPAddresses: []string{l.TCPAddr},
		BroadcastAddress:    "127.0.0.1",
	})
}

// Nodes returns the broadcast_address:tcp_port of what /nodes lists,
// sorted.
func (l *Lookupd) Nodes(tb testing.TB) []string {
	tb.Helper()
	resp, err := http.Get("http://" + l.HTTPAddr + "/nodes")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var nr struct {
		Producers []struct {
			BroadcastAddress string `json:"broadcast_address"`
			TCPPort          int    `json:"tcp_port"`
		} `json:"producers"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&nr); err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, p := range nr.Producers {
		out = append(out, p.BroadcastAddress+":"+strconv.Itoa(p.TCPPort))
	}
	slices.Sort(out)
	return out
}

// Lists reports whether /nodes lists tcpAddr.
func (l *Lookupd) Lists(tb testing.TB, tcpAddr string) bool {
	tb.Helper()
	return slices.Contains(l.Nodes(tb), tcpAddr)
}

// TopicProducers is how many producers /lookup?topic= lists for topic
// (0 for a topic it does not know); -1 when it gave no answer that
// decodes.
func (l *Lookupd) TopicProducers(topic string) int {
	resp, err := http.Get("http://" + l.HTTPAddr + "/lookup?topic=" + topic)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var lr struct {
		Producers []json.RawMessage `json:"producers"`
	}
	if json.NewDecoder(resp.Body).Decode(&lr) != nil {
		return -1
	}
	return len(lr.Producers)
}

// Forget does what nsqlookupd does when an nsqd's connection to it
// closes: it unregisters the nsqd at tcpAddr (found by its id in
// /debug). An in-process nsqd needs this after Exit: nsqd v1.3.0's Exit
// leaves its connection to nsqlookupd open (lookupLoop does not close its
// peers), which the end of a real nsqd process closes.
func (l *Lookupd) Forget(tb testing.TB, tcpAddr string) {
	tb.Helper()
	resp, err := http.Get("http://" + l.HTTPAddr + "/debug")
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	var debug map[string][]struct {
		ID               string `json:"id"`
		BroadcastAddress string `json:"broadcast_address"`
		TCPPort          int    `json:"tcp_port"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&debug); err != nil {
		tb.Fatal(err)
	}
	ids := make(map[string]bool)
	for _, ps := range debug {
		for _, p := range ps {
			if p.BroadcastAddress+":"+strconv.Itoa(p.TCPPort) == tcpAddr {
				ids[p.ID] = true
			}
		}
	}
	if len(ids) == 0 {
		tb.Fatalf("nsqlookupd does not know %s", tcpAddr)
	}
	for id := range ids {
		for _, r := range l.L.DB.LookupRegistrations(id) {
			l.L.DB.RemoveProducer(r, id)
		}
	}
}

// CreateTopic creates topic and its channel on n (over its HTTP API), so
// that they exist before anything is published (and nsqlookupd lists n
// for the topic).
func CreateTopic(tb testing.TB, n *nsqdnode.Node, topic, channel string) {
	tb.Helper()
	for _, pq := range []string{"/topic/create?topic=" + topic, "/channel/create?topic=" + topic + "&channel=" + channel} {
		resp, err := http.Post("http://"+n.HTTPAddr+pq, "", nil)
		if err != nil {
			tb.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			tb.Fatalf("nsqd %s: %d", pq, resp.StatusCode)
		}
	}
}

func waitFor(tb testing.TB, within time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
