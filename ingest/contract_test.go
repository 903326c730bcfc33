package ingest

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// Small limits, the same on both sides, keep the size cases cheap.
const (
	testMaxMsg  = 64
	testMaxBody = 256
)

// contractCase is one request. With nsqd set it is sent to a real nsqd and
// to deferd, which must answer identically; otherwise deferd must answer
// code and body. bodies are what the backend must then have been given
// (nil: nothing), due offset d ms from the time of the request.
type contractCase struct {
	name    string
	method  string
	target  string
	body    []byte
	chunked bool
	nsqd    bool
	code    int    // deferd-only cases
	resp    string // deferd-only cases
	bodies  [][]byte
	topic   string
	deferMs int64
	id      string
}

func bs(s ...string) [][]byte {
	out := make([][]byte, len(s))
	for i, x := range s {
		out[i] = []byte(x)
	}
	return out
}

func contractCases() []contractCase {
	long64 := strings.Repeat("a", 64)
	bin := []byte("\x00\n\xff\r\nbinary")
	var cs []contractCase
	same := func(name, method, target string, body []byte, chunked bool, bodies [][]byte) {
		topic := ""
		if bodies != nil {
			topic = "t"
		}
		cs = append(cs, contractCase{name: name, method: method, target: target, body: body, chunked: chunked, nsqd: true, bodies: bodies, topic: topic})
	}
	// /pub
	same("pub ok", "POST", "/pub?topic=t", []byte("hello"), false, bs("hello"))
	same("pub ok chunked", "POST", "/pub?topic=t", []byte("hello"), true, bs("hello"))
	same("pub binary-safe", "POST", "/pub?topic=t", bin, false, [][]byte{bin})
	same("pub newline kept", "POST", "/pub?topic=t", []byte("a\nb\n"), false, bs("a\nb\n"))
	same("pub missing topic", "POST", "/pub", []byte("x"), false, nil)
	same("pub other args only", "POST", "/pub?foo=bar", []byte("x"), false, nil)
	same("pub empty topic", "POST", "/pub?topic=", []byte("x"), false, nil)
	same("pub topic no value", "POST", "/pub?topic", []byte("x"), false, nil)
	sameT := func(name, target, topic string) {
		cs = append(cs, contractCase{name: name, method: "POST", target: target, body: []byte("x"), nsqd: true, bodies: bs("x"), topic: topic})
	}
	sameT("pub topic 64", "/pub?topic="+long64, long64)
	sameT("pub topic charset", "/pub?topic=AZaz09._-", "AZaz09._-")
	same("pub topic 65", "POST", "/pub?topic="+long64+"a", []byte("x"), false, nil)
	same("pub topic space", "POST", "/pub?topic=a%20b", []byte("x"), false, nil)
	same("pub topic slash", "POST", "/pub?topic=a/b", []byte("x"), false, nil)
	same("pub topic colon", "POST", "/pub?topic=a:b", []byte("x"), false, nil)
	same("pub topic plus", "POST", "/pub?topic=a+b", []byte("x"), false, nil)
	sameT("pub topic ephemeral", "/pub?topic=x%23ephemeral", "x#ephemeral")
	same("pub topic only ephemeral", "POST", "/pub?topic=%23ephemeral", []byte("x"), false, nil)
	same("pub topic double ephemeral", "POST", "/pub?topic=x%23ephemeral%23ephemeral", []byte("x"), false, nil)
	same("pub topic bad suffix", "POST", "/pub?topic=x%23eph", []byte("x"), false, nil)
	sameT("pub topic 64 ephemeral", "/pub?topic="+long64[:54]+"%23ephemeral", long64[:54]+"#ephemeral")
	same("pub topic 65 ephemeral", "POST", "/pub?topic="+long64[:55]+"%23ephemeral", []byte("x"), false, nil)
	same("pub first topic wins", "POST", "/pub?topic=t&topic=bad%20name", []byte("x"), false, bs("x"))
	same("pub encoded key", "POST", "/pub?%74opic=t", []byte("x"), false, bs("x"))
	same("pub bad escape", "POST", "/pub?topic=t&x=%zz", []byte("x"), false, nil)
	same("pub short escape", "POST", "/pub?topic=t&x=%2", []byte("x"), false, nil)
	same("pub semicolon", "POST", "/pub?topic=t;x=1", []byte("x"), false, nil)
	same("pub empty body", "POST", "/pub?topic=t", []byte{}, false, nil)
	same("pub no body", "POST", "/pub?topic=t", nil, false, nil)
	same("pub empty body chunked", "POST", "/pub?topic=t", []byte{}, true, nil)
	same("pub empty body beats missing topic", "POST", "/pub", []byte{}, false, nil)
	same("pub msg at max", "POST", "/pub?topic=t", rep('m', testMaxMsg), false, [][]byte{rep('m', testMaxMsg)})
	same("pub msg at max chunked", "POST", "/pub?topic=t", rep('m', testMaxMsg), true, [][]byte{rep('m', testMaxMsg)})
	same("pub msg too big", "POST", "/pub?topic=t", rep('m', testMaxMsg+1), false, nil)
	same("pub msg too big chunked", "POST", "/pub?topic=t", rep('m', testMaxMsg+1), true, nil)
	same("pub msg far too big chunked", "POST", "/pub?topic=t", rep('m', 100000), true, nil)
	same("pub too big beats missing topic", "POST", "/pub", rep('m', testMaxMsg+1), false, nil)
	same("pub too big beats bad query", "POST", "/pub?x=%zz", rep('m', testMaxMsg+1), true, nil)
	same("pub bad query beats topic", "POST", "/pub?x=%zz", []byte("x"), false, nil)
	for _, d := range []string{"-1", "abc", "", "1.5", "1e3", "0x10", "99999999999999999999", "1_000", "%201", "1%20", "--1"} {
		same("pub defer "+d, "POST", "/pub?topic=t&defer="+d, []byte("x"), false, nil)
	}
	same("pub bad defer after bad topic", "POST", "/pub?topic=a%20b&defer=x", []byte("x"), false, nil)
	for _, d := range []int64{0, 1500, 3600000} {
		cs = append(cs, contractCase{name: fmt.Sprint("pub defer ", d), method: "POST", target: fmt.Sprint("/pub?topic=t&defer=", d),
			body: []byte("d"), nsqd: true, bodies: bs("d"), topic: "t", deferMs: d})
	}
	cs = append(cs, contractCase{name: "pub defer +5", method: "POST", target: "/pub?topic=t&defer=%2B5",
		body: []byte("d"), nsqd: true, bodies: bs("d"), topic: "t", deferMs: 5})
	cs = append(cs, contractCase{name: "pub defer -0", method: "POST", target: "/pub?topic=t&defer=-0",
		body: []byte("d"), nsqd: true, bodies: bs("d"), topic: "t"})

	// /mpub text
	same("mpub text", "POST", "/mpub?topic=t", []byte("a\nbb\nccc"), false, bs("a", "bb", "ccc"))
	same("mpub text empty lines", "POST", "/mpub?topic=t", []byte("\na\n\n\nb\n\n"), false, bs("a", "b"))
	same("mpub text crlf kept", "POST", "/mpub?topic=t", []byte("a\r\nb"), false, bs("a\r", "b"))
	same("mpub text chunked", "POST", "/mpub?topic=t", []byte("a\nb\n"), true, bs("a", "b"))
	same("mpub text only newlines", "POST", "/mpub?topic=t", []byte("\n\n\n"), false, nil)
	same("mpub text empty body", "POST", "/mpub?topic=t", []byte{}, false, nil)
	same("mpub text binary=false", "POST", "/mpub?topic=t&binary=false", []byte("a\nb"), false, bs("a", "b"))
	same("mpub text binary=0", "POST", "/mpub?topic=t&binary=0", []byte("a\nb"), false, bs("a", "b"))
	same("mpub text line at max", "POST", "/mpub?topic=t", append(rep('l', testMaxMsg), "\nz"...), false, [][]byte{rep('l', testMaxMsg), []byte("z")})
	same("mpub text line too big", "POST", "/mpub?topic=t", append(rep('l', testMaxMsg+1), "\nz"...), false, nil)
	same("mpub text body at max", "POST", "/mpub?topic=t", bytes.Repeat([]byte("abc\n"), testMaxBody/4), false,
		bytes.Split(bytes.Repeat([]byte("abc\n"), testMaxBody/4)[:testMaxBody-1], []byte("\n")))
	same("mpub text body too big", "POST", "/mpub?topic=t", bytes.Repeat([]byte("abc\n"), testMaxBody/4+1), false, nil)
	same("mpub text body too big chunked", "POST", "/mpub?topic=t", bytes.Repeat([]byte("abc\n"), testMaxBody/4+1), true, nil)
	same("mpub text body far too big chunked", "POST", "/mpub?topic=t", bytes.Repeat([]byte("abc\n"), 10000), true, nil)
	same("mpub text big line before body limit chunked", "POST", "/mpub?topic=t", append(rep('l', 100), bytes.Repeat([]byte("abc\n"), 100)...), true, nil)
	same("mpub text body limit on newline chunked", "POST", "/mpub?topic=t", append(bytes.Repeat([]byte("abc\n"), testMaxBody/4), '\n'), true, nil)
	same("mpub too big beats missing topic", "POST", "/mpub", rep('a', testMaxBody+1), false, nil)
	same("mpub missing topic", "POST", "/mpub", []byte("a"), false, nil)
	same("mpub bad topic", "POST", "/mpub?topic=a*b", []byte("a"), false, nil)
	same("mpub bad topic beats body too big chunked", "POST", "/mpub?topic=a*b", rep('a', testMaxBody+1), true, nil)
	same("mpub bad query", "POST", "/mpub?topic=t&%", []byte("a"), false, nil)

	// /mpub binary
	m1, m2, m3 := []byte("one"), []byte("two\nwith newline\x00"), rep('z', testMaxMsg)
	same("mpub binary", "POST", "/mpub?topic=t&binary=true", frame(3, m1, m2, m3), false, [][]byte{m1, m2, m3})
	same("mpub binary=1", "POST", "/mpub?topic=t&binary=1", frame(2, m1, m2), false, [][]byte{m1, m2})
	same("mpub binary=yes deprecated", "POST", "/mpub?topic=t&binary=yes", frame(1, m2), false, [][]byte{m2})
	same("mpub binary no value", "POST", "/mpub?topic=t&binary", frame(1, m2), false, [][]byte{m2})
	same("mpub binary chunked", "POST", "/mpub?topic=t&binary=true", frame(2, m1, m2), true, [][]byte{m1, m2})
	same("mpub binary count short", "POST", "/mpub?topic=t&binary=true", frame(3, m1, m2), false, nil)
	same("mpub binary count over, trailing ignored", "POST", "/mpub?topic=t&binary=true", frame(1, m1, m2), false, [][]byte{m1})
	same("mpub binary trailing junk", "POST", "/mpub?topic=t&binary=true", append(frame(1, m1), "junk"...), false, [][]byte{m1})
	same("mpub binary truncated body", "POST", "/mpub?topic=t&binary=true", frame(1, m2)[:10], false, nil)
	same("mpub binary truncated size", "POST", "/mpub?topic=t&binary=true", frame(2, m1, m2)[:13], false, nil)
	same("mpub binary count 0", "POST", "/mpub?topic=t&binary=true", frame(0), false, nil)
	same("mpub binary count -1", "POST", "/mpub?topic=t&binary=true", frame(-1, m1), false, nil)
	same("mpub binary count max", "POST", "/mpub?topic=t&binary=true", frame((testMaxBody-4)/5, bs(strings.Split(strings.Repeat("x", (testMaxBody-4)/5), "")...)...), false,
		bs(strings.Split(strings.Repeat("x", (testMaxBody-4)/5), "")...))
	same("mpub binary count too many", "POST", "/mpub?topic=t&binary=true", frame((testMaxBody-4)/5+1, m1), false, nil)
	same("mpub binary empty", "POST", "/mpub?topic=t&binary=true", []byte{}, false, nil)
	same("mpub binary short count", "POST", "/mpub?topic=t&binary=true", []byte{0, 0}, false, nil)
	same("mpub binary zero-length message", "POST", "/mpub?topic=t&binary=true", frame(2, m1, nil), false, nil)
	same("mpub binary negative size", "POST", "/mpub?topic=t&binary=true", []byte{0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 'a'}, false, nil)
	same("mpub binary message too big", "POST", "/mpub?topic=t&binary=true", frame(1, rep('z', testMaxMsg+1)), false, nil)
	same("mpub binary body too big", "POST", "/mpub?topic=t&binary=true", frame(5, m3, m3, m3, m3, m3), false, nil)
	same("mpub binary bad topic first", "POST", "/mpub?binary=true", frame(1, m1), false, nil)

	// routing
	same("GET pub", "GET", "/pub?topic=t", nil, false, nil)
	same("PUT pub", "PUT", "/pub?topic=t", []byte("x"), false, nil)
	same("GET mpub", "GET", "/mpub?topic=t", nil, false, nil)
	same("DELETE mpub", "DELETE", "/mpub?topic=t", nil, false, nil)
	same("unknown GET", "GET", "/nope", nil, false, nil)
	same("unknown POST", "POST", "/nope?topic=t", []byte("x"), false, nil)
	same("root", "GET", "/", nil, false, nil)
	same("ping", "GET", "/ping", nil, false, nil)
	same("POST ping", "POST", "/ping", []byte("x"), false, nil)
	same("OPTIONS pub", "OPTIONS", "/pub", nil, false, nil)
	same("OPTIONS ping", "OPTIONS", "/ping", nil, false, nil)
	same("OPTIONS unknown", "OPTIONS", "/nope", nil, false, nil)
	same("HEAD ping", "HEAD", "/ping", nil, false, nil)
	same("pub trailing slash", "POST", "/pub/?topic=t", []byte("x"), false, nil)
	same("pub upper case", "POST", "/PUB?topic=t&a=%C3%A9", []byte("x"), false, nil)
	same("mpub unclean", "POST", "/x/../MPub/?topic=t", []byte("x"), false, nil)
	same("pub double slash", "POST", "//pub?topic=t", []byte("x"), false, nil)
	same("pub escaped path", "POST", "/p%75b?topic=t", []byte("x"), false, bs("x"))
	same("pub escaped upper", "POST", "/P%55B", []byte("x"), false, nil)
	same("ping trailing slash", "GET", "/ping/?a=<b>", nil, false, nil)
	same("ping upper", "GET", "/PING", nil, false, nil)
	same("GET PUB", "GET", "/PUB", nil, false, nil)
	same("POST Ping", "POST", "/Ping", nil, false, nil)
	same("pub no query mark", "POST", "/pub/?", []byte("x"), false, nil)

	// deferd's extensions
	ext := func(c contractCase) { cs = append(cs, c) }
	year := int64(365 * 24 * 3600 * 1000)
	ext(contractCase{name: "pub defer > 1h", method: "POST", target: "/pub?topic=t&defer=3600001", body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t", deferMs: 3600001})
	ext(contractCase{name: "pub defer one year", method: "POST", target: fmt.Sprint("/pub?topic=t&defer=", year), body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t", deferMs: year})
	ext(contractCase{name: "pub defer over one year", method: "POST", target: fmt.Sprint("/pub?topic=t&defer=", year+1), body: []byte("x"), code: 400, resp: `{"message":"INVALID_DEFER"}`})
	ext(contractCase{name: "pub defer overflow", method: "POST", target: "/pub?topic=t&defer=9223372036854775807", body: []byte("x"), code: 400, resp: `{"message":"INVALID_DEFER"}`})
	ext(contractCase{name: "pub at past", method: "POST", target: "/pub?topic=t&at=1", body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t"})
	ext(contractCase{name: "pub at 0", method: "POST", target: "/pub?topic=t&at=0", body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t"})
	ext(contractCase{name: "pub at future", method: "POST", target: "/pub?topic=t&at=AT+60000", body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t", deferMs: 60000})
	ext(contractCase{name: "pub at beyond max", method: "POST", target: fmt.Sprint("/pub?topic=t&at=AT+", year+60000), body: []byte("x"), code: 400, resp: `{"message":"INVALID_DEFER"}`})
	ext(contractCase{name: "pub at and defer", method: "POST", target: "/pub?topic=t&at=1&defer=1", body: []byte("x"), code: 400, resp: `{"message":"INVALID_DEFER"}`})
	for _, a := range []string{"-1", "abc", "", "1.5"} {
		ext(contractCase{name: "pub at " + a, method: "POST", target: "/pub?topic=t&at=" + a, body: []byte("x"), code: 400, resp: `{"message":"INVALID_DEFER"}`})
	}
	ext(contractCase{name: "mpub defer", method: "POST", target: "/mpub?topic=t&defer=5000", body: []byte("a\nb"), code: 200, resp: "OK", bodies: bs("a", "b"), topic: "t", deferMs: 5000})
	ext(contractCase{name: "mpub binary defer > 1h", method: "POST", target: "/mpub?topic=t&binary=true&defer=7200000", body: frame(1, m2), code: 200, resp: "OK", bodies: [][]byte{m2}, topic: "t", deferMs: 7200000})
	ext(contractCase{name: "mpub at future", method: "POST", target: "/mpub?topic=t&at=AT+1000", body: []byte("a"), code: 200, resp: "OK", bodies: bs("a"), topic: "t", deferMs: 1000})
	ext(contractCase{name: "mpub bad defer", method: "POST", target: "/mpub?topic=t&defer=abc", body: []byte("a"), code: 400, resp: `{"message":"INVALID_DEFER"}`})
	ext(contractCase{name: "mpub bad topic before bad defer", method: "POST", target: "/mpub?topic=a*b&defer=abc", body: []byte("a"), code: 400, resp: `{"message":"INVALID_TOPIC"}`})
	ext(contractCase{name: "mpub bad defer before bad body", method: "POST", target: "/mpub?topic=t&binary=true&defer=-1", body: []byte("a"), code: 400, resp: `{"message":"INVALID_DEFER"}`})
	ext(contractCase{name: "mpub id", method: "POST", target: "/mpub?topic=t&id=a", body: []byte("a"), code: 400, resp: `{"message":"INVALID_ID"}`})
	ext(contractCase{name: "pub id", method: "POST", target: "/pub?topic=t&id=order-42", body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t", id: "order-42"})
	ext(contractCase{name: "pub id with defer", method: "POST", target: "/pub?topic=t&id=k%2F1&defer=10", body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t", id: "k/1", deferMs: 10})
	ext(contractCase{name: "pub id 128", method: "POST", target: "/pub?topic=t&id=" + strings.Repeat("i", 128), body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "t", id: strings.Repeat("i", 128)})
	ext(contractCase{name: "pub id 129", method: "POST", target: "/pub?topic=t&id=" + strings.Repeat("i", 129), body: []byte("x"), code: 400, resp: `{"message":"INVALID_ID"}`})
	ext(contractCase{name: "pub id empty", method: "POST", target: "/pub?topic=t&id=", body: []byte("x"), code: 400, resp: `{"message":"INVALID_ID"}`})
	ext(contractCase{name: "pub id space", method: "POST", target: "/pub?topic=t&id=a%20b", body: []byte("x"), code: 400, resp: `{"message":"INVALID_ID"}`})
	ext(contractCase{name: "pub id control", method: "POST", target: "/pub?topic=t&id=a%01", body: []byte("x"), code: 400, resp: `{"message":"INVALID_ID"}`})
	ext(contractCase{name: "pub id non-ascii", method: "POST", target: "/pub?topic=t&id=%C3%A9", body: []byte("x"), code: 400, resp: `{"message":"INVALID_ID"}`})
	ext(contractCase{name: "pub ephemeral topic name kept", method: "POST", target: "/pub?topic=e%23ephemeral", body: []byte("x"), code: 200, resp: "OK", bodies: bs("x"), topic: "e#ephemeral"})
	ext(contractCase{name: "cancel known", method: "POST", target: "/cancel?id=order-42", code: 200, resp: "OK"})
	ext(contractCase{name: "cancel again", method: "POST", target: "/cancel?id=order-42", code: 404, resp: `{"message":"NOT_FOUND"}`})
	ext(contractCase{name: "cancel unknown", method: "POST", target: "/cancel?id=nope", code: 404, resp: `{"message":"NOT_FOUND"}`})
	ext(contractCase{name: "cancel missing id", method: "POST", target: "/cancel", code: 400, resp: `{"message":"MISSING_ARG_ID"}`})
	ext(contractCase{name: "cancel bad id", method: "POST", target: "/cancel?id=", code: 400, resp: `{"message":"INVALID_ID"}`})
	ext(contractCase{name: "cancel bad query", method: "POST", target: "/cancel?id=%zz", code: 400, resp: `{"message":"INVALID_REQUEST"}`})
	ext(contractCase{name: "GET cancel", method: "GET", target: "/cancel?id=x", code: 405, resp: `{"message":"METHOD_NOT_ALLOWED"}`})
	ext(contractCase{name: "info", method: "GET", target: "/info", code: 200, resp: `{"version":"test"}`})
	ext(contractCase{name: "stats", method: "GET", target: "/stats", code: 200, resp: `{"pending":7}`})
	ext(contractCase{name: "POST stats", method: "POST", target: "/stats", code: 405, resp: `{"message":"METHOD_NOT_ALLOWED"}`})
	return cs
}

// TestContract sends every case to a real nsqd and to deferd and compares.
func TestContract(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: testMaxMsg, MaxBodySize: testMaxBody})
	rec := &recorder{}
	srv := startServer(t, Options{MaxMsgSize: testMaxMsg, MaxBodySize: testMaxBody}, rec)
	for _, c := range contractCases() {
		t.Run(c.name, func(t *testing.T) {
			target := c.target
			beforeNs := time.Now().UnixNano()
			before := ceilMs(beforeNs)
			if i := strings.Index(target, "at=AT+"); i >= 0 {
				var off int64
				fmt.Sscan(target[i+len("at=AT+"):], &off)
				// From before, not a later clock reading: the due is then
				// exactly before+off, inside the range checked below.
				target = target[:i] + fmt.Sprint("at=", before+off)
			}
			got := do(t, c.method, srv.Addr(), target, c.body, c.chunked)
			after := nowMs()
			if c.nsqd {
				want := do(t, c.method, node.HTTPAddr, target, c.body, c.chunked)
				if c.method == "OPTIONS" { // Go's net/http adds no content type to an empty body
					want.ctype, got.ctype = "", ""
				}
				if got != want {
					t.Errorf("%s %s\ndeferd: %+v\nnsqd:   %+v", c.method, target, got, want)
				}
			} else if got.code != c.code || got.body != c.resp {
				t.Errorf("%s %s: got %d %s, want %d %s", c.method, target, got.code, got.body, c.code, c.resp)
			}
			if got.code >= 400 && c.method != "OPTIONS" && !strings.HasPrefix(got.ctype, "application/json; charset=utf-8") {
				t.Errorf("error content type %q", got.ctype)
			}
			pubs := rec.take()
			if c.bodies == nil {
				if len(pubs) != 0 {
					t.Fatalf("backend got %d publishes, want none: %+v", len(pubs), pubs)
				}
				return
			}
			if len(pubs) != 1 {
				t.Fatalf("backend got %d publishes, want 1", len(pubs))
			}
			p := pubs[0]
			if p.Topic != c.topic || p.ID != c.id {
				t.Errorf("topic %q id %q, want %q %q", p.Topic, p.ID, c.topic, c.id)
			}
			if len(p.Bodies) != len(c.bodies) {
				t.Fatalf("%d bodies, want %d: %q", len(p.Bodies), len(c.bodies), p.Bodies)
			}
			for i := range p.Bodies {
				if !bytes.Equal(p.Bodies[i], c.bodies[i]) {
					t.Errorf("body %d = %q, want %q", i, p.Bodies[i], c.bodies[i])
				}
			}
			lo := before + c.deferMs
			if c.deferMs == 0 {
				lo = beforeNs / 1_000_000 // no delay: due now, rounded down
			}
			if hi := after + c.deferMs; p.Due < lo || p.Due > hi {
				t.Errorf("due %d not in [%d, %d]", p.Due, lo, hi)
			}
		})
	}
}

// Requests Go's client cannot send, written raw to both servers: the status
// lines must agree.
func TestContractRaw(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: testMaxMsg, MaxBodySize: testMaxBody})
	srv := startServer(t, Options{MaxMsgSize: testMaxMsg, MaxBodySize: testMaxBody}, &recorder{})
	for _, req := range []string{
		"POST /p%zzb?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
		"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"POST /pub?topic=t HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi",
		"GET /ping HTTP/1.0\r\n\r\n",
		"GARBAGE\r\n\r\n",
		"POST /pub?topic=x#ephemeral HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
		"POST /pub?topic=x#frag HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
		"POST /pub?topic=t&defer=5#x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
		"POST http://x/pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
		"GET /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
		"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
	} {
		status := func(addr string) string {
			resp := rawRequest(t, addr, req)
			line, _, _ := strings.Cut(resp, "\r\n")
			_, body, _ := strings.Cut(resp, "\r\n\r\n")
			return line + " " + body
		}
		if got, want := status(srv.Addr()), status(node.HTTPAddr); got != want {
			t.Errorf("%q:\ndeferd %q\nnsqd   %q", req, got, want)
		}
	}
}

// Bodies far over the limits, with default limits on both sides: whether the
// body is refused before it is read or after, the client gets nsqd's answer,
// not a reset connection.
func TestContractBigBodies(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	srv := startServer(t, Options{}, &recorder{})
	big := rep('b', 6<<20)
	lines := bytes.Repeat([]byte("0123456789abcdef\n"), (6<<20)/17)
	for _, c := range []struct {
		target string
		body   []byte
	}{
		{"/pub?topic=t", big},
		{"/pub?topic=bad*topic", big},
		{"/mpub?topic=t", lines},
		{"/mpub?topic=bad*topic", lines[:4<<20]},
		{"/mpub?topic=t&binary=true", big},
		{"/mpub?topic=t&binary=true", append(frame(1, []byte("m")), big[:2<<20]...)},
		{"/nope", big},
		{"/cancel?id=x", big[:1<<20]},
	} {
		for _, chunked := range []bool{false, true} {
			if chunked && strings.Contains(c.target, "binary") && len(c.body) > DefaultMaxBodySize {
				continue // the documented difference
			}
			got := do(t, "POST", srv.Addr(), c.target, c.body, chunked)
			want := do(t, "POST", node.HTTPAddr, c.target, c.body, chunked)
			if strings.HasPrefix(c.target, "/cancel") {
				want = response{404, `{"message":"NOT_FOUND"}`, "application/json; charset=utf-8", "", "nsq; version=1.0", ""}
			}
			if got != want {
				t.Errorf("%s (%d bytes, chunked %v):\ndeferd %+v\nnsqd   %+v", c.target, len(c.body), chunked, got, want)
			}
		}
	}
}

// A client that dies mid-upload: the connection ends before Content-Length
// bytes. nsqd answers 500 INTERNAL_ERROR and publishes nothing; so must
// deferd, whether fasthttp had read the short body before the handler ran
// (small bodies) or the handler reads it from the stream (large ones).
// Nothing may be published: the part that came is not the message.
func TestContractTruncatedBody(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	rec := &recorder{}
	srv := startServer(t, Options{}, rec)
	halfClosed := func(addr, head string, body []byte) string {
		resp := rawExchange(t, addr, head+string(body), true)
		line, _, _ := strings.Cut(resp, "\r\n")
		_, b, _ := strings.Cut(resp, "\r\n\r\n")
		return line + " " + b
	}
	lines := func(n int) []byte { return bytes.Repeat([]byte("abcd\n"), n/5) }
	const internalError = `HTTP/1.1 500 Internal Server Error {"message":"INTERNAL_ERROR"}`
	for _, c := range []struct {
		method, target string
		body           []byte
		cl             int    // Content-Length sent; 0: twice the body
		differs        string // deferd's answer where it knowingly differs (ingest/doc.go)
	}{
		{"POST", "/pub?topic=t", rep('a', 3), 0, ""},
		{"POST", "/pub?topic=t", rep('a', 9000), 0, ""},
		{"POST", "/pub?topic=t", rep('a', 50000), 0, ""},
		{"POST", "/pub?topic=t&defer=1000", rep('a', 50000), 0, ""},
		{"POST", "/pub?topic=bad*topic", rep('a', 3), 0, ""},
		{"POST", "/mpub?topic=t", lines(50), 0, ""},
		{"POST", "/mpub?topic=t", lines(50000), 0, ""},
		{"POST", "/mpub?topic=t&binary=true", frame(2, rep('a', 50000)), 0, ""},
		// Under 8 KiB arrived: fasthttp finds the cut before routing.
		{"POST", "/pub?topic=t", rep('a', 3), 2 << 20, internalError},
		{"GET", "/ping", rep('a', 3), 0, internalError},
		{"POST", "/nope", rep('a', 3), 0, internalError},
	} {
		cl := c.cl
		if cl == 0 {
			cl = 2 * len(c.body)
		}
		head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", c.method, c.target, cl)
		got := halfClosed(srv.Addr(), head, c.body)
		want := c.differs
		if want == "" {
			want = halfClosed(node.HTTPAddr, head, c.body)
		}
		if got != want {
			t.Errorf("%s %s, %d of %d bytes sent:\ndeferd %q\nnsqd   %q", c.method, c.target, len(c.body), cl, got, want)
		}
		if p := rec.take(); len(p) != 0 {
			t.Errorf("%s %s, %d of %d bytes sent: published %d requests", c.method, c.target, len(c.body), cl, len(p))
		}
	}
}
