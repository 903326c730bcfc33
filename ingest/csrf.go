package ingest

import (
	"bytes"

	"github.com/valyala/fasthttp"
)

// ErrCrossOrigin answers a state-changing request a browser sent on
// behalf of a page of another origin (see sameOrigin).
var ErrCrossOrigin = &Error{403, "CROSS_ORIGIN"}

// UIHeader is the request header the status page sends with every POST;
// sameOrigin asks it of browsers' state-changing requests.
const UIHeader = "X-Deferd-UI"

var (
	hdrSecFetchSite = []byte("Sec-Fetch-Site")
	hdrOrigin       = []byte("Origin")
	hdrUI           = []byte(UIHeader)
)

// sameOrigin reports whether a state-changing request (POST /cancel, POST
// /reschedule) may go ahead: a request with neither Sec-Fetch-Site nor
// Origin is not a browser's (curl, a client library, a producer) and
// always may. A browser's request may only if
//
//   - Sec-Fetch-Site, when present, is "same-origin" or "none" (the user's
//     own navigation): "same-site" (another port or subdomain of the
//     same site, e.g. another service on 127.0.0.1) and "cross-site" are
//     refused, as is any other value;
//   - Origin, when present, is "scheme://host[:port]" whose host[:port]
//     equals the Host header, byte for byte ("null", and a default port
//     spelled out on one side only, do not match);
//   - and it carries X-Deferd-UI: 1, which no page of another origin can
//     add without a CORS preflight, which deferd never grants.
//
// This is the rule of Go's net/http CrossOriginProtection plus the header.
func sameOrigin(ctx *fasthttp.RequestCtx) bool {
	h := &ctx.Request.Header
	site := h.PeekBytes(hdrSecFetchSite)
	origin := h.PeekBytes(hdrOrigin)
	if site == nil && origin == nil {
		return true
	}
	if site != nil && string(site) != "same-origin" && string(site) != "none" {
		return false
	}
	if origin != nil {
		i := bytes.Index(origin, []byte("://"))
		if i <= 0 || !bytes.Equal(origin[i+3:], h.Host()) || len(h.Host()) == 0 {
			return false
		}
	}
	return string(h.PeekBytes(hdrUI)) == "1"
}

// sameOriginOnly wraps a state-changing handler: a request sameOrigin
// refuses gets 403 {"message":"CROSS_ORIGIN"}, with nothing read or done.
func sameOriginOnly(h func(*Server, *fasthttp.RequestCtx)) func(*Server, *fasthttp.RequestCtx) {
	return func(s *Server, ctx *fasthttp.RequestCtx) {
		if !sameOrigin(ctx) {
			s.writeError(ctx, ErrCrossOrigin)
			s.lingerIfUnread(ctx, 0, false)
			return
		}
		h(s, ctx)
	}
}
