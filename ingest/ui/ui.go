// Package ui is deferd's status page: static files (index.html, app.js,
// style.css) embedded in the binary, with no build step and nothing
// fetched from elsewhere. The page reads GET /stats every 2 s (and GET
// /info once), keeps a ring of those samples in the browser, and draws
// its charts itself (inline SVG); it looks messages up with GET /message,
// lists the next due with GET /pending, and cancels or reschedules with
// POST /cancel and POST /reschedule, sending the header X-Deferd-UI: 1
// that ingest's cross-origin check asks of browsers.
//
// The package knows nothing of HTTP servers: ingest serves what Lookup
// returns.
package ui

import (
	"embed"
	"io/fs"
	"strings"
)

//go:embed index.html app.js style.css
var files embed.FS

// Files is the page's files: index.html, app.js and style.css.
var Files fs.FS = files

// File is one file as served: its bytes and Content-Type.
type File struct {
	Body        []byte
	ContentType string
}

// served maps request paths to files: "/" is index.html, the others are
// under "/ui/".
var served = map[string]File{}

func init() {
	for path, name := range map[string]string{
		"/":             "index.html",
		"/ui/app.js":    "app.js",
		"/ui/style.css": "style.css",
	} {
		b, err := fs.ReadFile(files, name)
		if err != nil {
			panic("ui: " + err.Error()) // go:embed guarantees it
		}
		served[path] = File{Body: b, ContentType: contentType(name)}
	}
}

func contentType(name string) string {
	switch {
	case strings.HasSuffix(name, ".html"):
		return "text/html; charset=utf-8"
	case strings.HasSuffix(name, ".js"):
		return "text/javascript; charset=utf-8"
	}
	return "text/css; charset=utf-8"
}

// Lookup returns the file served at a request path ("/", "/ui/app.js",
// "/ui/style.css"), and false for any other path. The bytes are shared:
// never modify them.
func Lookup(path string) (File, bool) {
	f, ok := served[path]
	return f, ok
}

// SecurityHeaders are the response headers every file is served with:
// a Content-Security-Policy allowing only this origin's script, style and
// fetches and no framing (so no other site can overlay the page's
// buttons), the same as X-Frame-Options for older browsers, no MIME
// sniffing, no referrer, and no caching (a new deferd serves its own page).
var SecurityHeaders = [][2]string{
	{"Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"},
	{"X-Frame-Options", "DENY"},
	{"X-Content-Type-Options", "nosniff"},
	{"Referrer-Policy", "no-referrer"},
	{"Cache-Control", "no-cache"},
}
