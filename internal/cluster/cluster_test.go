package cluster

import (
	"hash/fnv"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

func TestShardOfIsFNV1a32Mod256(t *testing.T) {
	for i := range 1000 {
		id := "id-" + strconv.Itoa(i)
		h := fnv.New32a()
		h.Write([]byte(id))
		if got, want := ShardOf(id), int(h.Sum32()%256); got != want {
			t.Fatalf("ShardOf(%q) = %d, want %d", id, got, want)
		}
	}
}

func TestMap(t *testing.T) {
	m, err := NewMap([]string{"127.0.0.1:1,127.0.0.1:2", "127.0.0.1:3"}, "127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	if m.Self() != 1 || len(m.Peers()) != 3 {
		t.Fatalf("self %d peers %v", m.Self(), m.Peers())
	}
	total := 0
	for i := range 3 {
		for _, s := range m.ShardsOf(i) {
			if m.OwnerOfShard(s) != i {
				t.Fatalf("shard %d listed for %d, owned by %d", s, i, m.OwnerOfShard(s))
			}
			total++
		}
	}
	if total != Shards {
		t.Fatalf("%d shards in all", total)
	}
	if m.Owner("x") != ShardOf("x")%3 {
		t.Fatal("Owner is not shard % peers")
	}
	m2, _ := NewMap([]string{"127.0.0.1:3", "127.0.0.1:1", "127.0.0.1:2"}, "127.0.0.1:2")
	if m2.Fingerprint() == m.Fingerprint() {
		t.Fatal("another order, same fingerprint")
	}
	for _, bad := range [][]string{nil, {""}, {"127.0.0.1:1,127.0.0.1:1"}, {"nohost"}, {"127.0.0.1:0"}} {
		if _, err := NewMap(bad, "127.0.0.1:1"); err == nil {
			t.Errorf("NewMap(%q) accepted", bad)
		}
	}
	if _, err := NewMap([]string{"127.0.0.1:1"}, "127.0.0.1:9"); err == nil {
		t.Error("self not in peers accepted")
	}
}

// The Demux routes by the first head's PeerHeader: none to Public, ours
// to Peer, another to 503 PEER_LIST_MISMATCH; a Forwarder to a closed
// port gets an error, to a live one the answer as it came.
func TestDemuxAndForwarder(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	self := "127.0.0.1:1"
	peers := []string{self, ln.Addr().String(), deadAddr}
	m, err := NewMap(peers, self)
	if err != nil {
		t.Fatal(err)
	}
	d := NewDemux(ln, m.Fingerprint(), time.Second, t.Logf)
	serve := func(l net.Listener, name string) {
		go fasthttp.Serve(l, func(ctx *fasthttp.RequestCtx) {
			ctx.SetContentType("text/x-" + name)
			ctx.SetStatusCode(201)
			ctx.SetBodyString(name + " " + string(ctx.Path()))
		})
	}
	serve(d.Public(), "public")
	serve(d.Peer(), "peer")
	defer d.Public().Close()

	resp, err := fasthttpGet("http://" + ln.Addr().String() + "/x")
	if err != nil || resp != "public /x" {
		t.Fatalf("client request: %q %v", resp, err)
	}
	fw, err := NewForwarder(m, ForwarderOptions{Conns: 4, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r, err := fw.Do(1, "POST", "/pub?topic=t", []byte("b"))
	if err != nil || r.Status != 201 || string(r.Body) != "peer /pub" || r.ContentType != "text/x-peer" {
		t.Fatalf("forwarded: %+v %v", r, err)
	}
	if _, err := fw.Do(2, "GET", "/x", nil); err == nil {
		t.Fatal("forward to a closed port: no error")
	}
	if _, err := fw.Do(0, "GET", "/x", nil); err != ErrSelf {
		t.Fatalf("forward to self: %v", err)
	}
	st := fw.States(7)
	if !st[0].Self || st[0].Pending != 7 || !st[1].Reachable || st[2].Reachable || st[2].LastError == "" {
		t.Fatalf("states %+v", st)
	}

	// Another peer list: refused.
	other, _ := NewMap(append(peers, "127.0.0.1:4"), self)
	fw2, _ := NewForwarder(other, ForwarderOptions{Conns: 1, Timeout: time.Second})
	r, err = fw2.Do(1, "GET", "/stats", nil)
	if err != nil || r.Status != 503 || string(r.Body) != MismatchBody || !strings.HasPrefix(r.ContentType, "application/json") {
		t.Fatalf("mismatch: %+v %v", r, err)
	}
	if d.Mismatches.Load() != 1 {
		t.Fatalf("mismatches %d", d.Mismatches.Load())
	}
}

func fasthttpGet(url string) (string, error) {
	c, err := net.Dial("tcp", strings.TrimPrefix(strings.Split(url, "/x")[0], "http://"))
	if err != nil {
		return "", err
	}
	defer c.Close()
	io.WriteString(c, "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
	b, _ := io.ReadAll(c)
	s := string(b)
	return s[strings.Index(s, "\r\n\r\n")+4:], nil
}

// A peer that restarts leaves the Forwarder's idle keep-alive connections
// to its old process dead: the first requests after the restart must still
// be answered (each stale connection is retried past), not fail as if the
// owner were down.
func TestForwarderSurvivesPeerRestart(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	handler := func(ctx *fasthttp.RequestCtx) {
		time.Sleep(20 * time.Millisecond) // concurrent requests need separate connections
		ctx.SetBodyString("ok")
	}
	srv := &fasthttp.Server{Handler: handler}
	go srv.Serve(ln)
	m, err := NewMap([]string{"127.0.0.1:1", addr}, "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	const conns = 8
	fw, err := NewForwarder(m, ForwarderOptions{Conns: conns, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	burst := func() (failed int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if r, err := fw.Do(1, "POST", "/pub?topic=t&id=x", []byte("b")); err != nil || r.Status != 200 {
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		return failed
	}
	if n := burst(); n != 0 {
		t.Fatalf("%d of %d failed before the restart", n, conns)
	}
	srv.Shutdown() // closes the idle connections the Forwarder keeps
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &fasthttp.Server{Handler: handler}
	go srv2.Serve(ln2)
	defer srv2.Shutdown()
	if n := burst(); n != 0 {
		t.Fatalf("%d of %d forwarded requests failed right after the peer restarted", n, conns)
	}
}
