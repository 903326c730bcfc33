package ingest

import (
	"github.com/valyala/fasthttp"

	"github.com/deferd/deferd/ingest/ui"
)

// serveUI answers a GET of the status page's paths (ui.Lookup: "/",
// "/ui/app.js", "/ui/style.css") with the file and ui.SecurityHeaders,
// and reports whether path was one of them. Only called with Options.UI.
func (s *Server) serveUI(ctx *fasthttp.RequestCtx, path []byte) bool {
	f, ok := ui.Lookup(string(path))
	if !ok {
		return false
	}
	for _, h := range ui.SecurityHeaders {
		ctx.Response.Header.Set(h[0], h[1])
	}
	ctx.SetContentType(f.ContentType)
	ctx.Response.SetBodyRaw(f.Body)
	return true
}
