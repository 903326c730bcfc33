package deferd_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// nsqjsScript is the nsqjs producer script; nsqjs itself is installed
// beside it (node_modules) by .ci/install-nsqjs.sh.
const nsqjsScript = "ingest/testdata/nsqjs/publish.js"

// needNSQJS returns the node binary, or skips the test (fails it when
// CI=true) if node or the pinned nsqjs is not installed.
func needNSQJS(t *testing.T) string {
	t.Helper()
	missing := func(what string) {
		msg := what + " (run .ci/install-nsqjs.sh)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip("skipped: " + msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node not on PATH")
	}
	pkg := filepath.Join(filepath.Dir(nsqjsScript), "node_modules", "nsqjs", "package.json")
	if _, err := os.Stat(pkg); err != nil {
		missing("nsqjs not installed: " + err.Error())
	}
	return node
}

// nsqjs's Writer, a producer deferd's authors did not write, publishes
// through a Scheduler's TCP listener to a real nsqd: PUB and MPUB due now,
// DPUB of 1.5 s, and DPUB of 2 h (more than nsqd's own 1 h cap) all get
// OK; a go-nsq Consumer on the nsqd receives "hello", "a", "b" and then
// "later", the last never before 1.5 s after nsqjs wrote it, and the 2 h
// message stays pending.
func TestNSQJSWriterThroughTCP(t *testing.T) {
	node := needNSQJS(t)
	nsqd := nsqdnodetest.Start(t, nsqdnode.Config{})

	type arrival struct {
		body string
		at   time.Time
	}
	var (
		mu   sync.Mutex
		got  []arrival
		more = make(chan struct{}, 16)
	)
	c, err := nsq.NewConsumer("js", "test", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		mu.Lock()
		got = append(got, arrival{string(m.Body), time.Now()})
		mu.Unlock()
		select {
		case more <- struct{}{}:
		default:
		}
		return nil
	}))
	if err := c.ConnectToNSQD(nsqd.TCPAddr); err != nil {
		t.Fatal(err)
	}
	defer func() { c.Stop(); <-c.StopChan }()

	opts := deferd.NewOptions()
	opts.DataPath = t.TempDir()
	opts.NSQDTCPAddresses = []string{nsqd.TCPAddr}
	opts.TCPAddress = "127.0.0.1:0"
	opts.Logf = t.Logf
	s, err := deferd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	srv, err := s.ListenTCP()
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve()
	defer srv.Shutdown()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, node, nsqjsScript, srv.Addr(), "js")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	t.Logf("publish.js:\n%s", out)
	if err != nil {
		t.Fatalf("publish.js: %v\nstderr:\n%s", err, stderr.Bytes())
	}
	var deferAt time.Time
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if ms, ok := strings.CutPrefix(l, "defer at "); ok {
			n, err := strconv.ParseInt(ms, 10, 64)
			if err != nil {
				t.Fatalf("publish.js: %q", l)
			}
			deferAt = time.UnixMilli(n)
			continue
		}
		lines = append(lines, l)
	}
	want := []string{"ready", "publish ok", "mpublish ok", "defer ok", "defer2h ok", "closed"}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") || deferAt.IsZero() {
		t.Fatalf("publish.js printed %q (defer at %v), want %q", lines, deferAt, want)
	}

	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= 4 {
			break
		}
		select {
		case <-more:
		case <-ctx.Done():
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("at the consumer after 20 s: %v, want hello, a, b, later", got)
		}
	}
	// Whatever else might arrive would come with the next delivery: the
	// only pending message is due in 2 h.
	mu.Lock()
	defer mu.Unlock()
	var bodies []string
	for _, a := range got {
		bodies = append(bodies, a.body)
	}
	if strings.Join(bodies, ",") != "hello,a,b,later" {
		t.Fatalf("at the consumer: %q, want hello, a, b, later", bodies)
	}
	if early := deferAt.Add(1500 * time.Millisecond).Sub(got[3].at); early > 0 {
		t.Fatalf("the 1.5 s DPUB arrived %v early", early)
	}
	t.Logf("the 1.5 s DPUB arrived %v after nsqjs wrote it", got[3].at.Sub(deferAt))
	// The consumer can see "later" before the scheduler has counted
	// nsqd's OK for it.
	for s.Pending() != 1 {
		select {
		case <-ctx.Done():
			t.Fatalf("pending %d, want 1 (the 2 h DPUB)", s.Pending())
		case <-time.After(5 * time.Millisecond):
		}
	}
	if st := s.Stats(); st.Early != 0 {
		t.Fatalf("delivered_early %d", st.Early)
	}
}
