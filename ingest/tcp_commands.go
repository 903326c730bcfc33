package ingest

import (
	"bytes"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/deferd/deferd/internal/nsqname"
)

// tcpError is an error frame's text, nsqd's "CODE description". Every one
// deferd sends is fatal (nsqd's protocol.FatalClientErr): the connection is
// closed after it. nsqd's only non-fatal errors (E_FIN_FAILED,
// E_REQ_FAILED, E_TOUCH_FAILED) need a subscription, which deferd refuses.
type tcpError struct{ code, desc string }

func fatal(code, desc string) *tcpError { return &tcpError{code, desc} }

func (e *tcpError) frame() []byte { return []byte(e.code + " " + e.desc) }

var okBytes = []byte("OK")

// exec runs the command in tc.params, in nsqd's Exec order. A non-nil
// response is sent as a response frame; NOP has none.
func (tc *tcpConn) exec() ([]byte, *tcpError) {
	p := tc.params
	switch string(p[0]) {
	case "IDENTIFY":
		return tc.identify()
	case "PUB":
		return tc.pub()
	case "MPUB":
		return tc.mpub()
	case "DPUB":
		return tc.dpub()
	case "NOP":
		return nil, nil
	case "AUTH":
		return nil, tc.auth()
	case "SUB":
		// nsqd would subscribe; deferd is no consumer endpoint. nsqd's
		// words for a command refused in this state, and why.
		return nil, fatal("E_INVALID", "cannot SUB in current state (deferd accepts publishers only)")
	case "RDY", "FIN", "REQ", "TOUCH", "CLS":
		// Exactly nsqd's answer on a connection that has not subscribed.
		return nil, fatal("E_INVALID", "cannot "+string(p[0])+" in current state")
	}
	return nil, fatal("E_INVALID", fmt.Sprintf("invalid command %s", p[0]))
}

// auth is nsqd's AUTH with no auth server configured: the body is read and
// checked, then E_AUTH_DISABLED.
func (tc *tcpConn) auth() *tcpError {
	if len(tc.params) != 1 {
		return fatal("E_INVALID", "AUTH invalid number of parameters")
	}
	n, err := tc.readLen()
	if err != nil {
		return fatal("E_BAD_BODY", "AUTH failed to read body size")
	}
	if int64(n) > tc.s.maxBody {
		return fatal("E_BAD_BODY", fmt.Sprintf("AUTH body too big %d > %d", n, tc.s.maxBody))
	}
	if n <= 0 {
		return fatal("E_BAD_BODY", fmt.Sprintf("AUTH invalid body size %d", n))
	}
	tc.body = tc.body[:0]
	if err := tc.readN(int(n)); err != nil {
		return fatal("E_BAD_BODY", "AUTH failed to read body")
	}
	return fatal("E_AUTH_DISABLED", "AUTH disabled")
}

// checkTopic is nsqd's topic check; cmd is the command, and MPUB's
// description repeats the code, as nsqd's does.
func checkTopic(cmd string, name []byte) *tcpError {
	if nsqname.ValidTopic(name) {
		return nil
	}
	desc := fmt.Sprintf("%s topic name %q is not valid", cmd, string(name))
	if cmd == "MPUB" {
		desc = "E_BAD_TOPIC " + desc
	}
	return fatal("E_BAD_TOPIC", desc)
}

// readMessage reads PUB's and DPUB's [size][body], checked as nsqd does.
func (tc *tcpConn) readMessage(cmd string) *tcpError {
	n, err := tc.readLen()
	if err != nil {
		return fatal("E_BAD_MESSAGE", cmd+" failed to read message body size")
	}
	if n <= 0 {
		return fatal("E_BAD_MESSAGE", fmt.Sprintf("%s invalid message body size %d", cmd, n))
	}
	if int64(n) > tc.s.maxMsg {
		return fatal("E_BAD_MESSAGE", fmt.Sprintf("%s message too big %d > %d", cmd, n, tc.s.maxMsg))
	}
	tc.body = tc.body[:0]
	if err := tc.readN(int(n)); err != nil {
		return fatal("E_BAD_MESSAGE", cmd+" failed to read message body")
	}
	tc.bodies = append(tc.bodies[:0], tc.body)
	return nil
}

// pub is PUB <topic>: one message, due now.
func (tc *tcpConn) pub() ([]byte, *tcpError) {
	if len(tc.params) < 2 {
		return nil, fatal("E_INVALID", "PUB insufficient number of parameters")
	}
	if e := checkTopic("PUB", tc.params[1]); e != nil {
		return nil, e
	}
	topic := tc.s.topics.Get(tc.params[1]) // before a read refills the buffer params alias
	if e := tc.readMessage("PUB"); e != nil {
		return nil, e
	}
	return tc.publish("PUB", topic, dueAfter(0))
}

// dpub is DPUB <topic> <defer_ms>: nsqd's checks, but 0 ≤ defer_ms ≤
// MaxDefer instead of nsqd's --max-req-timeout (1h).
func (tc *tcpConn) dpub() ([]byte, *tcpError) {
	if len(tc.params) < 3 {
		return nil, fatal("E_INVALID", "DPUB insufficient number of parameters")
	}
	if e := checkTopic("DPUB", tc.params[1]); e != nil {
		return nil, e
	}
	ms, e := tc.deferMs("DPUB", tc.params[2])
	if e != nil {
		return nil, e
	}
	topic := tc.s.topics.Get(tc.params[1]) // before a read refills the buffer params alias
	if e := tc.readMessage("DPUB"); e != nil {
		return nil, e
	}
	return tc.publish("DPUB", topic, dueAfter(ms))
}

// deferMs parses a delay as nsqd's DPUB does (protocol.ByteToBase10:
// decimal digits only, "" is 0) and checks it against MaxDefer. nsqd
// multiplies it by a millisecond unchecked, so a huge value can wrap into
// its range; deferd refuses it.
func (tc *tcpConn) deferMs(cmd string, b []byte) (int64, *tcpError) {
	var n uint64
	over := false // past uint64: nsqd's value has wrapped
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fatal("E_INVALID", fmt.Sprintf("%s could not parse timeout %s", cmd, b))
		}
		d := uint64(c - '0')
		over = over || n > (math.MaxUint64-d)/10
		n = n*10 + d
	}
	if over || n > uint64(tc.s.maxDeferMs) {
		shown := strconv.FormatUint(n, 10)
		if over {
			shown = string(bytes.TrimLeft(b, "0"))
		}
		return 0, fatal("E_INVALID", fmt.Sprintf("%s timeout %s out of range 0-%d", cmd, shown, tc.s.maxDeferMs))
	}
	return int64(n), nil
}

// mpub is MPUB <topic> [defer_ms]: nsqd's checks, all messages read and
// validated before one Backend.Publish, so it is atomic as in nsqd.
// defer_ms is deferd's extension (nsqd ignores words after the topic).
func (tc *tcpConn) mpub() ([]byte, *tcpError) {
	if len(tc.params) < 2 {
		return nil, fatal("E_INVALID", "MPUB insufficient number of parameters")
	}
	if e := checkTopic("MPUB", tc.params[1]); e != nil {
		return nil, e
	}
	topic := tc.s.topics.Get(tc.params[1]) // before a read refills the buffer params alias
	var ms int64
	if len(tc.params) > 2 {
		var e *tcpError
		if ms, e = tc.deferMs("MPUB", tc.params[2]); e != nil {
			return nil, e
		}
	}
	n, err := tc.readLen()
	if err != nil {
		return nil, fatal("E_BAD_BODY", "MPUB failed to read body size")
	}
	if n <= 0 {
		return nil, fatal("E_BAD_BODY", fmt.Sprintf("MPUB invalid body size %d", n))
	}
	if int64(n) > tc.s.maxBody {
		return nil, fatal("E_BAD_BODY", fmt.Sprintf("MPUB body too big %d > %d", n, tc.s.maxBody))
	}
	if e := tc.readMPUB(); e != nil {
		return nil, e
	}
	return tc.publish("MPUB", topic, dueAfter(ms))
}

// readMPUB is nsqd's readMPUB: a count, then per message a size and the
// body, read from the stream whatever the declared body size said. nsqd
// reads them without a total limit; deferd stops at MaxBodySize bytes
// (count and sizes included) with E_BAD_BODY, which a body whose declared
// size was true never reaches.
func (tc *tcpConn) readMPUB() *tcpError {
	count, err := tc.readLen()
	if err != nil {
		return fatal("E_BAD_BODY", "MPUB failed to read message count")
	}
	if count <= 0 || int64(count) > (tc.s.maxBody-4)/5 {
		return fatal("E_BAD_BODY", fmt.Sprintf("MPUB invalid message count %d", count))
	}
	tc.body, tc.ends = tc.body[:0], tc.ends[:0]
	total := int64(4)
	for i := int32(0); i < count; i++ {
		size, err := tc.readLen()
		if err != nil {
			return fatal("E_BAD_MESSAGE", fmt.Sprintf("MPUB failed to read message(%d) body size", i))
		}
		if size <= 0 {
			return fatal("E_BAD_MESSAGE", fmt.Sprintf("MPUB invalid message(%d) body size %d", i, size))
		}
		if int64(size) > tc.s.maxMsg {
			return fatal("E_BAD_MESSAGE", fmt.Sprintf("MPUB message too big %d > %d", size, tc.s.maxMsg))
		}
		if total += 4 + int64(size); total > tc.s.maxBody {
			return fatal("E_BAD_BODY", fmt.Sprintf("MPUB body too big %d > %d", total, tc.s.maxBody))
		}
		if err := tc.readN(int(size)); err != nil {
			return fatal("E_BAD_MESSAGE", "MPUB failed to read message body")
		}
		tc.ends = append(tc.ends, len(tc.body))
	}
	tc.bodies = tc.bodies[:0]
	start := 0
	for _, end := range tc.ends {
		tc.bodies = append(tc.bodies, tc.body[start:end:end])
		start = end
	}
	return nil
}

// dueAfter is a due time ms from now, as the HTTP API computes it: no
// delay is the current millisecond rounded down (already due); a delay
// counts from the current millisecond rounded up, so it is never early.
func dueAfter(ms int64) int64 {
	ns := time.Now().UnixNano()
	if ms == 0 {
		return ns / 1_000_000
	}
	return ceilMs(ns) + ms
}

// publish hands tc.bodies to the backend for topic, which the caller
// took from tc.params before reading the bodies: tc.params alias the read
// buffer, which reading a body may refill. A backend error is nsqd's
// E_PUB_FAILED / E_MPUB_FAILED / E_DPUB_FAILED ("PUB failed OVER_CAPACITY",
// ...), fatal as in nsqd, so a client reconnects before its next publish.
func (tc *tcpConn) publish(cmd, topic string, due int64) ([]byte, *tcpError) {
	tc.req = PubRequest{Topic: topic, Bodies: tc.bodies, Due: due}
	if err := tc.s.b.Publish(&tc.req); err != nil {
		text := "INTERNAL_ERROR"
		if e := errorOf(err); e != nil {
			text = e.Text
		} else {
			tc.s.logf("ingest: TCP %s: %v", cmd, err)
		}
		return nil, fatal("E_"+cmd+"_FAILED", cmd+" failed "+text)
	}
	n := 0
	for _, b := range tc.bodies {
		n += len(b)
	}
	tc.s.m.messages.Add(len(tc.bodies))
	tc.s.m.bytes.Add(n)
	return okBytes, nil
}
