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

// tcpCase is one connection's bytes after the magic. With want empty they
// go to a real nsqd and to deferd, whose transcripts must be identical;
// otherwise deferd's must be want (a deliberate difference, ingest/doc.go).
// Unless partial is set, a sentinel IDENTIFY follows, so a connection that
// survives the case answers one more "R:OK" before it closes: the close
// is compared too. pubs is what the backend must then have been given.
type tcpCase struct {
	name    string
	data    []byte
	partial bool   // no sentinel: the case ends mid-command
	raw     bool   // data includes the magic (or not)
	want    string // deferd-only expected transcript
	nsqd    string // with want: nsqd's transcript; "*": any other than want
	pubs    []tcpPub
}

type tcpPub struct {
	topic   string
	bodies  []string
	deferMs int64
}

var tcpSentinel = tcpCmd("IDENTIFY", []byte("{}"))

func tcpContractCases() []tcpCase {
	var c tcpCases
	c.publishCases()
	c.commandCases()
	c.identifyCases()
	c.partialCases()
	return append(c.cs, tcpDifferences()...)
}

// tcpCases collects cases.
type tcpCases struct{ cs []tcpCase }

func (c *tcpCases) same(name string, data []byte, pubs ...tcpPub) {
	c.cs = append(c.cs, tcpCase{name: name, data: data, pubs: pubs})
}

func (c *tcpCases) partial(name string, data []byte) {
	c.cs = append(c.cs, tcpCase{name: name, data: data, partial: true})
}

func tcpB(s string) []byte { return []byte(s) }

func tcpP(topic string, bodies ...string) tcpPub { return tcpPub{topic: topic, bodies: bodies} }

// tcpMPUBn is an MPUB body with the given count, whatever the messages.
func tcpMPUBn(count int32, msgs ...string) []byte {
	b := tcpLen(count)
	for _, x := range msgs {
		b = append(append(b, tcpLen(int32(len(x)))...), x...)
	}
	return b
}

// publishCases: PUB and MPUB.
func (c *tcpCases) publishCases() {
	same := c.same
	m, pub, mpub := tcpB, tcpP, tcpMPUBn
	long64 := strings.Repeat("a", 64)
	bin := "\x00\n\xff\r\nbin"
	// PUB
	same("pub", tcpCmd("PUB t", m("hello")), pub("t", "hello"))
	same("pub crlf", []byte("PUB t\r\n\x00\x00\x00\x01x"), pub("t", "x"))
	same("pub binary body", tcpCmd("PUB t", m(bin)), pub("t", bin))
	same("pub twice in order", cat(tcpCmd("PUB t", m("1")), tcpCmd("PUB u", m("2"))), pub("t", "1"), pub("u", "2"))
	same("pub extra words ignored", tcpCmd("PUB t extra words", m("x")), pub("t", "x"))
	same("pub topic 64", tcpCmd("PUB "+long64, m("x")), pub(long64, "x"))
	same("pub topic charset", tcpCmd("PUB AZaz09._-", m("x")), pub("AZaz09._-", "x"))
	same("pub ephemeral", tcpCmd("PUB x#ephemeral", m("x")), pub("x#ephemeral", "x"))
	same("pub topic 65", tcpCmd("PUB "+long64+"a", m("x")))
	same("pub only #ephemeral", tcpCmd("PUB #ephemeral", m("x")))
	same("pub topic bad suffix", tcpCmd("PUB x#eph", m("x")))
	same("pub topic star", tcpCmd("PUB a*b", m("x")))
	same("pub topic quote and non-utf8", tcpCmd("PUB a\"\xff", m("x")))
	same("pub empty topic", tcpCmd("PUB ", m("x")))
	same("pub double space", tcpCmd("PUB  t", m("x")))
	same("pub no topic", tcpCmd("PUB", m("x")))
	same("pub msg at max", tcpCmd("PUB t", rep('m', testMaxMsg)), pub("t", string(rep('m', testMaxMsg))))
	same("pub msg too big", tcpCmd("PUB t", rep('m', testMaxMsg+1)))
	same("pub msg far too big", cat([]byte("PUB t\n"), tcpLen(1<<30)))
	same("pub empty msg", tcpCmd("PUB t", nil))
	same("pub negative size", cat([]byte("PUB t\n"), tcpLen(-1), m("x")))
	same("pub after pub error", cat(tcpCmd("PUB a*b", m("x")), tcpCmd("PUB t", m("y"))))

	// MPUB
	same("mpub", tcpCmd("MPUB t", mpub(3, "a", "bb", bin)), pub("t", "a", "bb", bin))
	same("mpub one", tcpCmd("MPUB t", mpub(1, "a")), pub("t", "a"))
	same("mpub count 0", tcpCmd("MPUB t", mpub(0)))
	same("mpub count -1", tcpCmd("MPUB t", mpub(-1, "a")))
	same("mpub count max", tcpCmd("MPUB t", mpub((testMaxBody-4)/5, strings.Split(strings.Repeat("x", (testMaxBody-4)/5), "")...)),
		pub("t", strings.Split(strings.Repeat("x", (testMaxBody-4)/5), "")...))
	same("mpub count too many", tcpCmd("MPUB t", mpub((testMaxBody-4)/5+1, "a")))
	same("mpub empty member", tcpCmd("MPUB t", mpub(2, "a", "")))
	same("mpub member too big", tcpCmd("MPUB t", mpub(2, "a", string(rep('z', testMaxMsg+1)))))
	same("mpub member negative", cat([]byte("MPUB t\n"), tcpLen(9), tcpLen(1), tcpLen(-5), m("x")))
	same("mpub body size 0", cat([]byte("MPUB t\n"), tcpLen(0), mpub(1, "a")))
	same("mpub body size -1", cat([]byte("MPUB t\n"), tcpLen(-1), mpub(1, "a")))
	same("mpub body too big", cat([]byte("MPUB t\n"), tcpLen(testMaxBody+1), mpub(1, "a")))
	same("mpub body size understated", cat([]byte("MPUB t\n"), tcpLen(1), mpub(2, "ab", "cd")), pub("t", "ab", "cd"))
	same("mpub body size overstated", cat([]byte("MPUB t\n"), tcpLen(100), mpub(1, "ab")), pub("t", "ab"))
	same("mpub bad topic", tcpCmd("MPUB a*b", mpub(1, "a")))
	same("mpub no topic", tcpCmd("MPUB", mpub(1, "a")))
	same("mpub ephemeral", tcpCmd("MPUB e#ephemeral", mpub(1, "a")), pub("e#ephemeral", "a"))
}

// commandCases: DPUB, NOP, unknown and consumer commands.
func (c *tcpCases) commandCases() {
	same := c.same
	m, pub := tcpB, tcpP
	// DPUB
	for _, d := range []int64{0, 1500, 3600000} {
		c.cs = append(c.cs, tcpCase{name: fmt.Sprint("dpub ", d), data: tcpCmd(fmt.Sprint("DPUB t ", d), m("d")),
			pubs: []tcpPub{{topic: "t", bodies: []string{"d"}, deferMs: d}}})
	}
	same("dpub empty timeout is 0", tcpCmd("DPUB t ", m("d")), pub("t", "d"))
	same("dpub leading zeros", tcpCmd("DPUB t 0007", m("d")), tcpPub{topic: "t", bodies: []string{"d"}, deferMs: 7})
	for _, d := range []string{"-1", "abc", "+5", "1.5", "1e3", "0x10", "1_000"} {
		same("dpub timeout "+d, tcpCmd("DPUB t "+d, m("d")))
	}
	same("dpub missing timeout", tcpCmd("DPUB t", m("d")))
	same("dpub no topic", tcpCmd("DPUB", m("d")))
	same("dpub bad topic", tcpCmd("DPUB a*b 10", m("d")))
	same("dpub bad topic before bad timeout", tcpCmd("DPUB a*b x", m("d")))
	same("dpub bad timeout before bad body", cat([]byte("DPUB t x\n"), tcpLen(0)))
	same("dpub empty msg", tcpCmd("DPUB t 10", nil))
	same("dpub msg too big", tcpCmd("DPUB t 10", rep('m', testMaxMsg+1)))

	// Commands
	same("nop", []byte("NOP\n"))
	same("nop crlf", []byte("NOP\r\n"))
	same("nop then pub", cat([]byte("NOP\n"), tcpCmd("PUB t", m("x"))), pub("t", "x"))
	same("unknown command", []byte("FOO bar\n"))
	same("lower case", tcpCmd("pub t", m("x")))
	same("empty line", []byte("\n"))
	same("bare cr", []byte("\r\n"))
	for _, c := range []string{"RDY 1", "RDY", "FIN 0123456789abcdef", "REQ 0123456789abcdef 0", "TOUCH 0123456789abcdef", "CLS"} {
		same("consumer "+c, []byte(c+"\n"))
	}
	same("line over 16 KiB", []byte("PUB "+strings.Repeat("t", 17<<10)+"\n"))
}

// identifyCases: IDENTIFY and AUTH.
func (c *tcpCases) identifyCases() {
	same := c.same
	m, pub := tcpB, tcpP
	// IDENTIFY
	id := func(json string) []byte { return tcpCmd("IDENTIFY", m(json)) }
	same("identify no negotiation", id(`{"client_id":"c","hostname":"h","user_agent":"test"}`))
	same("identify negotiation", id(`{"feature_negotiation":true}`))
	same("identify go-nsq like, over max body", id(`{"client_id":"c","deflate":false,"deflate_level":6,"feature_negotiation":true,"heartbeat_interval":30000,`+
		`"hostname":"h","long_id":"c","msg_timeout":0,"output_buffer_size":16384,"output_buffer_timeout":250,"sample_rate":0,`+
		`"short_id":"c","snappy":false,"tls_v1":false,"user_agent":"go-nsq/1.1.0"}`))
	same("identify tls requested", id(`{"feature_negotiation":true,"tls_v1":true}`))
	same("identify settings echoed", id(`{"feature_negotiation":true,"msg_timeout":1000,"sample_rate":99,"output_buffer_size":64,"output_buffer_timeout":25}`))
	same("identify settings max", id(`{"feature_negotiation":true,"msg_timeout":900000,"heartbeat_interval":60000,"output_buffer_size":65536,"output_buffer_timeout":30000}`))
	same("identify minus ones", id(`{"feature_negotiation":true,"heartbeat_interval":-1,"output_buffer_size":-1,"output_buffer_timeout":-1}`))
	same("identify buffer timeout -1 only", id(`{"feature_negotiation":true,"output_buffer_timeout":-1}`))
	for _, bad := range []string{
		`{"heartbeat_interval":999}`, `{"heartbeat_interval":60001}`, `{"heartbeat_interval":-2}`,
		`{"output_buffer_size":63}`, `{"output_buffer_size":65537}`, `{"output_buffer_size":-2}`,
		`{"output_buffer_timeout":24}`, `{"output_buffer_timeout":30001}`, `{"output_buffer_timeout":-2}`,
		`{"sample_rate":100}`, `{"sample_rate":-1}`, `{"msg_timeout":999}`, `{"msg_timeout":900001}`, `{"msg_timeout":-1}`,
		`{"heartbeat_interval":999,"sample_rate":100}`, `{"output_buffer_size":1,"output_buffer_timeout":1}`,
		`{`, `[]`, `null x`, `{"heartbeat_interval":"x"}`, `{"heartbeat_interval":1.5}`, `{"feature_negotiation":1}`,
		`{"sample_rate":4294967296}`, "\xff",
	} {
		same("identify "+bad, id(bad))
	}
	same("identify body size 0", cat([]byte("IDENTIFY\n"), tcpLen(0)))
	same("identify body size -1", cat([]byte("IDENTIFY\n"), tcpLen(-1)))
	same("identify body too big", cat([]byte("IDENTIFY\n"), tcpLen(testMaxBody+1)))
	same("identify twice", cat(id(`{"feature_negotiation":true}`), id(`{"feature_negotiation":true,"msg_timeout":2000}`)))
	same("identify then pub", cat(id(`{"feature_negotiation":true}`), tcpCmd("PUB t", m("x"))), pub("t", "x"))
	same("identify with params", tcpCmd("IDENTIFY x y", m("{}")))

	// AUTH
	same("auth", tcpCmd("AUTH", m("secret")))
	same("auth with params", tcpCmd("AUTH x", m("secret")))
	same("auth body size 0", cat([]byte("AUTH\n"), tcpLen(0)))
	same("auth body too big", cat([]byte("AUTH\n"), tcpLen(testMaxBody+1)))
	same("auth after identify", cat(id(`{}`), tcpCmd("AUTH", m("secret"))))
}

// partialCases: a partial frame, then the client half-closes; and the magic.
func (c *tcpCases) partialCases() {
	partial := c.partial
	m := tcpB
	// Partial frames, then the client half-closes.
	partial("partial command line", []byte("PUB t"))
	partial("partial size", []byte("PUB t\n\x00\x00"))
	partial("partial body", cat([]byte("PUB t\n"), tcpLen(5), m("ab")))
	partial("partial dpub body", cat([]byte("DPUB t 10\n"), tcpLen(5), m("ab")))
	partial("partial mpub body size", []byte("MPUB t\n\x00"))
	partial("partial mpub count", cat([]byte("MPUB t\n"), tcpLen(20), m("\x00")))
	partial("partial mpub member size", cat([]byte("MPUB t\n"), tcpLen(20), tcpLen(2), tcpLen(1), m("a\x00")))
	partial("partial mpub member", cat([]byte("MPUB t\n"), tcpLen(20), tcpLen(2), tcpLen(1), m("a"), tcpLen(3), m("b")))
	partial("partial identify", cat([]byte("IDENTIFY\n"), tcpLen(10), m("{}")))
	partial("partial identify size", []byte("IDENTIFY\n\x00"))
	partial("partial auth", cat([]byte("AUTH\n"), tcpLen(10), m("s")))
	partial("nothing after magic", nil)
	c.cs = append(c.cs,
		tcpCase{name: "no magic", raw: true, partial: true},
		tcpCase{name: "partial magic", data: []byte("  V"), raw: true, partial: true},
		tcpCase{name: "bad magic", data: cat([]byte("  V1"), tcpCmd("PUB t", m("x"))), raw: true},
		tcpCase{name: "bad magic alone", data: []byte("HTTP"), raw: true, partial: true},
	)
}

// tcpDifferences are deferd's deliberate differences from nsqd.
func tcpDifferences() []tcpCase {
	year := int64(365 * 24 * 3600 * 1000)
	m60 := strings.Repeat("m", 60)
	d := func(name string, data []byte, want, nsqd string, pubs ...tcpPub) tcpCase {
		return tcpCase{name: name, data: data, want: want, nsqd: nsqd, pubs: pubs}
	}
	ok2 := "R:OK | R:OK | closed"
	nsqdRange := func(v string) string {
		return "E:E_INVALID DPUB timeout " + v + " out of range 0-3600000 | closed"
	}
	outOfRange := func(cmd, v string) string {
		return fmt.Sprintf("E:E_INVALID %s timeout %s out of range 0-%d | closed", cmd, v, year)
	}
	negotiated := `R:{"max_rdy_count":2500,"version":"1.3.0","max_msg_timeout":900000,"msg_timeout":60000,"tls_v1":false,` +
		`"deflate":false,"deflate_level":6,"max_deflate_level":6,"snappy":false,"sample_rate":0,"auth_required":false,` +
		`"output_buffer_size":16384,"output_buffer_timeout":250} | R:OK | closed`
	return []tcpCase{
		// nsqd: DPUB at most --max-req-timeout (1h); deferd: MaxDefer.
		d("dpub over 1h", tcpCmd("DPUB t 3600001", []byte("x")), ok2, nsqdRange("3600001"), tcpPub{"t", []string{"x"}, 3600001}),
		d("dpub one year", tcpCmd(fmt.Sprint("DPUB t ", year), []byte("x")), ok2, nsqdRange(fmt.Sprint(year)), tcpPub{"t", []string{"x"}, year}),
		d("dpub over one year", tcpCmd(fmt.Sprint("DPUB t ", year+1), []byte("x")), outOfRange("DPUB", fmt.Sprint(year+1)), nsqdRange(fmt.Sprint(year+1))),
		// nsqd wraps the overflowed value, here into 7766279631452241919.
		d("dpub overflow", tcpCmd("DPUB t 99999999999999999999", []byte("x")), outOfRange("DPUB", "99999999999999999999"), nsqdRange("7766279631452241919")),
		// nsqd ignores MPUB's words after the topic; deferd's is a delay.
		d("mpub defer", tcpCmd("MPUB t 5000", tcpMPUB("a", "b")), ok2, ok2, tcpPub{"t", []string{"a", "b"}, 5000}),
		d("mpub defer 0", tcpCmd("MPUB t 0", tcpMPUB("a")), ok2, ok2, tcpPub{"t", []string{"a"}, 0}),
		d("mpub defer empty", tcpCmd("MPUB t ", tcpMPUB("a")), ok2, ok2, tcpPub{"t", []string{"a"}, 0}),
		d("mpub defer over 1h", tcpCmd("MPUB t 7200000", tcpMPUB("a")), ok2, ok2, tcpPub{"t", []string{"a"}, 7200000}),
		d("mpub defer bad", tcpCmd("MPUB t x", tcpMPUB("a")), "E:E_INVALID MPUB could not parse timeout x | closed", ok2),
		d("mpub defer negative", tcpCmd("MPUB t -1", tcpMPUB("a")), "E:E_INVALID MPUB could not parse timeout -1 | closed", ok2),
		d("mpub defer over one year", tcpCmd(fmt.Sprint("MPUB t ", year+1), tcpMPUB("a")), outOfRange("MPUB", fmt.Sprint(year+1)), ok2),
		// nsqd reads MPUB's messages without a total limit.
		d("mpub members past max body", cat([]byte("MPUB t\n"), tcpLen(8), tcpMPUB(m60, m60, m60, m60, m60)),
			fmt.Sprintf("E:E_BAD_BODY MPUB body too big %d > %d | closed", 4+4*64, testMaxBody), ok2),
		// nsqd subscribes (and then refuses the sentinel IDENTIFY); deferd
		// is no consumer endpoint.
		d("sub", []byte("SUB t c\n"), "E:E_INVALID cannot SUB in current state (deferd accepts publishers only) | closed",
			"R:OK | E:E_INVALID cannot IDENTIFY in current state | closed"),
		// nsqd upgrades to deflate or snappy, or refuses both at once;
		// deferd offers neither.
		d("identify compression", tcpCmd("IDENTIFY", []byte(`{"feature_negotiation":true,"deflate":true,"snappy":true,"deflate_level":9}`)), negotiated,
			"E:E_IDENTIFY_FAILED cannot enable both deflate and snappy compression | closed"),
		d("identify deflate", tcpCmd("IDENTIFY", []byte(`{"feature_negotiation":true,"deflate":true}`)), negotiated, "*"),
		d("identify snappy", tcpCmd("IDENTIFY", []byte(`{"feature_negotiation":true,"snappy":true}`)), negotiated, "*"),
	}
}

// tcpMPUB is an MPUB body: the count, then each message after its size.
func tcpMPUB(msgs ...string) []byte { return tcpMPUBn(int32(len(msgs)), msgs...) }

// TestTCPContract sends every case to a real nsqd's TCP port and to
// deferd's, and compares the frames and the close.
func TestTCPContract(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: testMaxMsg, MaxBodySize: testMaxBody})
	rec := &recorder{}
	srv := startTCP(t, TCPOptions{MaxMsgSize: testMaxMsg, MaxBodySize: testMaxBody}, rec)
	for _, c := range tcpContractCases() {
		t.Run(c.name, func(t *testing.T) {
			data := c.data
			if !c.raw {
				data = cat(magicV2, data)
			}
			if !c.partial {
				data = cat(data, tcpSentinel)
			}
			beforeNs := time.Now().UnixNano()
			got := exchange(t, srv.Addr(), data, true, 10*time.Second)
			after := nowMs()
			nsqd := exchange(t, node.TCPAddr, data, true, 10*time.Second).String()
			switch {
			case c.want == "":
				if got.String() != nsqd {
					t.Errorf("%q\ndeferd: %s\nnsqd:   %s", data, got, nsqd)
				}
			case got.String() != c.want:
				t.Errorf("%q\ndeferd: %s\nwant:   %s", data, got, c.want)
			case c.nsqd == "*" && nsqd == c.want, c.nsqd != "*" && nsqd != c.nsqd:
				t.Errorf("%q: nsqd no longer differs as documented\nnsqd: %s\nwant: %s", data, nsqd, c.nsqd)
			}
			checkPubs(t, rec.take(), c.pubs, beforeNs, after)
		})
	}
}

// checkPubs compares what the backend got with want, due times included.
func checkPubs(t *testing.T, got []PubRequest, want []tcpPub, beforeNs, after int64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("backend got %d publishes, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		p := got[i]
		if p.Topic != w.topic || p.ID != "" {
			t.Errorf("publish %d: topic %q id %q, want %q", i, p.Topic, p.ID, w.topic)
		}
		if len(p.Bodies) != len(w.bodies) {
			t.Fatalf("publish %d: %d bodies, want %d", i, len(p.Bodies), len(w.bodies))
		}
		for j := range w.bodies {
			if !bytes.Equal(p.Bodies[j], []byte(w.bodies[j])) {
				t.Errorf("publish %d body %d = %q, want %q", i, j, p.Bodies[j], w.bodies[j])
			}
		}
		lo := ceilMs(beforeNs) + w.deferMs
		if w.deferMs == 0 {
			lo = beforeNs / 1_000_000
		}
		if hi := after + w.deferMs; p.Due < lo || p.Due > hi {
			t.Errorf("publish %d: due %d not in [%d, %d]", i, p.Due, lo, hi)
		}
	}
}
