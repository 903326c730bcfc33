package ingest

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/valyala/fasthttp"
)

// nopBackend accepts everything and keeps nothing.
type nopBackend struct{}

func (nopBackend) Publish(*PubRequest) error { return nil }
func (nopBackend) Cancel(string) error       { return nil }
func (nopBackend) Info() any                 { return nil }
func (nopBackend) Stats() any                { return nil }
func (nopBackend) WriteMetrics(io.Writer)    {}

// benchHTTP posts body to target over loopback keep-alive connections from
// 8 goroutines per P and reports msgs/request as msg/s.
func benchHTTP(b *testing.B, target string, body []byte, msgs int) {
	srv := startServer(b, Options{Logf: func(string, ...any) {}}, nopBackend{})
	hc := &fasthttp.HostClient{Addr: srv.Addr(), MaxConns: 256}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		req, resp := fasthttp.AcquireRequest(), fasthttp.AcquireResponse()
		defer fasthttp.ReleaseRequest(req)
		defer fasthttp.ReleaseResponse(resp)
		req.SetRequestURI("http://" + srv.Addr() + target)
		req.Header.SetMethod("POST")
		req.SetBodyRaw(body)
		for pb.Next() {
			if err := hc.Do(req, resp); err != nil {
				b.Error(err)
				return
			}
			if resp.StatusCode() != 200 {
				b.Errorf("status %d: %s", resp.StatusCode(), resp.Body())
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)*float64(msgs)/b.Elapsed().Seconds(), "msg/s")
}

// BenchmarkPubHTTP is single-message /pub of 500 B, client and server in
// one process.
func BenchmarkPubHTTP(b *testing.B) {
	benchHTTP(b, "/pub?topic=bench&defer=1000", bytes.Repeat([]byte("x"), 500), 1)
}

// BenchmarkMpubHTTP is /mpub of 100 x 500 B, text and binary.
func BenchmarkMpubHTTP(b *testing.B) {
	msg := bytes.Repeat([]byte("x"), 500)
	var text, bin [][]byte
	for i := 0; i < 100; i++ {
		text, bin = append(text, msg), append(bin, msg)
	}
	b.Run("text", func(b *testing.B) {
		benchHTTP(b, "/mpub?topic=bench&defer=1000", append(bytes.Join(text, []byte("\n")), '\n'), 100)
	})
	b.Run("binary", func(b *testing.B) {
		benchHTTP(b, "/mpub?topic=bench&binary=true&defer=1000", frame(100, bin...), 100)
	})
}

// BenchmarkHandler is the handler alone, no network.
func BenchmarkHandler(b *testing.B) {
	msg := bytes.Repeat([]byte("x"), 500)
	var msgs [][]byte
	for i := 0; i < 100; i++ {
		msgs = append(msgs, msg)
	}
	for _, c := range []struct {
		name, target string
		body         []byte
	}{
		{"pub", "/pub?topic=bench&defer=1000", msg},
		{"mpub", "/mpub?topic=bench&binary=true", frame(100, msgs...)},
	} {
		b.Run(c.name, func(b *testing.B) {
			s := handlerServer(b)
			b.ReportAllocs()
			b.SetBytes(int64(len(c.body)))
			b.RunParallel(func(pb *testing.PB) {
				var ctx fasthttp.RequestCtx
				for pb.Next() {
					serveOnce(s, &ctx, c.target, c.body)
				}
			})
		})
	}
}

func handlerServer(tb testing.TB) *Server {
	s, err := NewServer(Options{Addr: "127.0.0.1:0", Logf: tb.Logf}, nopBackend{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Shutdown() })
	return s
}

func serveOnce(s *Server, ctx *fasthttp.RequestCtx, target string, body []byte) {
	ctx.Request.Reset()
	ctx.Response.Reset()
	ctx.Request.Header.SetMethod("POST")
	ctx.Request.SetRequestURI(target)
	ctx.Request.SetBodyRaw(body)
	s.handle(ctx)
	if ctx.Response.StatusCode() != 200 {
		panic(fmt.Sprintf("status %d: %s", ctx.Response.StatusCode(), ctx.Response.Body()))
	}
}
