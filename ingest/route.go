package ingest

import (
	"bytes"
	"html"
	gopath "path"

	"github.com/valyala/fasthttp"
)

// route is one of deferd's HTTP endpoints.
type route struct {
	path string
	get  bool // GET; else POST
	h    func(*Server, *fasthttp.RequestCtx)
}

var routes = [...]route{
	{"/pub", false, (*Server).pub},
	{"/mpub", false, (*Server).mpub},
	{"/cancel", false, sameOriginOnly((*Server).cancel)}, // csrf.go
	{"/ping", true, (*Server).ping},
	{"/info", true, (*Server).info},
	{"/stats", true, (*Server).stats},
	{"/metrics", true, (*Server).metrics},
	{"/message", true, (*Server).message}, // operator.go
	{"/pending", true, (*Server).pending},
	{"/reschedule", false, sameOriginOnly((*Server).reschedule)},
}

func findRoute(path []byte) *route {
	switch string(path) {
	case "/pub":
		return &routes[0]
	case "/mpub":
		return &routes[1]
	case "/cancel":
		return &routes[2]
	case "/ping":
		return &routes[3]
	case "/info":
		return &routes[4]
	case "/stats":
		return &routes[5]
	case "/metrics":
		return &routes[6]
	case "/message":
		return &routes[7]
	case "/pending":
		return &routes[8]
	case "/reschedule":
		return &routes[9]
	}
	return nil
}

// handle routes a request the way nsqd's httprouter does for deferd's
// routes: the route's handler; else a redirect to the route a trailing
// slash, an unclean path or letter case missed (301 for GET, 307 for POST);
// 200 with Allow for OPTIONS; 405 with Allow for another method; 404.
func (s *Server) handle(ctx *fasthttp.RequestCtx) {
	defer func() {
		if p := recover(); p != nil {
			s.logf("ingest: panic in HTTP handler: %v", p)
			ctx.Response.Reset()
			s.writeError(ctx, errInternal)
		}
	}()
	if !ctx.Request.Header.IsHTTP11() {
		ctx.Response.Header.SetProtocol(http10) // as Go's net/http answers HTTP/1.0
	}
	// Route on the path as sent, decoded but not cleaned, as Go's
	// net/http gives it to httprouter.
	path := ctx.URI().PathOriginal()
	if bytes.IndexByte(path, '%') >= 0 {
		p, ok := unescapePath(path)
		if !ok {
			// Go's server rejects the request line.
			ctx.SetConnectionClose()
			ctx.Error("400 Bad Request", fasthttp.StatusBadRequest)
			return
		}
		path = p
	}
	if s.ui && ctx.IsGet() && s.serveUI(ctx, path) { // ui.go
		s.lingerIfUnread(ctx, 0, false)
		return
	}
	r := findRoute(path)
	isGet, isPost := ctx.IsGet(), ctx.IsPost()
	// Fast path. The majority of calls must go here.
	if r != nil && (r.get && isGet || !r.get && isPost) {
		r.h(s, ctx)
		if r.get {
			s.lingerIfUnread(ctx, 0, false)
		}
		return
	}
	defer s.lingerIfUnread(ctx, 0, false)
	if (isGet || isPost) && string(path) != "/" {
		if to := fixPath(path, isGet); to != "" {
			redirect(ctx, to, isGet)
			return
		}
	}
	switch {
	case r == nil:
		s.writeError(ctx, errNotFound)
	case bytes.Equal(ctx.Method(), methodOptions):
		ctx.Response.Header.SetBytesKV(hdrAllow, allowOf(r))
		ctx.Response.Header.SetNoDefaultContentType(true)
	default:
		ctx.Response.Header.SetBytesKV(hdrAllow, allowOf(r))
		s.writeError(ctx, errMethodNotAllowed)
	}
}

func allowOf(r *route) []byte {
	if r.get {
		return allowGET
	}
	return allowPOST
}

// unescapePath percent-decodes a path as net/url does ('+' stays).
func unescapePath(p []byte) ([]byte, bool) {
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			out = append(out, p[i])
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return nil, false
		}
		out = append(out, unhex(p[i+1])<<4|unhex(p[i+2]))
		i += 2
	}
	return out, true
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// fixPath returns the route of the method that httprouter's
// RedirectTrailingSlash or RedirectFixedPath would send path to: path
// cleaned, without a trailing slash, compared ignoring ASCII case; "" if
// none.
func fixPath(p []byte, get bool) string {
	c := gopath.Clean("/" + string(p))
	for i := range routes {
		if routes[i].get == get && asciiEqualFold(c, routes[i].path) {
			return routes[i].path
		}
	}
	return ""
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// redirect answers as httprouter does through http.Redirect: Location is
// the route plus the request's raw query; GET gets 301 and a short HTML
// body, other methods 307 and no body.
func redirect(ctx *fasthttp.RequestCtx, to string, get bool) {
	uri := ctx.Request.Header.RequestURI()
	loc := []byte(to)
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		loc = append(loc, uri[i:]...)
	}
	var esc []byte
	for _, c := range loc {
		if c >= 0x80 {
			esc = append(esc, '%', "0123456789abcdef"[c>>4], "0123456789abcdef"[c&15])
		} else {
			esc = append(esc, c)
		}
	}
	ctx.Response.Header.SetBytesV("Location", esc)
	if !get {
		ctx.SetStatusCode(fasthttp.StatusTemporaryRedirect)
		ctx.Response.Header.SetNoDefaultContentType(true)
		return
	}
	ctx.SetStatusCode(fasthttp.StatusMovedPermanently)
	ctx.SetContentType("text/html; charset=utf-8")
	ctx.SetBodyString("<a href=\"" + html.EscapeString(string(loc)) + "\">Moved Permanently</a>.\n\n")
}
