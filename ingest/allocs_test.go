//go:build !race

package ingest

import (
	"bytes"
	"testing"

	"github.com/valyala/fasthttp"
)

// The /pub and /mpub handlers allocate nothing per request once warm.
func TestHandlerAllocs(t *testing.T) {
	s := handlerServer(t)
	msg := bytes.Repeat([]byte("x"), 500)
	for _, c := range []struct {
		target string
		body   []byte
	}{
		{"/pub?topic=allocs&defer=1000", msg},
		{"/mpub?topic=allocs", bytes.Repeat([]byte("line\n"), 100)},
		{"/mpub?topic=allocs&binary=true&at=1", frame(3, msg, msg, msg)},
	} {
		var ctx fasthttp.RequestCtx
		serveOnce(s, &ctx, c.target, c.body)
		if n := testing.AllocsPerRun(1000, func() { serveOnce(s, &ctx, c.target, c.body) }); n != 0 {
			t.Errorf("%s: %.1f allocs per request", c.target, n)
		}
	}
}
