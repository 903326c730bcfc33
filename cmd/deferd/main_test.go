package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
)

// --help lists every flag with its default, in nsq's style.
func TestHelpListsFlags(t *testing.T) {
	var c config
	fs := newFlagSet(&c)
	var out bytes.Buffer
	fs.SetOutput(&out)
	fs.PrintDefaults()
	for _, f := range []string{"http-address", "data-path", "nsqd-tcp-address", "embedded-nsqd-tcp-address",
		"embedded-nsqd-http-address", "max-msg-size", "max-body-size", "max-defer", "fsync", "tick", "pool-size",
		"batch-size", "conns-per-nsqd", "max-pending", "max-pending-bytes", "direct-publish"} {
		if !strings.Contains(out.String(), "-"+f) {
			t.Errorf("--help does not list --%s", f)
		}
	}
	if !strings.Contains(out.String(), `(default "127.0.0.1:4180")`) || !strings.Contains(out.String(), "(default 8760h0m0s)") {
		t.Errorf("--help does not show defaults:\n%s", out.String())
	}
}

func portsFree(addrs ...string) bool {
	for _, a := range addrs {
		l, err := net.Listen("tcp", a)
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// With no flags deferd listens on 127.0.0.1:4180 with an embedded nsqd on
// 127.0.0.1:4150/4151 and data under ./deferd-data; a message goes in over
// HTTP and comes out of the embedded nsqd; SIGTERM exits 0 and keeps the
// pending message for the next start.
func TestDefaultsRunEmbeddedNSQD(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	if !portsFree("127.0.0.1:4180", "127.0.0.1:4190", "127.0.0.1:4150", "127.0.0.1:4151") {
		t.Skip("default ports 4180/4190/4150/4151 are taken on this machine")
	}
	bin := buildDeferd(t)
	dir := t.TempDir()
	run := func() *proc {
		p := startProc(t, dir, bin)
		waitPing(t, "http://127.0.0.1:4180", p)
		return p
	}
	post := func(path, body string) {
		resp, err := http.Post("http://127.0.0.1:4180"+path, "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST %s: %d", path, resp.StatusCode)
		}
	}

	p := run()
	post("/pub?topic=hello&defer=100", "now-ish")
	post("/pub?topic=hello&defer=3000", "after-restart")
	// Let the first go out, so deferd's egress has a connection open at
	// shutdown (nsqd keeps it in the topic across the restart).
	for deadline := time.Now().Add(10 * time.Second); ; {
		var st struct{ Published int }
		if resp, err := http.Get("http://127.0.0.1:4180/stats"); err == nil {
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		if st.Published == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first message was not published\n%s", p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.terminate(t) // before the second one is due
	if strings.Contains(p.log.String(), "ERROR") {
		// deferd's own producers are gone before its nsqd exits.
		t.Fatalf("ERROR in the log of a clean shutdown:\n%s", p.log.String())
	}
	p = run()

	got := make(chan string, 4)
	c, err := nsq.NewConsumer("hello", "t", nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error { got <- string(m.Body); return nil }))
	if err := c.ConnectToNSQD("127.0.0.1:4150"); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	want := map[string]bool{"now-ish": true, "after-restart": true}
	for len(want) > 0 {
		select {
		case b := <-got:
			if !want[b] {
				t.Fatalf("unexpected or duplicate body %q", b)
			}
			delete(want, b)
		case <-time.After(15 * time.Second):
			t.Fatalf("missing %v\n%s", want, p.log.String())
		}
	}
	p.terminate(t)
}

// SIGTERM with clients stalled mid-request (half a header, a body shorter
// than its Content-Length): deferd waits for them at most
// --shutdown-grace and exits; it used to wait forever.
func TestShutdownWithStalledClients(t *testing.T) {
	var c config
	httpAddr := freeAddr(t)
	if err := newFlagSet(&c).Parse([]string{"--http-address", httpAddr, "--data-path", t.TempDir(),
		"--embedded-nsqd-tcp-address", freeAddr(t), "--embedded-nsqd-http-address", freeAddr(t),
		"--tcp-address", "127.0.0.1:0", "--shutdown-grace", "300ms"}); err != nil {
		t.Fatal(err)
	}
	sig := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() { done <- run(c, log.New(io.Discard, "", 0), sig) }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if resp, err := http.Get("http://" + httpAddr + "/ping"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("deferd did not start")
		}
	}
	for _, stalled := range []string{
		"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Le",
		"POST /pub?topic=t HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + strings.Repeat("x", 10000),
	} {
		conn, err := net.Dial("tcp", httpAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := io.WriteString(conn, stalled); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // both are being read
	sig <- syscall.SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("deferd still running 10 s after SIGTERM with a 300ms grace")
	}
}

// Flag values deferd cannot honour are refused at start with the flag's
// name, not replaced by a default or left to fail deep inside; the flag
// --embedded-nsqd-mem-queue-size=0 is accepted (deferd's TestOptionsValidate
// checks it reaches nsqd as 0).
func TestFlagValidation(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // "" = accepted
	}{
		{nil, ""},
		{[]string{"--max-msg-size", "1048576", "--max-body-size", "1048576"}, "--max-body-size"},
		{[]string{"--max-msg-size", "1048576", "--max-body-size", "1052680"}, ""},
		{[]string{"--max-msg-size", "0"}, "--max-msg-size"},
		{[]string{"--tick", "-1ms"}, "--tick"},
		{[]string{"--park-backoff", "-1s"}, "--park-backoff"},
		{[]string{"--compact-interval", "-1s"}, "--compact-interval"},
		{[]string{"--compact-interval", "0"}, ""},
		{[]string{"--embedded-nsqd-mem-queue-size", "-1"}, "--embedded-nsqd-mem-queue-size"},
		{[]string{"--embedded-nsqd-mem-queue-size", "0"}, ""},
		{[]string{"--max-pending", "-5"}, "--max-pending"},
		{[]string{"--shutdown-grace", "0"}, "--shutdown-grace"},
	} {
		var cfg config
		if err := newFlagSet(&cfg).Parse(c.args); err != nil {
			t.Fatal(err)
		}
		err := cfg.validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%v: refused: %v", c.args, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want+" ")):
			t.Errorf("%v: %v, want an error naming %s", c.args, err, c.want)
		}
	}
}

// Every flag-tagged field of deferd.Options is a flag with usage text, and
// every usage text names a flag: bindOptions panics otherwise.
func TestFlagsCoverOptions(t *testing.T) {
	var c config
	fs := newFlagSet(&c)
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n != len(usage)+1 { // + --version
		t.Fatalf("%d flags, %d usage texts: a usage text names no Options field", n, len(usage))
	}
}

// A flag given 0 that deferd would replace by a default without a word is
// refused (--max-defer 0 meant one year while /info said "0s").
func TestFlagZeroRefused(t *testing.T) {
	for _, f := range []string{"max-defer", "tick", "retry-backoff", "park-backoff", "fsync-interval",
		"batch-size", "conns-per-nsqd", "segment-size"} {
		var cfg config
		if err := newFlagSet(&cfg).Parse([]string{"--" + f, "0"}); err != nil {
			t.Fatal(err)
		}
		if err := cfg.validate(); err == nil || !strings.Contains(err.Error(), "--"+f+" ") {
			t.Errorf("--%s 0: accepted (%v), but deferd would replace it by a default without a word", f, err)
		}
	}
	var cfg config // --compact-interval 0 disables compaction: allowed
	if err := newFlagSet(&cfg).Parse([]string{"--compact-interval", "0"}); err != nil {
		t.Fatal(err)
	}
	if err := cfg.validate(); err != nil {
		t.Errorf("--compact-interval 0: %v", err)
	}
}
