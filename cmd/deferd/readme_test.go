//go:build unix

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The commands of README.md's "Try it" and of the "More:" block after it
// work as written: the test reads them from README.md (an edited command
// is the one it runs), runs them with sh against the binary they build,
// and checks each documented answer. If the default ports are taken,
// deferd gets free ones by flag and the commands' addresses are rewritten
// to them.
//
// Curl lines run with the real curl when it is on PATH (forced off by
// DEFERD_README_NO_CURL=1); otherwise the shell still expands the line (a
// curl shell function records the arguments and stdin) and the test sends
// the request itself from curl's -d/--data-binary/-X/-H and URL.
func TestREADMECommands(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary and nsq_tail")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	tryAt := strings.Index(string(readme), "\n## Try it\n")
	if tryAt < 0 {
		t.Fatal(`README.md has no "## Try it" section`)
	}
	try := shBlock(t, string(readme), tryAt, "## Try it")
	moreAt := strings.Index(string(readme)[tryAt:], "\nMore:\n")
	if moreAt < 0 {
		t.Fatal(`README.md has no "More:" after "## Try it"`)
	}
	more := shBlock(t, string(readme), tryAt+moreAt, "More:")

	// Addresses: the defaults when they are free, else free ones.
	defaults := []struct{ addr, flag string }{
		{"127.0.0.1:4180", "--http-address"},
		{"127.0.0.1:4190", "--tcp-address"},
		{"127.0.0.1:4150", "--embedded-nsqd-tcp-address"},
		{"127.0.0.1:4151", "--embedded-nsqd-http-address"},
	}
	addr := map[string]string{}
	var extra []string
	var rewrite []string
	free := portsFree(defaults[0].addr, defaults[1].addr, defaults[2].addr, defaults[3].addr)
	for _, d := range defaults {
		addr[d.addr] = d.addr
		if !free {
			addr[d.addr] = freeAddr(t)
			extra = append(extra, d.flag, addr[d.addr])
			rewrite = append(rewrite, d.addr, addr[d.addr])
		}
	}
	if !free {
		t.Logf("default ports 4180/4190/4150/4151 are taken: deferd runs on %v and the commands are rewritten to them", extra)
	}
	rw := strings.NewReplacer(rewrite...)
	base := "http://" + addr["127.0.0.1:4180"]
	nsqdHTTP := addr["127.0.0.1:4151"]

	var startLine, firstCurl, tailLine string
	for _, l := range try {
		switch {
		case strings.HasPrefix(l, "go build "):
			startLine = l
		case strings.HasPrefix(l, "go tool nsq_tail "):
			tailLine = l
		case curlWord.MatchString(l) && firstCurl == "":
			firstCurl = l
		default:
			t.Fatalf("README.md, Try it: a line this test does not know how to check (teach TestREADMECommands): %q", l)
		}
	}
	if startLine == "" || firstCurl == "" || tailLine == "" {
		t.Fatalf("README.md, Try it: want a go build line, a curl line and a go tool nsq_tail line; got %q", try)
	}

	// go build -o deferd ./cmd/deferd && ./deferd &   (in a temporary
	// directory, not the repo: the binary and deferd-data go there)
	m := regexp.MustCompile(`^go build -o (\S+) (\S+) && \./(\S+)(.*?)\s*&\s*(#.*)?$`).FindStringSubmatch(startLine)
	if m == nil || m[1] != m[3] {
		t.Fatalf("README.md, Try it: the start line is not `go build -o NAME PKG && ./NAME [ARGS] &`: %q", startLine)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, m[1])
	build := exec.Command("go", "build", "-o", bin, m[2])
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("%s (in %s): %v\n%s", startLine, root, err, out)
	}
	args := append(shellWords(t, rw.Replace(m[4])), extra...)
	p := startProc(t, dir, bin, args...)
	waitPing(t, base, p)

	// The nsq_tail line, started before the curl (the README gives them
	// one after the other; here go tool's start-up, which may build
	// nsq_tail, must not count in the five seconds).
	tail := startTail(t, root, rw.Replace(tailLine))
	topic := expandCurl(t, root, rw.Replace(firstCurl)).url.Query().Get("topic")
	waitSubscribed(t, nsqdHTTP, topic, tail)

	// curl -d 'hello in 5s' '.../pub?topic=hello&defer=5000'; date +%T
	t0 := time.Now()
	pub := runCurl(t, root, rw.Replace(firstCurl))
	t1 := time.Now()
	if pub.url.Path != "/pub" || pub.status != 200 || pub.body != "OK" {
		t.Fatalf("%s: %s %s: %d %q, want a /pub answered 200 OK", firstCurl, pub.method, pub.url, pub.status, pub.body)
	}
	dateOut := strings.TrimSpace(pub.stdout)
	if !hms.MatchString(dateOut) {
		t.Fatalf("%s: printed %q besides curl's answer, want date's HH:MM:SS", firstCurl, pub.stdout)
	}
	delay, err := strconv.Atoi(pub.url.Query().Get("defer"))
	if err != nil {
		t.Fatalf("%s: the Try it /pub has no defer=MS: %v", firstCurl, err)
	}
	wait := time.Duration(delay) * time.Millisecond
	if string(pub.sent) != "hello in 5s" || wait != 5*time.Second {
		// The prose around the block says so.
		t.Fatalf("%s: sends %q with defer %v; the README's text promises `hello in 5s` five seconds later", firstCurl, pub.sent, wait)
	}
	select {
	case l := <-tail.lines:
		printed, body, _ := strings.Cut(l.text, " ")
		if body != string(pub.sent) || !hms.MatchString(printed) {
			t.Fatalf("nsq_tail printed %q, want \"HH:MM:SS %s\"", l.text, pub.sent)
		}
		if l.at.Before(t0.Add(wait)) {
			t.Fatalf("%q reached nsq_tail %v after the curl started, before its %v", body, l.at.Sub(t0), wait)
		}
		if late := l.at.Sub(t1.Add(wait)); late > 2*time.Second {
			t.Fatalf("%q reached nsq_tail %v late", body, late)
		}
		// "with a time five seconds after the one date printed" (second
		// resolution: date ran after deferd took the message).
		if d := (clock(t, printed) - clock(t, dateOut) + 86400) % 86400; d < 4 || d > 7 {
			t.Fatalf("nsq_tail's line is stamped %s, date printed %s: %d s apart, want about 5", printed, dateOut, d)
		}
	case <-time.After(wait + 10*time.Second):
		t.Fatalf("nsq_tail printed nothing within %v\nnsq_tail:\n%s", wait+10*time.Second, tail.stderr.String())
	}

	// More: each curl line's documented answer, against a model of what
	// is pending (every message of this block is due after the test).
	pending := map[string]int{} // topic -> messages
	ids := map[string]string{}  // id -> topic
	accepted, cancelled := 1, 0 // the Try it message
	sawStats, sawMetrics := false, false
	for _, line := range more {
		if !curlWord.MatchString(line) {
			t.Fatalf("README.md, More: a line this test does not know how to check (teach TestREADMECommands): %q", line)
		}
		r := runCurl(t, root, rw.Replace(line))
		q := r.url.Query()
		switch r.url.Path {
		case "/pub", "/mpub":
			if r.status != 200 || r.body != "OK" {
				t.Fatalf("%s: %d %q, want 200 OK", line, r.status, r.body)
			}
			if q.Get("binary") == "true" {
				t.Fatalf("%s: binary /mpub bodies are not modelled by this test", line)
			}
			n := 1
			if r.url.Path == "/mpub" {
				n = 0
				for _, m := range bytes.Split(r.sent, []byte("\n")) {
					if len(m) > 0 {
						n++
					}
				}
			}
			if due := dueIn(t, line, q); due < 30*time.Second {
				t.Fatalf("%s: due in %v; this test expects every message of More to stay pending past its end", line, due)
			}
			if id := q.Get("id"); id != "" {
				ids[id] = q.Get("topic")
			}
			pending[q.Get("topic")] += n
			accepted += n
		case "/cancel":
			id := q.Get("id")
			topic, ok := ids[id]
			if !ok {
				t.Fatalf("%s: cancels %q, which no line before published", line, id)
			}
			if r.method != "POST" || r.status != 200 || r.body != "OK" {
				t.Fatalf("%s: %s: %d %q, want 200 OK", line, r.method, r.status, r.body)
			}
			delete(ids, id)
			pending[topic]--
			cancelled++
			// The comment's other documented answer: nothing pending with that id.
			if again := runCurl(t, root, rw.Replace(line)); again.status != 404 || again.body != `{"message":"NOT_FOUND"}` {
				t.Fatalf("%s, again: %d %q, want 404 {\"message\":\"NOT_FOUND\"}", line, again.status, again.body)
			}
		case "/stats":
			sawStats = true
			if r.status != 200 || !strings.HasPrefix(r.ctype, "application/json") {
				t.Fatalf("%s: %d %q, want 200 and JSON", line, r.status, r.ctype)
			}
			var st map[string]json.RawMessage
			if err := json.Unmarshal([]byte(r.body), &st); err != nil {
				t.Fatalf("%s: %v\n%s", line, err, r.body)
			}
			// "JSON: pending, counts, lateness, egress, journal"
			for _, k := range []string{"pending", "pending_by_topic", "accepted", "published", "cancelled", "lateness_ms", "egress", "journal"} {
				if _, ok := st[k]; !ok {
					t.Fatalf("%s: no %q in %s", line, k, r.body)
				}
			}
			var got struct {
				Pending        int
				PendingByTopic map[string]int `json:"pending_by_topic"`
				Accepted       int
				Published      int
				Cancelled      int
			}
			json.Unmarshal([]byte(r.body), &got)
			want := total(pending)
			for topic, n := range pending {
				if got.PendingByTopic[topic] != n {
					t.Errorf("%s: pending_by_topic[%s] = %d, want %d", line, topic, got.PendingByTopic[topic], n)
				}
			}
			if got.Pending != want || got.Accepted != accepted || got.Published != 1 || got.Cancelled != cancelled {
				t.Fatalf("%s: pending %d accepted %d published %d cancelled %d; want %d %d 1 %d\n%s", line,
					got.Pending, got.Accepted, got.Published, got.Cancelled, want, accepted, cancelled, r.body)
			}
		case "/metrics":
			sawMetrics = true
			if r.status != 200 || !strings.HasPrefix(r.ctype, "text/plain") {
				t.Fatalf("%s: %d %q, want 200 and Prometheus text", line, r.status, r.ctype)
			}
			parser := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := parser.TextToMetricFamilies(strings.NewReader(r.body))
			if err != nil {
				t.Fatalf("%s: not Prometheus text: %v\n%s", line, err, r.body)
			}
			for name, want := range map[string]int{
				"deferd_pending_messages": total(pending),
				"deferd_accepted_total":   accepted,
				"deferd_published_total":  1,
				"deferd_cancelled_total":  cancelled,
			} {
				if got := metricValue(fams[name]); got != float64(want) {
					t.Errorf("%s: %s = %v, want %d", line, name, got, want)
				}
			}
			// The lateness histogram has the one delivery.
			if f := fams["deferd_delivery_lateness_le_seconds"]; f == nil || f.GetType() != dto.MetricType_HISTOGRAM ||
				len(f.Metric) != 1 || f.Metric[0].GetHistogram().GetSampleCount() != 1 {
				t.Errorf("%s: deferd_delivery_lateness_le_seconds is not a histogram of 1 delivery: %v", line, f)
			}
		default:
			t.Fatalf("%s: %s is not an answer this test knows (teach TestREADMECommands)", line, r.url.Path)
		}
	}
	if !sawStats || !sawMetrics {
		t.Fatalf("README.md, More: no curl of /stats (%v) or /metrics (%v)", sawStats, sawMetrics)
	}

	// Nothing else reached nsq_tail (More's messages are due later).
	select {
	case l := <-tail.lines:
		t.Fatalf("nsq_tail printed %q, which was not due", l.text)
	case <-time.After(100 * time.Millisecond):
	}
	// kill %1: SIGTERM, with nsq_tail still connected to the embedded
	// nsqd: a clean exit and no ERROR in the log.
	p.terminate(t)
	if strings.Contains(p.log.String(), "ERROR") {
		t.Fatalf("ERROR in the log of a clean shutdown:\n%s", p.log.String())
	}
}

var (
	curlWord = regexp.MustCompile(`(^|[|;&(]\s*)curl\s`)
	hms      = regexp.MustCompile(`^\d\d:\d\d:\d\d$`)
)

// shBlock returns the command lines (no blank or comment-only lines) of
// the first ```sh block after offset at in readme; the block must come
// before the next "## " heading.
func shBlock(t *testing.T, readme string, at int, name string) []string {
	t.Helper()
	rest := readme[at+1:]
	i := strings.Index(rest, "\n```sh\n")
	if h := strings.Index(rest, "\n## "); i < 0 || (h >= 0 && h < i) {
		t.Fatalf("README.md: no ```sh block after %q", name)
	}
	rest = rest[i+len("\n```sh\n"):]
	j := strings.Index(rest, "\n```")
	if j < 0 {
		t.Fatalf("README.md: the ```sh block after %q is not closed", name)
	}
	var lines []string
	for l := range strings.Lines(rest[:j+1]) {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

// shellWords splits s as sh does (quotes, expansions).
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	if strings.TrimSpace(s) == "" {
		return nil
	}
	out, err := exec.Command("sh", "-c", "set -- "+s+"\n"+`for a; do printf '%s\0' "$a"; done`).Output()
	if err != nil {
		t.Fatalf("sh: words of %q: %v", s, err)
	}
	var w []string
	for a := range strings.SplitSeq(string(out), "\x00") {
		if a != "" {
			w = append(w, a)
		}
	}
	return w
}

// curlResult is one curl line, run: the request as the shell expanded
// it, deferd's answer, and what else the line printed.
type curlResult struct {
	req    *http.Request
	method string
	url    *url.URL
	sent   []byte // the request body
	status int
	ctype  string
	body   string
	stdout string // the line's output besides curl's answer
}

// shLine runs line with sh in dir after prelude, with $CAP set to capDir;
// it returns its output, and an error for a failure or any stderr output.
func shLine(dir, capDir, prelude, line string) (string, error) {
	cmd := exec.Command("sh", "-c", prelude+"\n"+line)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CAP="+capDir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || stderr.Len() > 0 {
		return string(out), fmt.Errorf("sh: %v: %s", err, stderr.String())
	}
	return string(out), nil
}

// expandCurl has sh expand a line with one curl command in it, with curl
// a shell function that records its arguments and stdin, and returns the
// request curl would make (nothing is sent) and the line's output.
func expandCurl(t *testing.T, dir, line string) (r curlResult) {
	t.Helper()
	capDir := t.TempDir()
	stdout, err := shLine(dir, capDir, `curl() { c=$(mktemp -d "$CAP/call.XXXXXX") && for a; do printf '%s\0' "$a"; done >"$c/args" && cat >"$c/stdin"; }`, line)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	calls, _ := filepath.Glob(filepath.Join(capDir, "call.*"))
	if len(calls) != 1 {
		t.Fatalf("%s: %d curl calls, want one per line", line, len(calls))
	}
	rawArgs, err1 := os.ReadFile(filepath.Join(calls[0], "args"))
	stdin, err2 := os.ReadFile(filepath.Join(calls[0], "stdin"))
	if err1 != nil || err2 != nil {
		t.Fatalf("%s: %v %v", line, err1, err2)
	}
	args := strings.Split(strings.TrimSuffix(string(rawArgs), "\x00"), "\x00")
	req, sent, err := curlRequest(args, stdin, dir)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	return curlResult{req: req, method: req.Method, url: req.URL, sent: sent, stdout: stdout}
}

// runCurl runs a line with one curl command in it with sh, in dir.
func runCurl(t *testing.T, dir, line string) curlResult {
	t.Helper()
	r := expandCurl(t, dir, line)
	if _, err := exec.LookPath("curl"); err == nil && os.Getenv("DEFERD_README_NO_CURL") == "" {
		// The real curl, its answer to files.
		capDir := t.TempDir()
		if r.stdout, err = shLine(dir, capDir, `curl() { command curl -sS -D "$CAP/headers" -o "$CAP/body" "$@"; echo $? >"$CAP/rc"; }`, line); err != nil {
			t.Fatalf("%s: %v", line, err)
		}
		rc, _ := os.ReadFile(filepath.Join(capDir, "rc"))
		hdr, _ := os.ReadFile(filepath.Join(capDir, "headers"))
		body, _ := os.ReadFile(filepath.Join(capDir, "body"))
		if strings.TrimSpace(string(rc)) != "0" {
			t.Fatalf("%s: curl exited %q", line, rc)
		}
		status, rest, _ := strings.Cut(string(hdr), "\r\n")
		if f := strings.Fields(status); len(f) >= 2 {
			r.status, _ = strconv.Atoi(f[1])
		}
		for h := range strings.Lines(rest) {
			if k, v, ok := strings.Cut(h, ":"); ok && strings.EqualFold(k, "Content-Type") {
				r.ctype = strings.TrimSpace(v)
			}
		}
		r.body = string(body)
		return r
	}
	resp, err := http.DefaultClient.Do(r.req)
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	r.status, r.ctype, r.body = resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
	return r
}

// curlRequest is the request curl makes of args: -d/--data/--data-ascii
// (@file: the file without CR and LF), --data-binary (@file unchanged),
// --data-raw, several joined by &, make a POST with a form content type;
// -X/--request sets the method, -H/--header a header; -s, -S and their
// long forms are ignored. Any other option is an error.
func curlRequest(args []string, stdin []byte, dir string) (*http.Request, []byte, error) {
	var (
		method, rawURL string
		data           [][]byte
		hasData        bool
		header         = http.Header{}
	)
	for i := 0; i < len(args); i++ {
		a := args[i]
		val := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("curl %s: no value", a)
			}
			i++
			return args[i], nil
		}
		switch a {
		case "-s", "-S", "-sS", "-Ss", "--silent", "--show-error":
		case "-d", "--data", "--data-ascii", "--data-binary", "--data-raw":
			v, err := val()
			if err != nil {
				return nil, nil, err
			}
			d := []byte(v)
			if a != "--data-raw" && strings.HasPrefix(v, "@") {
				if v == "@-" {
					d = stdin
				} else {
					f := v[1:]
					if !filepath.IsAbs(f) {
						f = filepath.Join(dir, f)
					}
					if d, err = os.ReadFile(f); err != nil {
						return nil, nil, err
					}
				}
				if a != "--data-binary" {
					d = bytes.ReplaceAll(bytes.ReplaceAll(d, []byte("\r"), nil), []byte("\n"), nil)
				}
			}
			data = append(data, d)
			hasData = true
		case "-X", "--request":
			v, err := val()
			if err != nil {
				return nil, nil, err
			}
			method = v
		case "-H", "--header":
			v, err := val()
			if err != nil {
				return nil, nil, err
			}
			k, hv, ok := strings.Cut(v, ":")
			if !ok {
				return nil, nil, fmt.Errorf("curl -H %q: no colon", v)
			}
			header.Set(strings.TrimSpace(k), strings.TrimSpace(hv))
		default:
			if strings.HasPrefix(a, "-") {
				return nil, nil, fmt.Errorf("curl option %s: not known to this test's translation (teach curlRequest, or install curl)", a)
			}
			if rawURL != "" {
				return nil, nil, fmt.Errorf("curl: two URLs, %q and %q", rawURL, a)
			}
			rawURL = a
		}
	}
	body := bytes.Join(data, []byte("&"))
	if method == "" {
		method = "GET"
		if hasData {
			method = "POST"
		}
	}
	req, err := http.NewRequest(method, rawURL, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	if hasData && header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return req, body, nil
}

// tailProc is the nsq_tail line, running: each line it prints, with the
// time it arrived.
type tailProc struct {
	cmd    *exec.Cmd
	lines  chan tailLine
	stderr *syncBuffer
	done   chan struct{}
}

type tailLine struct {
	text string
	at   time.Time
}

// lineWriter sends each complete line written to it, stamped.
type lineWriter struct {
	mu    sync.Mutex
	part  []byte
	lines chan<- tailLine
}

func (w *lineWriter) Write(p []byte) (int, error) {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.part = append(w.part, p...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		select {
		case w.lines <- tailLine{string(w.part[:i]), now}:
		default: // the test reads few; never block nsq_tail
		}
		w.part = w.part[i+1:]
	}
}

// startTail runs line with sh in dir, in its own process group (go tool
// and nsq_tail are children of the shell), killed when the test ends.
func startTail(t *testing.T, dir, line string) *tailProc {
	t.Helper()
	tp := &tailProc{lines: make(chan tailLine, 100), stderr: &syncBuffer{}, done: make(chan struct{})}
	tp.cmd = exec.Command("sh", "-c", line)
	tp.cmd.Dir = dir
	tp.cmd.Stdout = &lineWriter{lines: tp.lines}
	tp.cmd.Stderr = tp.stderr
	tp.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	tp.cmd.WaitDelay = 5 * time.Second
	if err := tp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { tp.cmd.Wait(); close(tp.done) }()
	t.Cleanup(func() {
		syscall.Kill(-tp.cmd.Process.Pid, syscall.SIGKILL)
		<-tp.done
		if t.Failed() {
			t.Logf("nsq_tail's stderr:\n%s", tp.stderr.String())
		}
	})
	return tp
}

// waitSubscribed waits until a client is subscribed to a topic on the
// nsqd at httpAddr, and fails if that is not topic.
func waitSubscribed(t *testing.T, httpAddr, topic string, tp *tailProc) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute) // go tool may build nsq_tail first
	for {
		var st struct {
			Topics []struct {
				Name     string `json:"topic_name"`
				Channels []struct {
					Clients []json.RawMessage `json:"clients"`
				} `json:"channels"`
			} `json:"topics"`
		}
		if resp, err := http.Get("http://" + httpAddr + "/stats?format=json"); err == nil {
			json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
		}
		for _, tt := range st.Topics {
			for _, c := range tt.Channels {
				if len(c.Clients) == 0 {
					continue
				}
				if tt.Name != topic {
					t.Fatalf("nsq_tail reads topic %q; the Try it /pub publishes to %q", tt.Name, topic)
				}
				return
			}
		}
		select {
		case <-tp.done:
			t.Fatalf("the nsq_tail line exited: %v\n%s", tp.cmd.ProcessState, tp.stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("nsq_tail not subscribed within 2 min\n%s", tp.stderr.String())
		}
	}
}

// dueIn is how far ahead a publish's defer= or at= puts its message.
func dueIn(t *testing.T, line string, q url.Values) time.Duration {
	t.Helper()
	if v := q.Get("defer"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%s: defer=%q", line, v)
		}
		return time.Duration(ms) * time.Millisecond
	}
	if v := q.Get("at"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			t.Fatalf("%s: at=%q", line, v)
		}
		return time.Until(time.UnixMilli(ms))
	}
	return 0
}

// metricValue is the sum of a counter's, gauge's or untyped family's
// samples; -1 for a missing family.
func metricValue(f *dto.MetricFamily) float64 {
	if f == nil {
		return -1
	}
	v := 0.0
	for _, m := range f.Metric {
		switch {
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Untyped != nil:
			v += m.Untyped.GetValue()
		}
	}
	return v
}

func total(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// clock is the seconds of the day of an HH:MM:SS.
func clock(t *testing.T, s string) int {
	t.Helper()
	tm, err := time.Parse("15:04:05", s)
	if err != nil {
		t.Fatal(err)
	}
	return tm.Hour()*3600 + tm.Minute()*60 + tm.Second()
}
