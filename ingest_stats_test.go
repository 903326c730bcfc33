package deferd_test

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd"
	"github.com/deferd/deferd/ingest"
)

// /stats counts each protocol's requests, messages, bytes and errors on
// its own: publishes over HTTP and over nsqd's TCP protocol (and one bad
// topic on each) appear under ingest.http and ingest.tcp, as Stats
// returns them.
func TestStatsIngestByProtocol(t *testing.T) {
	opts := deferd.NewOptions()
	opts.DataPath = t.TempDir()
	opts.HTTPAddress = "127.0.0.1:0"
	opts.TCPAddress = "127.0.0.1:0"
	opts.Logf = t.Logf
	opts.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) { return len(bodies), nil })
	s, err := deferd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	hs, err := s.ListenHTTP()
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve()
	defer hs.Shutdown()
	ts, err := s.ListenTCP()
	if err != nil {
		t.Fatal(err)
	}
	go ts.Serve()
	defer ts.Shutdown()

	base := "http://" + hs.Addr()
	post := func(path, body string, want int) {
		t.Helper()
		resp, err := http.Post(base+path, "application/octet-stream", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("POST %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	post("/pub?topic=s", "hello", 200)             // 5 bytes
	post("/pub?topic=s&defer=60000", "later", 200) // 5
	post("/mpub?topic=s", "a\nbb\nccc", 200)       // 6
	post("/pub?topic=bad!topic", "x", 400)         // BAD_TOPIC
	post("/cancel?id=nothing-here", "", 404)       // NOT_FOUND

	p, err := nsq.NewProducer(ts.Addr(), nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	defer p.Stop()
	if err := p.Publish("s", []byte("now")); err != nil { // 3 bytes
		t.Fatal(err)
	}
	if err := p.MultiPublish("s", [][]byte{[]byte("m1"), []byte("m22")}); err != nil { // 5
		t.Fatal(err)
	}
	if err := p.DeferredPublish("s", time.Minute, []byte("dpub")); err != nil { // 4
		t.Fatal(err)
	}
	// A bad topic, by hand (go-nsq checks names before sending): nsqd's
	// E_BAD_TOPIC frame, then the connection closes.
	c, err := net.Dial("tcp", ts.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("  V2PUB bad!topic\n\x00\x00\x00\x01x"))
	r := bufio.NewReader(c)
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, binary.BigEndian.Uint32(hdr[:4])-4)
	if _, err := io.ReadFull(r, frame); err != nil || !strings.HasPrefix(string(frame), "E_BAD_TOPIC") {
		t.Fatalf("bad topic over TCP: %q, %v", frame, err)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("after E_BAD_TOPIC: %v, want EOF", err)
	}

	resp, err := http.Get(base + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Ingest map[string]ingest.IngestStats `json:"ingest"`
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	h, tc := st.Ingest["http"], st.Ingest["tcp"]
	if len(st.Ingest) != 2 {
		t.Fatalf("/stats ingest: %+v, want http and tcp", st.Ingest)
	}
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"http /pub", h.Requests["/pub"], 3},
		{"http /mpub", h.Requests["/mpub"], 1},
		{"http /cancel", h.Requests["/cancel"], 1},
		{"http messages", h.Messages, 5},
		{"http bytes", h.MessageBytes, 16},
		{"http 400 INVALID_TOPIC", h.Errors["400 INVALID_TOPIC"], 1},
		{"http 404 NOT_FOUND", h.Errors["404 NOT_FOUND"], 1},
		{"http error kinds", uint64(len(h.Errors)), 2},
		{"tcp PUB", tc.Requests["PUB"], 2},
		{"tcp MPUB", tc.Requests["MPUB"], 1},
		{"tcp DPUB", tc.Requests["DPUB"], 1},
		{"tcp SUB", tc.Requests["SUB"], 0},
		{"tcp messages", tc.Messages, 4},
		{"tcp bytes", tc.MessageBytes, 12},
		{"tcp E_BAD_TOPIC", tc.Errors["E_BAD_TOPIC"], 1},
		{"tcp error kinds", uint64(len(tc.Errors)), 1},
		{"tcp connections accepted", tc.Connections.Accepted, 2},
	} {
		if c.got != c.want {
			t.Errorf("%s: %d, want %d", c.name, c.got, c.want)
		}
	}
	if h.Connections != nil {
		t.Errorf("http connections: %+v, want none", h.Connections)
	}
	if got := s.Stats().Ingest; got["tcp"].Messages != 4 || got["http"].Messages != 5 {
		t.Errorf("Stats().Ingest: %+v", got)
	}
}
