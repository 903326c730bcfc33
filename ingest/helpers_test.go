package ingest

import (
	"bytes"
	"encoding/binary"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// recorder is a Backend that records what it is given, copying the bodies
// as the contract requires. Its methods are safe for concurrent use.
type recorder struct {
	mu   sync.Mutex
	pubs []PubRequest
	ids  map[string]bool
	err  error // returned by Publish and Cancel when set
}

func (r *recorder) Publish(req *PubRequest) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	c := *req
	c.Bodies = make([][]byte, len(req.Bodies))
	for i, b := range req.Bodies {
		c.Bodies[i] = bytes.Clone(b)
	}
	r.pubs = append(r.pubs, c)
	if c.ID != "" {
		if r.ids == nil {
			r.ids = map[string]bool{}
		}
		r.ids[c.ID] = true
	}
	return nil
}

func (r *recorder) Cancel(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	if !r.ids[id] {
		return ErrNotFound
	}
	delete(r.ids, id)
	return nil
}

func (r *recorder) Info() any  { return map[string]any{"version": "test"} }
func (r *recorder) Stats() any { return map[string]any{"pending": 7} }

// WriteMetrics writes one line, so /metrics tests see the backend's part.
func (r *recorder) WriteMetrics(w io.Writer) { io.WriteString(w, "test_backend_metric 1\n") }

// take returns and forgets what was published.
func (r *recorder) take() []PubRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pubs
	r.pubs = nil
	return p
}

// startServer starts a Server on a free loopback port, shut down by
// t.Cleanup.
func startServer(tb testing.TB, opts Options, b Backend) *Server {
	tb.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	s, err := NewServer(opts, b)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	tb.Cleanup(func() {
		// A connection that never carried a request counts as idle only
		// after 5 s (as in net/http), and Shutdown waits for it.
		client.CloseIdleConnections()
		if err := s.Shutdown(); err != nil {
			tb.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("Serve did not return after Shutdown")
		}
	})
	return s
}

// chunkedReader hides its length so net/http sends the body chunked.
type chunkedReader struct{ io.Reader }

type response struct {
	code  int
	body  string
	ctype string
	allow string
	nsqCT string
	loc   string
}

var client = &http.Client{
	Transport:     &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func do(tb testing.TB, method, addr, target string, body []byte, chunked bool) response {
	tb.Helper()
	var r io.Reader = bytes.NewReader(body)
	if chunked {
		r = chunkedReader{bytes.NewReader(body)}
	}
	req, err := http.NewRequest(method, "http://"+addr+target, r)
	if err != nil {
		tb.Fatal(err)
	}
	if body == nil && !chunked {
		req.Body, req.ContentLength = nil, 0
	}
	resp, err := client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return response{resp.StatusCode, string(b), resp.Header.Get("Content-Type"), resp.Header.Get("Allow"), resp.Header.Get("X-NSQ-Content-Type"), resp.Header.Get("Location")}
}

// frame builds a binary /mpub body: count, then size and body per message.
func frame(count int32, msgs ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(count))
	for _, m := range msgs {
		b = binary.BigEndian.AppendUint32(b, uint32(len(m)))
		b = append(b, m...)
	}
	return b
}

func rep(c byte, n int) []byte { return bytes.Repeat([]byte{c}, n) }

func nowMs() int64 { return ceilMs(time.Now().UnixNano()) }
