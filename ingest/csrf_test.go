package ingest

import (
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

// opRecorder is a recorder that is also an OperatorBackend counting
// reschedules.
type opRecorder struct {
	recorder
	rescheduled atomic.Int64
}

func (o *opRecorder) Lookup(id, key string, body bool) (any, error) { return nil, ErrNotFound }
func (o *opRecorder) Pending(topic string, limit int, cursor string) (any, error) {
	return map[string]any{"messages": []any{}, "cursor": ""}, nil
}
func (o *opRecorder) Reschedule(id, key string, dueMs int64) error {
	o.rescheduled.Add(1)
	return nil
}
func (o *opRecorder) CancelKey(key string) error { return ErrNotFound }

// POST /cancel and /reschedule from a browser need the same origin (by
// Sec-Fetch-Site and Origin) and X-Deferd-UI: 1; requests without
// browser headers, and /pub and /mpub with any, are served as before.
// A refused request reaches no backend.
func TestCrossOriginRefused(t *testing.T) {
	b := &opRecorder{}
	s := startServer(t, Options{}, b)
	addr := s.Addr()
	self := "http://" + addr
	other := "http://127.0.0.1:1"
	for _, tc := range []struct {
		name    string
		headers map[string]string
		ok      bool
	}{
		{"no browser headers (curl)", nil, true},
		{"X-Deferd-UI alone", map[string]string{"X-Deferd-UI": "1"}, true},
		{"the page", map[string]string{"Origin": self, "Sec-Fetch-Site": "same-origin", "X-Deferd-UI": "1"}, true},
		{"same origin, old browser (Origin only)", map[string]string{"Origin": self, "X-Deferd-UI": "1"}, true},
		{"user navigation", map[string]string{"Sec-Fetch-Site": "none", "X-Deferd-UI": "1"}, true},
		{"same origin without X-Deferd-UI", map[string]string{"Origin": self, "Sec-Fetch-Site": "same-origin"}, false},
		{"X-Deferd-UI other than 1", map[string]string{"Origin": self, "X-Deferd-UI": "yes"}, false},
		{"another port of 127.0.0.1", map[string]string{"Origin": other, "Sec-Fetch-Site": "same-site", "X-Deferd-UI": "1"}, false},
		{"another origin, Origin only", map[string]string{"Origin": other, "X-Deferd-UI": "1"}, false},
		{"Origin with another host", map[string]string{"Origin": "http://localhost:" + addr[strings.LastIndexByte(addr, ':')+1:], "X-Deferd-UI": "1"}, false},
		{"Origin null", map[string]string{"Origin": "null", "X-Deferd-UI": "1"}, false},
		{"Origin without scheme", map[string]string{"Origin": addr, "X-Deferd-UI": "1"}, false},
		{"cross-site", map[string]string{"Sec-Fetch-Site": "cross-site"}, false},
		{"cross-site with the header", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": self, "X-Deferd-UI": "1"}, false},
		{"same-site", map[string]string{"Sec-Fetch-Site": "same-site", "X-Deferd-UI": "1"}, false},
		{"unknown Sec-Fetch-Site", map[string]string{"Sec-Fetch-Site": "bogus", "X-Deferd-UI": "1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := do(t, "POST", addr, "/pub?topic=t&id=x", []byte("m"), false); r.code != 200 {
				t.Fatalf("/pub: %d %s", r.code, r.body)
			}
			before := b.rescheduled.Load()
			for _, target := range []string{"/cancel?id=x", "/reschedule?id=x&defer=5"} {
				code, body := post(t, addr, target, tc.headers)
				if tc.ok && code != 200 {
					t.Errorf("%s: %d %s, want 200", target, code, body)
				}
				if !tc.ok && (code != 403 || body != `{"message":"CROSS_ORIGIN"}`) {
					t.Errorf("%s: %d %s, want 403 CROSS_ORIGIN", target, code, body)
				}
			}
			b.mu.Lock()
			pending := b.ids["x"]
			b.mu.Unlock()
			if pending == tc.ok {
				t.Errorf("id x pending after /cancel: %v, want %v", pending, !tc.ok)
			}
			want := before
			if tc.ok {
				want++
			}
			if got := b.rescheduled.Load(); got != want {
				t.Errorf("Reschedule called %d times, want %d", got-before, want-before)
			}
			// Producers' endpoints ignore all of it.
			for _, target := range []string{"/pub?topic=t", "/mpub?topic=t"} {
				if code, body := post(t, addr, target, tc.headers); code != 200 || body != "OK" {
					t.Errorf("%s: %d %s, want 200 OK", target, code, body)
				}
			}
			b.mu.Lock()
			delete(b.ids, "x")
			b.mu.Unlock()
		})
	}
	if r := do(t, "GET", addr, "/stats", nil, false); r.code != 200 {
		t.Fatal(r)
	}
}

// post sends a POST with body "m" and headers.
func post(t *testing.T, addr, target string, headers map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", "http://"+addr+target, strings.NewReader("m"))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
