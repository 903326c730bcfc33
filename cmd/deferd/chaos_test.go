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
//   - nothing delivered that was never sent (corruption);
//   - nothing published before its latest rescheduled time: after a 200
//     /reschedule (sent at S, new due at least L), no delivery of the id
//     at or after S is before L, until the id's next reschedule that may
//     have applied (a 404 / 409 changes nothing);
//   - no retained id scheduled twice: deferd runs with --id-retention
//     (chaosIDRetention), and a /pub of an id with a new body, sent after
//     a delivery of the id's message and answered 200 within the window
//     from it, is never delivered.
//
// A message rescheduled earlier (defer=0: run now) may of course come
// before its first due time: the "never early" bound of an id's messages
// is the lowest of its due time and every reschedule that may have applied.
//
// Run (about 2-4 minutes):
//
//	DEFERD_CHAOS=1 go test -run TestChaos -count=1 -timeout 15m -v ./cmd/deferd
//
// Knobs: CHAOS_CYCLES (default 25), CHAOS_SEED (default: time), CHAOS_BIN (a
// prebuilt deferd; default: built into a temp dir).
//
// The test is in four files: this one (the test, its state and the cycle
// loop), chaos_load_test.go (what the workers send), chaos_faults_test.go
// (the damage done to the journal between cycles) and chaos_checks_test.go
// (what is verified at the end).

import (
	"encoding/json"
	"math/rand"
	"net/http"
	"os"
	"path/filepath"
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

type chaosDelivery struct {
	nsqdTs int64 // nsqd's message timestamp: when nsqd accepted the publish
	recvNs int64
}

type chaosState struct {
	mu        sync.Mutex
	sent      map[string]*chaosMsg // body -> msg
	bySeq     map[int64]*chaosMsg
	cancels   []*chaosCancel
	rescheds  []*chaosResched
	ids       []*chaosIDState
	delivered map[string][]chaosDelivery
	truncLost map[string]bool // bodies destroyed by an injected truncation
	// retUnreliable: ids with a record in a region an injected truncation
	// cut (their retention record may be gone).
	retUnreliable map[string]bool
	// lateDueNs: an upper bound of the latest due time of what
	// reschedules and id retries (after retention) may have scheduled.
	lateDueNs int64
	seq       atomic.Int64
	cycle     int
	// killOnCancel, when set, is SIGKILLed by the first worker whose
	// cancel gets a 200 (kill mode "kill9-after-cancel").
	killOnCancel atomic.Pointer[os.Process]
}

// chaosIDRetention is deferd's --id-retention in the chaos test: much
// shorter than the run, so ids are both retained and forgotten.
const chaosIDRetention = 3 * time.Second

func envInt(name string, def int64) int64 {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err == nil {
			return n
		}
	}
	return def
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

		retUnreliable: map[string]bool{},
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
			"--id-retention", chaosIDRetention.String(),
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
			for _, k := range []string{"journal_moved", "published_direct", "direct_journaled", "retried", "cancelled", "rescheduled", "delivered_early"} {
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
	maxDue = max(maxDue, st.lateDueNs)
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
