package main

// Chaos test, the load: the messages, cancels, reschedules and ids the
// workers send, their bodies and delays, and the worker loop (see
// chaos_test.go).

import (
	"bytes"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type chaosMsg struct {
	seq      int64
	body     string
	topic    string
	id       string
	kind     string // pub, mpub, idpub, dedupe, retained (idretry resends idpub's body)
	delay    string // query suffix
	sendNs   int64
	respNs   int64
	minDueNs int64
	status   int // 0: transport error (unknown outcome)
	cycle    int
	// dedupe probe: body1's seq; the probe must not be delivered if
	// body1 was pending for the whole probe request. retained probe:
	// body1's seq too; the probe must not be delivered if it was sent
	// after a delivery of body1 and answered within the id's retention
	// window from it.
	dedupeOf int64
}

// chaosResched is one POST /reschedule?id=...&defer=MS|at=UNIX_MS.
type chaosResched struct {
	id       string
	q        string // query suffix
	sendNs   int64
	respNs   int64
	lowNs    int64 // lower bound of the new due time (from the send time)
	status   int   // 0: transport error (unknown outcome)
	cycle    int
	reliable bool // false when a truncation we injected may have cut its record
}

// mayApply reports whether r may have moved its message: anything but a
// 400 (rejected), 404 (none pending) or 409 (in flight) may have.
func (r *chaosResched) mayApply() bool {
	return r.status != 400 && r.status != 404 && r.status != 409
}

type chaosCancel struct {
	id       string
	sendNs   int64
	respNs   int64
	status   int
	cycle    int
	reliable bool // false when a fault we injected may have destroyed its mark
}

type chaosIDState struct {
	id       string
	body     *chaosMsg // the body used for this id (retries resend it)
	acked    bool
	cancelTr bool // a cancel was attempted: never publish the id again
	busy     bool
	// dueLo: a lower bound of the due time of the id's pending message,
	// lowered by every reschedule that may have applied (the dedupe probe
	// wants a body1 surely pending).
	dueLo int64
	// reschedUnknown: a reschedule's outcome is unknown (it may still be
	// applied later): no more reschedules, so its window has no end.
	reschedUnknown bool
	// retProbed: a retained probe was sent; the id is not used again (an
	// answer outside the window may have scheduled the probe's body).
	retProbed bool
}

func chaosBody(seq int64, id string, minDue int64, rnd *rand.Rand) string {
	pad := make([]byte, rnd.Intn(200))
	for i := range pad {
		pad[i] = byte('a' + rnd.Intn(26))
	}
	prefix := fmt.Sprintf("chaos|seq=%d|id=%s|mindue=%d|pad=%s", seq, id, minDue, pad)
	return fmt.Sprintf("%s|crc=%08x", prefix, crc32.ChecksumIEEE([]byte(prefix)))
}

func chaosBodyOK(b string) bool {
	i := strings.LastIndex(b, "|crc=")
	if i < 0 || !strings.HasPrefix(b, "chaos|seq=") {
		return false
	}
	return fmt.Sprintf("%08x", crc32.ChecksumIEEE([]byte(b[:i]))) == b[i+5:]
}

var chaosTopics = []string{"chaos_a", "chaos_b", "chaos_c"}

// pickResched returns a /reschedule query suffix and the lower bound of
// the new due time (ns) given the send time.
func pickResched(rnd *rand.Rand, sendNs int64) (string, int64) {
	r := rnd.Intn(100)
	switch {
	case r < 25: // run now
		return "&defer=0", sendNs
	case r < 35:
		d := 1 + rnd.Intn(20)
		return "&defer=" + strconv.Itoa(d), sendNs + int64(d)*1e6
	case r < 75:
		d := 100 + rnd.Intn(2900)
		return "&defer=" + strconv.Itoa(d), sendNs + int64(d)*1e6
	case r < 85:
		d := 3000 + rnd.Intn(3000)
		return "&defer=" + strconv.Itoa(d), sendNs + int64(d)*1e6
	case r < 95:
		at := sendNs/1e6 + 100 + int64(rnd.Intn(2900))
		return "&at=" + strconv.FormatInt(at, 10), at * 1e6
	default: // a past at=: run now
		at := sendNs/1e6 - int64(rnd.Intn(5000))
		return "&at=" + strconv.FormatInt(at, 10), at * 1e6
	}
}

// pickDelay returns a query suffix and the lower bound of the due time (ns)
// given the send time.
func pickDelay(rnd *rand.Rand, sendNs int64) (string, int64) {
	r := rnd.Intn(100)
	switch {
	case r < 12:
		return "", sendNs
	case r < 22:
		return "&defer=0", sendNs
	case r < 42:
		d := 1 + rnd.Intn(10)
		return "&defer=" + strconv.Itoa(d), sendNs + int64(d)*1e6
	case r < 77:
		d := 100 + rnd.Intn(2900)
		return "&defer=" + strconv.Itoa(d), sendNs + int64(d)*1e6
	case r < 82:
		d := 3000 + rnd.Intn(7000)
		return "&defer=" + strconv.Itoa(d), sendNs + int64(d)*1e6
	case r < 94:
		at := sendNs/1e6 + 100 + int64(rnd.Intn(2900))
		return "&at=" + strconv.FormatInt(at, 10), at * 1e6
	default:
		at := sendNs/1e6 - int64(rnd.Intn(5000))
		return "&at=" + strconv.FormatInt(at, 10), at * 1e6
	}
}

// chaosWorker drives load until stop.
func chaosWorker(st *chaosState, base string, rnd *rand.Rand, stop chan struct{}) {
	client := &http.Client{Timeout: 10 * time.Second}
	post := func(path string, body []byte) (int, string) {
		resp, err := client.Post(base+path, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			return 0, ""
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	record := func(msgs []*chaosMsg, status int) {
		now := time.Now().UnixNano()
		st.mu.Lock()
		for _, m := range msgs {
			m.respNs, m.status = now, status
		}
		st.mu.Unlock()
	}
	register := func(m *chaosMsg) {
		st.mu.Lock()
		m.cycle = st.cycle
		st.sent[m.body] = m
		st.bySeq[m.seq] = m
		st.mu.Unlock()
	}
	// checkout an id for exclusive use; pred (called under st.mu)
	// filters. recent > 0 picks among the last recent ids only.
	checkoutIn := func(recent, tries int, pred func(s *chaosIDState) bool) *chaosIDState {
		st.mu.Lock()
		defer st.mu.Unlock()
		n := len(st.ids)
		if n == 0 {
			return nil
		}
		from := 0
		if recent > 0 && n > recent {
			from = n - recent
		}
		for k := 0; k < tries; k++ {
			s := st.ids[from+rnd.Intn(n-from)]
			if !s.busy && !s.cancelTr && !s.retProbed && !st.truncLost[s.body.body] && pred(s) {
				s.busy = true
				return s
			}
		}
		return nil
	}
	checkout := func(pred func(s *chaosIDState) bool) *chaosIDState { return checkoutIn(0, 8, pred) }
	release := func(s *chaosIDState) {
		st.mu.Lock()
		s.busy = false
		st.mu.Unlock()
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		topic := chaosTopics[rnd.Intn(len(chaosTopics))]
		op := rnd.Intn(100)
		switch {
		case op < 28: // pub, no id
			sendNs := time.Now().UnixNano()
			delay, minDue := pickDelay(rnd, sendNs)
			seq := st.seq.Add(1)
			m := &chaosMsg{seq: seq, body: chaosBody(seq, "", minDue, rnd), topic: topic, kind: "pub", delay: delay, sendNs: sendNs, minDueNs: minDue}
			register(m)
			code, _ := post("/pub?topic="+topic+delay, []byte(m.body))
			record([]*chaosMsg{m}, code)
		case op < 50: // mpub
			sendNs := time.Now().UnixNano()
			delay, minDue := pickDelay(rnd, sendNs)
			n := 1 + rnd.Intn(30)
			var msgs []*chaosMsg
			var lines []string
			for k := 0; k < n; k++ {
				seq := st.seq.Add(1)
				m := &chaosMsg{seq: seq, body: chaosBody(seq, "", minDue, rnd), topic: topic, kind: "mpub", delay: delay, sendNs: sendNs, minDueNs: minDue}
				register(m)
				msgs = append(msgs, m)
				lines = append(lines, m.body)
			}
			code, _ := post("/mpub?topic="+topic+delay, []byte(strings.Join(lines, "\n")))
			record(msgs, code)
		case op < 66: // pub with a new id
			seq := st.seq.Add(1)
			id := fmt.Sprintf("id-%d", seq)
			sendNs := time.Now().UnixNano()
			delay, minDue := pickDelay(rnd, sendNs)
			m := &chaosMsg{seq: seq, body: chaosBody(seq, id, minDue, rnd), topic: topic, id: id, kind: "idpub", delay: delay, sendNs: sendNs, minDueNs: minDue}
			register(m)
			s := &chaosIDState{id: id, body: m, busy: true, dueLo: minDue}
			st.mu.Lock()
			st.ids = append(st.ids, s)
			st.mu.Unlock()
			code, _ := post("/pub?topic="+topic+delay+"&id="+id, []byte(m.body))
			record([]*chaosMsg{m}, code)
			st.mu.Lock()
			s.acked = s.acked || code == 200
			s.busy = false
			st.mu.Unlock()
		case op < 71: // retry an id with the same body (a producer retry)
			s := checkout(func(*chaosIDState) bool { return true })
			if s == nil {
				continue
			}
			m := s.body
			code, _ := post("/pub?topic="+m.topic+m.delay+"&id="+s.id, []byte(m.body))
			now := time.Now().UnixNano()
			st.mu.Lock()
			if code == 200 && m.status != 200 {
				m.status, m.respNs = 200, now
			}
			if code != 400 && code != 404 {
				// With the id no longer retained this schedules the body
				// again, due its delay after now: the final wait covers it.
				st.lateDueNs = max(st.lateDueNs, m.minDueNs, now+m.minDueNs-m.sendNs+int64(time.Millisecond))
			}
			s.acked = s.acked || code == 200
			st.mu.Unlock()
			release(s)
		case op < 76: // dedupe probe: same id, another body, while body1 is surely pending
			s := checkout(func(s *chaosIDState) bool {
				return s.acked && s.body.status == 200 && s.dueLo > time.Now().UnixNano()+int64(800*time.Millisecond)
			})
			if s == nil {
				continue
			}
			seq := st.seq.Add(1)
			sendNs := time.Now().UnixNano()
			delay, minDue := pickDelay(rnd, sendNs)
			m := &chaosMsg{seq: seq, body: chaosBody(seq, s.id, minDue, rnd), topic: topic, id: s.id, kind: "dedupe", delay: delay, sendNs: sendNs, minDueNs: minDue, dedupeOf: s.body.seq}
			register(m)
			code, _ := post("/pub?topic="+topic+delay+"&id="+s.id, []byte(m.body))
			record([]*chaosMsg{m}, code)
			release(s)
		case op < 86: // reschedule an id published earlier (mostly recent ones: pending)
			recent := 400
			if rnd.Intn(4) == 0 {
				recent = 0
			}
			s := checkoutIn(recent, 8, func(s *chaosIDState) bool { return !s.reschedUnknown })
			if s == nil {
				continue
			}
			sendNs := time.Now().UnixNano()
			q, low := pickResched(rnd, sendNs)
			st.mu.Lock()
			r := &chaosResched{id: s.id, q: q, sendNs: sendNs, lowNs: low, cycle: st.cycle, reliable: true}
			st.mu.Unlock()
			code, _ := post("/reschedule?id="+s.id+q, nil)
			r.respNs, r.status = time.Now().UnixNano(), code
			st.mu.Lock()
			st.rescheds = append(st.rescheds, r)
			if r.mayApply() {
				s.dueLo = min(s.dueLo, low)
				st.lateDueNs = max(st.lateDueNs, r.respNs+(low-sendNs)+int64(time.Millisecond))
				if code != 200 {
					s.reschedUnknown = true
				}
			}
			st.mu.Unlock()
			release(s)
		case op < 90: // retained probe: same id, another body, soon after body1's delivery
			now := time.Now().UnixNano()
			s := checkoutIn(400, 24, func(s *chaosIDState) bool {
				if !s.acked || s.body.status != 200 {
					return false
				}
				var last int64
				for _, d := range st.delivered[s.body.body] {
					last = max(last, d.nsqdTs)
				}
				return last > 0 && now-last < int64(chaosIDRetention-1500*time.Millisecond)
			})
			if s == nil {
				continue
			}
			seq := st.seq.Add(1)
			sendNs := time.Now().UnixNano()
			delay, minDue := pickDelay(rnd, sendNs)
			m := &chaosMsg{seq: seq, body: chaosBody(seq, s.id, minDue, rnd), topic: topic, id: s.id, kind: "retained", delay: delay, sendNs: sendNs, minDueNs: minDue, dedupeOf: s.body.seq}
			register(m)
			code, _ := post("/pub?topic="+topic+delay+"&id="+s.id, []byte(m.body))
			record([]*chaosMsg{m}, code)
			st.mu.Lock()
			s.retProbed = true
			st.mu.Unlock()
			release(s)
		default: // cancel an earlier id (any cycle)
			s := checkout(func(*chaosIDState) bool { return true })
			if s == nil {
				continue
			}
			st.mu.Lock()
			s.cancelTr = true
			cycle := st.cycle
			st.mu.Unlock()
			c := &chaosCancel{id: s.id, sendNs: time.Now().UnixNano(), reliable: true, cycle: cycle}
			code, _ := post("/cancel?id="+s.id, nil)
			if code == 200 {
				if p := st.killOnCancel.Swap(nil); p != nil {
					p.Signal(syscall.SIGKILL)
				}
			}
			c.respNs, c.status = time.Now().UnixNano(), code
			st.mu.Lock()
			st.cancels = append(st.cancels, c)
			st.mu.Unlock()
			release(s)
		}
	}
}
