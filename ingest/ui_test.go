package ingest

import (
	"io/fs"
	"regexp"
	"strings"
	"testing"

	"github.com/deferd/deferd/ingest/ui"
)

// With Options.UI, GET / and /ui/* serve the embedded page with its
// security headers; without it they are 404 NOT_FOUND as in nsqd, and
// other methods on / are unchanged either way.
func TestUIServed(t *testing.T) {
	on := startServer(t, Options{UI: true}, &recorder{})
	off := startServer(t, Options{}, &recorder{})
	for path, ct := range map[string]string{
		"/":             "text/html; charset=utf-8",
		"/?x=1":         "text/html; charset=utf-8",
		"/ui/app.js":    "text/javascript; charset=utf-8",
		"/ui/style.css": "text/css; charset=utf-8",
	} {
		r := do(t, "GET", on.Addr(), path, nil, false)
		if r.code != 200 || r.ctype != ct || len(r.body) < 100 {
			t.Errorf("UI on: GET %s: %d %q (%d bytes), want 200 %q", path, r.code, r.ctype, len(r.body), ct)
		}
		r = do(t, "GET", off.Addr(), path, nil, false)
		if r.code != 404 || r.body != `{"message":"NOT_FOUND"}` {
			t.Errorf("UI off: GET %s: %d %s, want 404 NOT_FOUND", path, r.code, r.body)
		}
	}
	for _, tc := range []struct{ method, path string }{
		{"GET", "/ui/"}, {"GET", "/ui/nope.js"}, {"GET", "/index.html"}, {"GET", "/ui/index.html"},
		{"POST", "/"}, {"POST", "/ui/app.js"}, {"PUT", "/"},
	} {
		for _, s := range []*Server{on, off} {
			if r := do(t, tc.method, s.Addr(), tc.path, nil, false); r.code != 404 || r.body != `{"message":"NOT_FOUND"}` {
				t.Errorf("%s %s: %d %s, want 404 NOT_FOUND", tc.method, tc.path, r.code, r.body)
			}
		}
	}
	resp, err := client.Get("http://" + on.Addr() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, h := range ui.SecurityHeaders {
		if got := resp.Header.Get(h[0]); got != h[1] {
			t.Errorf("%s: %q, want %q", h[0], got, h[1])
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
}

// The page loads nothing from elsewhere: every src and href is one of
// its own files, and no script or style names another host (the SVG
// namespace URI is a name, not a fetch).
func TestUIFilesSelfContained(t *testing.T) {
	html, err := fs.ReadFile(ui.Files, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(string(html), -1)
	if len(refs) != 2 {
		t.Errorf("index.html refs %v, want the script and the style", refs)
	}
	for _, m := range refs {
		if _, ok := ui.Lookup(m[1]); !ok || m[1] == "/" {
			t.Errorf("index.html refers to %q, not one of its files", m[1])
		}
	}
	for _, name := range []string{"index.html", "app.js", "style.css"} {
		b, err := fs.ReadFile(ui.Files, name)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(b), "http://www.w3.org/2000/svg", "")
		if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(`).FindString(text); m != "" {
			t.Errorf("%s names something outside: %q", name, m)
		}
	}
	js, _ := fs.ReadFile(ui.Files, "app.js")
	if strings.Contains(string(js), "innerHTML") || strings.Contains(string(js), "eval(") {
		t.Error("app.js uses innerHTML or eval: deferd's values go in as text only")
	}
	if !strings.Contains(string(js), "'"+UIHeader+"': '1'") {
		t.Errorf("app.js does not send %s: 1", UIHeader)
	}
}
