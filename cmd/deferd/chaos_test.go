package main

// Chaos test: many kill -9 / kill-during-shutdown / nsqd-down cycles of the
// deferd binary on one persistent data dir, under concurrent mixed load, with
// an external in-process nsqd that outlives deferd and one go-nsq consumer per
// topic for the whole run. At the end everything is let come due and checked:
//
//   - every acknowledged message delivered at least once, body unchanged;
//   - nothing published to nsqd (nsqd's own message timestamp) before a
//     conservative lower bound of its due time;
//   - nothing whose id got a 200 cancel published to nsqd after that 200;
//   - a /pub whose id was pending (dedupe) never delivered;
//   - nothing delivered that was never sent (corruption).
//
// Run (about 2-4 minutes):
//
//	DEFERD_CHAOS=1 go test -run TestChaos -count=1 -timeout 15m -v ./cmd/deferd
//
// Knobs: CHAOS_CYCLES (default 25), CHAOS_SEED (default: time), CHAOS_BIN (a
// prebuilt deferd; default: built into a temp dir).

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
)

type chaosMsg struct {
	seq      int64
	body     string
	topic    string
	id       string
	kind     string // pub, mpub, idpub, idretry, dedupe
	delay    string // query suffix
	sendNs   int64
	respNs   int64
	minDueNs int64
	status   int // 0: transport error (unknown outcome)
	cycle    int
	// dedupe probe: body1's seq; the probe must not be delivered if
	// body1 was pending for the whole probe request.
	dedupeOf int64
}

type chaosCancel struct {
	id       string
	sendNs   int64
	respNs   int64
	status   int
	cycle    int
	reliable bool // false when a fault we injected may have destroyed its mark
}

type chaosDelivery struct {
	nsqdTs int64 // nsqd's message timestamp: when nsqd accepted the publish
	recvNs int64
}

type chaosIDState struct {
	id       string
	body     *chaosMsg // the body used for this id (retries resend it)
	acked    bool
	cancelTr bool // a cancel was attempted: never publish the id again
	busy     bool
}

type chaosState struct {
	mu        sync.Mutex
	sent      map[string]*chaosMsg // body -> msg
	bySeq     map[int64]*chaosMsg
	cancels   []*chaosCancel
	ids       []*chaosIDState
	delivered map[string][]chaosDelivery
	truncLost map[string]bool // bodies destroyed by an injected truncation
	seq       atomic.Int64
	cycle     int
	// killOnCancel, when set, is SIGKILLed by the first worker whose
	// cancel gets a 200 (kill mode "kill9-after-cancel").
	killOnCancel atomic.Pointer[os.Process]
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

func envInt(name string, def int64) int64 {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err == nil {
			return n
		}
	}
	return def
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

func TestChaos(t *testing.T) {
	if os.Getenv("DEFERD_CHAOS") == "" {
		t.Skip("set DEFERD_CHAOS=1 to run the chaos test")
	}
	seed := envInt("CHAOS_SEED", time.Now().UnixNano())
	cycles := int(envInt("CHAOS_CYCLES", 25))
	t.Logf("seed %d, %d cycles", seed, cycles)
	rnd := rand.New(rand.NewSource(seed))

	bin := os.Getenv("CHAOS_BIN")
	if bin == "" {
		bin = buildDeferd(t)
	}
	root := t.TempDir()
	data := filepath.Join(root, "deferd")
	nsqdData := filepath.Join(root, "nsqd")
	nsqdCfg := nsqdnode.Config{TCPAddress: freeAddr(t), HTTPAddress: freeAddr(t), DataPath: nsqdData}
	node, err := nsqdnode.Start(nsqdCfg)
	if err != nil {
		t.Fatal(err)
	}
	nsqdUp := true
	defer func() {
		if nsqdUp {
			node.Exit()
		}
	}()
	addr := freeAddr(t)
	base := "http://" + addr

	st := &chaosState{
		sent:      map[string]*chaosMsg{},
		bySeq:     map[int64]*chaosMsg{},
		delivered: map[string][]chaosDelivery{},
		truncLost: map[string]bool{},
	}
	for _, topic := range chaosTopics {
		cfg := nsq.NewConfig()
		cfg.MaxInFlight = 2500
		cfg.LookupdPollInterval = 200 * time.Millisecond // reconnect backoff to a direct nsqd
		c, err := nsq.NewConsumer(topic, "chaos", cfg)
		if err != nil {
			t.Fatal(err)
		}
		c.SetLoggerLevel(nsq.LogLevelError)
		c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
			now := time.Now().UnixNano()
			b := string(m.Body)
			st.mu.Lock()
			st.delivered[b] = append(st.delivered[b], chaosDelivery{nsqdTs: m.Timestamp, recvNs: now})
			st.mu.Unlock()
			return nil
		}))
		if err := c.ConnectToNSQD(nsqdCfg.TCPAddress); err != nil {
			t.Fatal(err)
		}
		defer c.Stop()
	}

	var procs []*proc
	defer func() {
		if t.Failed() && len(procs) > 0 {
			t.Logf("last deferd log:\n%s", tail(procs[len(procs)-1].log.String(), 6000))
		}
	}()
	startArgs := func(final bool) []string {
		fsync := []string{"always", "interval", "never"}[rnd.Intn(3)]
		args := []string{
			"--http-address", addr, "--data-path", data,
			"--nsqd-tcp-address", nsqdCfg.TCPAddress,
			"--segment-size", strconv.Itoa(16384 + rnd.Intn(65536)),
			"--compact-interval", strconv.Itoa(50+rnd.Intn(300)) + "ms",
			"--retry-backoff", "200ms",
			"--park-backoff", "1s",
			"--fsync", fsync,
			"--task-size", strconv.Itoa(1 + rnd.Intn(100)),
			"--batch-size", strconv.Itoa(1 + rnd.Intn(60)),
			"--pool-size", strconv.Itoa(2 + rnd.Intn(16)),
			"--conns-per-nsqd", strconv.Itoa(1 + rnd.Intn(4)),
			"--shutdown-grace", "2s",
		}
		if !final && rnd.Intn(4) == 0 {
			args = append(args, "--direct-publish=false")
		}
		return args
	}

	stats := map[string]float64{}
	var kinds []string
	for cycle := 0; cycle < cycles; cycle++ {
		st.mu.Lock()
		st.cycle = cycle
		st.mu.Unlock()
		// What happens this cycle.
		r := rnd.Intn(100)
		kill := "kill9"
		switch {
		case r < 20:
			kill = "term+kill9"
		case r < 25:
			kill = "term"
		case r < 40:
			kill = "nsqd-down+kill9"
		case r < 55:
			kill = "kill9-after-cancel"
		}
		// Every kind at least once in a run of 10+ cycles.
		switch cycle {
		case 2:
			kill = "term"
		case 3:
			kill = "kill9-after-cancel"
		case 5:
			kill = "nsqd-down+kill9"
		}
		nsqdDownAtStart := kill == "nsqd-down+kill9" && rnd.Intn(2) == 0
		if nsqdDownAtStart {
			node.Exit()
			nsqdUp = false
		}
		p := startDeferd(t, bin, startArgs(false)...)
		procs = append(procs, p)
		waitPing(t, base, p)
		rec := recoveryOf(base)
		if rec != "" {
			t.Logf("cycle %d recovery: %s", cycle, rec)
		}

		stop := make(chan struct{})
		var wg sync.WaitGroup
		nw := 4 + rnd.Intn(4)
		for w := 0; w < nw; w++ {
			wg.Add(1)
			wseed := rnd.Int63()
			go func() {
				defer wg.Done()
				chaosWorker(st, base, rand.New(rand.NewSource(wseed)), stop)
			}()
		}
		loadFor := time.Duration(200+rnd.Intn(1800)) * time.Millisecond
		if kill == "nsqd-down+kill9" && !nsqdDownAtStart {
			time.Sleep(loadFor / 3)
			node.Exit()
			nsqdUp = false
			time.Sleep(loadFor - loadFor/3)
		} else if nsqdDownAtStart {
			time.Sleep(loadFor / 2)
			if node, err = nsqdnode.Start(nsqdCfg); err != nil {
				t.Fatalf("restart nsqd: %v", err)
			}
			nsqdUp = true
			time.Sleep(loadFor - loadFor/2)
		} else {
			time.Sleep(loadFor)
		}
		if kill == "kill9-after-cancel" {
			st.killOnCancel.Store(p.cmd.Process)
			select { // a worker kills it; else fall back after 3s
			case <-p.done:
			case <-time.After(3 * time.Second):
			}
			st.killOnCancel.Store(nil)
		}
		if s := statsOf(base); s != nil {
			for _, k := range []string{"journal_moved", "published_direct", "direct_journaled", "retried", "cancelled", "delivered_early"} {
				if v, ok := s[k].(float64); ok {
					stats[k] += v
				}
			}
			if j, ok := s["journal"].(map[string]any); ok {
				if v, ok := j["deleted"].(float64); ok {
					stats["segments_deleted"] += v
				}
			}
		}
		switch kill {
		case "kill9", "nsqd-down+kill9", "kill9-after-cancel":
			p.cmd.Process.Signal(syscall.SIGKILL)
		case "term+kill9":
			p.cmd.Process.Signal(syscall.SIGTERM)
			time.Sleep(time.Duration(rnd.Intn(40)) * time.Millisecond)
			p.cmd.Process.Signal(syscall.SIGKILL)
		case "term":
			p.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("cycle %d: deferd did not exit after %s", cycle, kill)
		}
		close(stop)
		wg.Wait()
		if kill == "term" && p.err != nil {
			t.Errorf("cycle %d: graceful SIGTERM exit: %v\n%s", cycle, p.err, tail(p.log.String(), 3000))
		}
		if strings.Contains(p.log.String(), "BUG") || strings.Contains(p.log.String(), "panic") {
			t.Errorf("cycle %d: deferd log has BUG/panic:\n%s", cycle, tail(p.log.String(), 3000))
		}
		// Faults on disk between cycles.
		fault := ""
		if cycle == 6 {
			fault = injectTruncate(t, st, filepath.Join(data, "journal"), rnd, cycle)
		} else if cycle == 7 {
			fault = injectGarbage(t, filepath.Join(data, "journal"), rnd)
		} else if rnd.Intn(100) < 12 {
			fault = injectGarbage(t, filepath.Join(data, "journal"), rnd)
		} else if rnd.Intn(100) < 6 {
			fault = injectTruncate(t, st, filepath.Join(data, "journal"), rnd, cycle)
		}
		if !nsqdUp {
			time.Sleep(time.Duration(rnd.Intn(300)) * time.Millisecond)
			if node, err = nsqdnode.Start(nsqdCfg); err != nil {
				t.Fatalf("restart nsqd: %v", err)
			}
			nsqdUp = true
		}
		kinds = append(kinds, kill+fault)
		st.mu.Lock()
		t.Logf("cycle %d: %s%s after %v; sent %d, deliveries %d", cycle, kill, fault, loadFor, len(st.sent), len(st.delivered))
		st.mu.Unlock()
	}

	// Final incarnation: let everything come due.
	p := startDeferd(t, bin, startArgs(true)...)
	procs = append(procs, p)
	waitPing(t, base, p)
	if rec := recoveryOf(base); rec != "" {
		t.Logf("final recovery: %s", rec)
	}
	st.mu.Lock()
	var maxDue int64
	for _, m := range st.sent {
		maxDue = max(maxDue, m.minDueNs)
	}
	st.mu.Unlock()
	wait := time.Until(time.Unix(0, maxDue)) + 3*time.Second
	if wait > 0 {
		t.Logf("waiting %v for the last messages to come due", wait.Round(time.Millisecond))
		time.Sleep(wait)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		missing := chaosMissing(st)
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	time.Sleep(2 * time.Second) // late duplicates / late forbidden deliveries
	final := statsOf(base)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("final SIGTERM exit: %v", p.err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("final deferd did not exit on SIGTERM")
	}
	chaosCheck(t, st, final, stats, kinds)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func statsOf(base string) map[string]any {
	c := &http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(base + "/stats")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var m map[string]any
	if json.NewDecoder(resp.Body).Decode(&m) != nil {
		return nil
	}
	return m
}

func recoveryOf(base string) string {
	s := statsOf(base)
	if s == nil {
		return ""
	}
	rec, _ := s["recovery"].(map[string]any)
	if rec == nil {
		return ""
	}
	b, _ := json.Marshal(map[string]any{"live": rec["live"], "records": rec["records"], "segments": rec["segments"], "torn": rec["torn_tails"], "trunc": rec["truncated_bytes"], "corrupt": rec["corrupt"]})
	return string(b)
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
	// checkout an id for exclusive use; pred filters.
	checkout := func(pred func(s *chaosIDState) bool) *chaosIDState {
		st.mu.Lock()
		defer st.mu.Unlock()
		n := len(st.ids)
		if n == 0 {
			return nil
		}
		for k := 0; k < 8; k++ {
			s := st.ids[rnd.Intn(n)]
			if !s.busy && !s.cancelTr && pred(s) {
				s.busy = true
				return s
			}
		}
		return nil
	}
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
		case op < 33: // pub, no id
			sendNs := time.Now().UnixNano()
			delay, minDue := pickDelay(rnd, sendNs)
			seq := st.seq.Add(1)
			m := &chaosMsg{seq: seq, body: chaosBody(seq, "", minDue, rnd), topic: topic, kind: "pub", delay: delay, sendNs: sendNs, minDueNs: minDue}
			register(m)
			code, _ := post("/pub?topic="+topic+delay, []byte(m.body))
			record([]*chaosMsg{m}, code)
		case op < 58: // mpub
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
		case op < 73: // pub with a new id
			seq := st.seq.Add(1)
			id := fmt.Sprintf("id-%d", seq)
			sendNs := time.Now().UnixNano()
			delay, minDue := pickDelay(rnd, sendNs)
			m := &chaosMsg{seq: seq, body: chaosBody(seq, id, minDue, rnd), topic: topic, id: id, kind: "idpub", delay: delay, sendNs: sendNs, minDueNs: minDue}
			register(m)
			s := &chaosIDState{id: id, body: m, busy: true}
			st.mu.Lock()
			st.ids = append(st.ids, s)
			st.mu.Unlock()
			code, _ := post("/pub?topic="+topic+delay+"&id="+id, []byte(m.body))
			record([]*chaosMsg{m}, code)
			st.mu.Lock()
			s.acked = s.acked || code == 200
			s.busy = false
			st.mu.Unlock()
		case op < 79: // retry an id with the same body (a producer retry)
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
			s.acked = s.acked || code == 200
			st.mu.Unlock()
			release(s)
		case op < 85: // dedupe probe: same id, another body, while body1 is surely pending
			s := checkout(func(s *chaosIDState) bool {
				return s.acked && s.body.status == 200 && s.body.minDueNs > time.Now().UnixNano()+int64(800*time.Millisecond)
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

// chaosRequired reports whether m must be delivered.
func chaosRequired(st *chaosState, cancelled map[string]bool, m *chaosMsg) bool {
	if m.status != 200 || m.kind == "dedupe" || st.truncLost[m.body] {
		return false
	}
	if m.id != "" && cancelled[m.id] {
		return false
	}
	return true
}

func chaosCancelledIDs(st *chaosState) map[string]bool {
	c := map[string]bool{}
	for _, x := range st.cancels {
		if x.status != 404 { // 200, 409, 503, transport error: may have removed it
			c[x.id] = true
		}
	}
	return c
}

func chaosMissing(st *chaosState) []*chaosMsg {
	st.mu.Lock()
	defer st.mu.Unlock()
	cancelled := chaosCancelledIDs(st)
	var out []*chaosMsg
	for _, m := range st.sent {
		if chaosRequired(st, cancelled, m) && len(st.delivered[m.body]) == 0 {
			out = append(out, m)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].seq < out[b].seq })
	return out
}

func chaosCheck(t *testing.T, st *chaosState, final map[string]any, stats map[string]float64, kinds []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	cancelled := chaosCancelledIDs(st)
	var (
		nSent, nAcked, nRequired, nDeliv, dups int
		byKind                                 = map[string]int{}
		statusCount                            = map[int]int{}
		violations                             []string
	)
	add := func(format string, args ...any) {
		if len(violations) < 60 {
			violations = append(violations, fmt.Sprintf(format, args...))
		} else if len(violations) == 60 {
			violations = append(violations, "... (more)")
		}
	}
	var lost []*chaosMsg
	for _, m := range st.sent {
		nSent++
		statusCount[m.status]++
		if m.status == 200 {
			nAcked++
			byKind[m.kind+m.delayKind()]++
		}
		if chaosRequired(st, cancelled, m) {
			nRequired++
			if len(st.delivered[m.body]) == 0 {
				lost = append(lost, m)
			}
		}
	}
	sort.Slice(lost, func(a, b int) bool { return lost[a].seq < lost[b].seq })
	for _, m := range lost {
		add("LOST: seq %d kind %s%s id %q topic %s cycle %d sent %s resp %s (+%v) minDue %s", m.seq, m.kind, m.delay, m.id, m.topic, m.cycle,
			tfmt(m.sendNs), tfmt(m.respNs), time.Duration(m.respNs-m.sendNs), tfmt(m.minDueNs))
	}
	for body, ds := range st.delivered {
		nDeliv += len(ds)
		dups += len(ds) - 1
		m, ok := st.sent[body]
		if !ok {
			add("UNKNOWN BODY delivered (never sent, crc ok %v): %q", chaosBodyOK(body), tail(body, 200))
			continue
		}
		for _, d := range ds {
			if d.nsqdTs < m.minDueNs {
				add("EARLY: seq %d kind %s%s cycle %d: nsqd got it %v before its due lower bound (sent %s, minDue %s, nsqd ts %s)",
					m.seq, m.kind, m.delay, m.cycle, time.Duration(m.minDueNs-d.nsqdTs), tfmt(m.sendNs), tfmt(m.minDueNs), tfmt(d.nsqdTs))
			}
		}
		if m.kind == "dedupe" && m.status == 200 {
			b1 := st.bySeq[m.dedupeOf]
			first := int64(1<<63 - 1)
			for _, d := range st.delivered[b1.body] {
				first = min(first, d.nsqdTs)
			}
			if first > m.respNs {
				add("DEDUPE: seq %d (id %s) delivered though its id's first body seq %d was pending for the whole request (first nsqd ts %s > resp %s)",
					m.seq, m.id, b1.seq, tfmt(first), tfmt(m.respNs))
			}
		}
	}
	// Cancel: nothing with the id published to nsqd after a reliable 200.
	bodiesByID := map[string][]*chaosMsg{}
	for _, m := range st.sent {
		if m.id != "" {
			bodiesByID[m.id] = append(bodiesByID[m.id], m)
		}
	}
	nCancel200 := 0
	for _, c := range st.cancels {
		if c.status != 200 {
			continue
		}
		nCancel200++
		if !c.reliable {
			continue
		}
		for _, m := range bodiesByID[c.id] {
			for _, d := range st.delivered[m.body] {
				if d.nsqdTs > c.respNs {
					add("CANCELLED DELIVERED: id %s (seq %d, %s%s, cycle %d) cancel 200 in cycle %d at %s, published to nsqd %v later at %s (minDue %s)",
						c.id, m.seq, m.kind, m.delay, m.cycle, c.cycle, tfmt(c.respNs), time.Duration(d.nsqdTs-c.respNs), tfmt(d.nsqdTs), tfmt(m.minDueNs))
				}
			}
		}
	}
	cancelStatus := map[int]int{}
	for _, c := range st.cancels {
		cancelStatus[c.status]++
	}
	kindCount := map[string]int{}
	for _, k := range kinds {
		kindCount[k]++
	}
	t.Logf("coverage: cycles %v; messages sent %d (status %v), acked %d, required %d, deliveries %d (duplicates %d); cancels %v; truncation-lost %d; acked by kind %v; deferd stats summed over cycles %v",
		kindCount, nSent, statusCount, nAcked, nRequired, nDeliv, dups, cancelStatus, len(st.truncLost), byKind, stats)
	if final != nil {
		t.Logf("final: pending %v published %v early %v recovery %v", final["pending"], final["published"], final["delivered_early"], final["recovery"])
		if p, _ := final["pending"].(float64); p != 0 {
			add("final pending %v != 0 after everything came due", p)
		}
	}
	for _, v := range violations {
		t.Error(v)
	}
}

func (m *chaosMsg) delayKind() string {
	switch {
	case m.delay == "" || m.delay == "&defer=0":
		return "/now"
	case strings.HasPrefix(m.delay, "&at="):
		return "/at"
	default:
		return "/defer"
	}
}

func tfmt(ns int64) string { return time.Unix(0, ns).Format("15:04:05.000000") }

// lastSegment returns the path of the highest journal segment.
func lastSegment(dir string) string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".seg") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	return filepath.Join(dir, names[len(names)-1])
}

// injectGarbage appends bytes that are not a valid frame to the last
// segment: a torn tail to be truncated, nothing lost.
func injectGarbage(t *testing.T, dir string, rnd *rand.Rand) string {
	path := lastSegment(dir)
	if path == "" {
		return ""
	}
	n := 1 + rnd.Intn(300)
	g := make([]byte, n)
	switch rnd.Intn(3) {
	case 0: // zeros (a preallocated / partially written end)
	case 1:
		rnd.Read(g)
	default: // a plausible header with a bad CRC
		rnd.Read(g)
		if n >= 8 {
			binary.LittleEndian.PutUint32(g, uint32(n-8+rnd.Intn(2)*100))
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(g)
	f.Close()
	return fmt.Sprintf("+garbage(%d B on %s)", n, filepath.Base(path))
}

// injectTruncate cuts the end of the last segment. The messages whose
// records are cut are lost by our doing (excluded from the loss check), and
// cancel marks may be cut too: the cancels of the incarnation just ended
// are excluded from the cancel check.
func injectTruncate(t *testing.T, st *chaosState, dir string, rnd *rand.Rand, cycle int) string {
	path := lastSegment(dir)
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return ""
	}
	cut := int64(1 + rnd.Intn(min(len(data), 400)))
	keep := int64(len(data)) - cut
	// Frames that end past keep are lost.
	off := int64(0)
	var lostRegion []byte
	for off+8 <= int64(len(data)) {
		l := int64(binary.LittleEndian.Uint32(data[off:]))
		end := off + 8 + l
		if end > int64(len(data)) {
			break
		}
		if end > keep {
			lostRegion = append(lostRegion, data[off:end]...)
		}
		off = end
	}
	if err := os.Truncate(path, keep); err != nil {
		t.Fatal(err)
	}
	// Cancel marks in the cut region: map their keys to ids through the
	// message records of every segment still on disk.
	cutIDs := map[string]bool{}
	if keys := doneKeysIn(lostRegion); len(keys) > 0 {
		ids := keyIDs(dir)
		for _, k := range keys {
			if id := ids[k]; id != "" {
				cutIDs[id] = true
			}
		}
	}
	st.mu.Lock()
	n := 0
	for b := range st.sent {
		if bytes.Contains(lostRegion, []byte(b)) {
			st.truncLost[b] = true
			n++
		}
	}
	for _, c := range st.cancels {
		if cutIDs[c.id] {
			c.reliable = false
		}
	}
	st.mu.Unlock()
	return fmt.Sprintf("+truncate(%d B of %s, %d bodies cut)", cut, filepath.Base(path), n)
}

type segKey struct{ seg, ord uint32 }

// frames calls fn for each complete frame of data.
func frames(data []byte, fn func(typ byte, payload []byte)) {
	for off := 0; off+9 <= len(data); {
		l := int(binary.LittleEndian.Uint32(data[off:]))
		if l < 1 || off+8+l > len(data) {
			return
		}
		fn(data[off+8], data[off+9:off+8+l])
		off += 8 + l
	}
}

// doneKeysIn returns the keys of the Cancelled Done records in data.
func doneKeysIn(data []byte) []segKey {
	var keys []segKey
	frames(data, func(typ byte, p []byte) {
		if typ != 2 || len(p) < 1 || p[0] != 2 {
			return
		}
		for k := 1; k+8 <= len(p); k += 8 {
			keys = append(keys, segKey{binary.LittleEndian.Uint32(p[k:]), binary.LittleEndian.Uint32(p[k+4:])})
		}
	})
	return keys
}

// keyIDs maps the keys of the message records in dir's segments to ids.
func keyIDs(dir string) map[segKey]string {
	out := map[segKey]string{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".seg") {
			continue
		}
		seg, err := strconv.ParseUint(strings.TrimSuffix(name, ".seg"), 10, 32)
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		frames(data, func(typ byte, p []byte) {
			if typ != 1 && typ != 3 || len(p) < 4 {
				return
			}
			ord := binary.LittleEndian.Uint32(p)
			q := p[4:]
			if typ == 3 {
				q = q[8:]
			}
			q = q[8:] // due
			n, k := binary.Uvarint(q)
			if k <= 0 || int(n) > len(q)-k {
				return
			}
			out[segKey{uint32(seg), ord}] = string(q[k : k+int(n)])
		})
	}
	return out
}
