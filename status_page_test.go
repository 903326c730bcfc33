package deferd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/deferd/deferd"
)

// chromiumPath is Debian's chromium, which .ci/install-chromium.sh
// installs. Without it the test fails on CI (CI=true) and is skipped,
// saying why, elsewhere.
func chromiumPath(t *testing.T) string {
	const p = "/usr/bin/chromium"
	if _, err := os.Stat(p); err != nil {
		msg := "SKIPPED: no " + p + " (run .ci/install-chromium.sh): the status page is not tested in a browser"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// browser starts a headless Chromium with a fresh profile, ended by
// t.Cleanup; every action on the context it returns has timeout.
func browser(t *testing.T, timeout time.Duration) context.Context {
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1440, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	ctx, cancelTimeout := context.WithTimeout(ctx, timeout)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// TestStatusPage drives the status page in Chromium: it shows the topics
// and counts /stats has; a lookup by id shows the due time /message has;
// reschedule moves it, run now publishes one, cancel removes one; and a
// page on another 127.0.0.1 port cannot cancel through the browser (nor
// can a request with another Origin).
//
// DEFERD_SCREENSHOT=docs/status.png instead runs traffic against an
// embedded nsqd for a while (so every chart has something), saves a
// screenshot of the page there after the reschedule, and stops.
func TestStatusPage(t *testing.T) {
	shot := os.Getenv("DEFERD_SCREENSHOT")
	chromiumPath(t)
	opts := deferd.NewOptions()
	opts.DataPath = t.TempDir()
	// A cluster of one (this instance), so the page's cluster panel has a
	// peer to show: the address is bound first to be named in the list.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	opts.HTTPListener = ln
	opts.HTTPAddress = ln.Addr().String()
	opts.ClusterPeers = []string{opts.HTTPAddress}
	opts.Logf = t.Logf
	var sunk atomic.Int64
	if shot != "" {
		opts.EmbeddedNSQD = true
		opts.EmbeddedNSQDTCPAddress = "127.0.0.1:0"
		opts.EmbeddedNSQDHTTPAddress = "127.0.0.1:0"
	} else {
		opts.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) {
			sunk.Add(int64(len(bodies)))
			return len(bodies), nil
		})
	}
	s, err := deferd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	hs, err := s.ListenHTTP()
	if err != nil {
		t.Fatal(err)
	}
	go hs.Serve()
	defer hs.Shutdown()
	base := "http://" + hs.Addr()

	req := func(method, path string, header http.Header) (int, string) {
		t.Helper()
		r, err := http.NewRequest(method, base+path, strings.NewReader("hello"))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			r.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	mustPub := func(path string) {
		t.Helper()
		if code, body := req("POST", path, nil); code != 200 {
			t.Fatalf("POST %s: %d %s", path, code, body)
		}
	}
	type message struct {
		Key, ID, Topic, State string
		DueMs                 int64 `json:"due_ms"`
	}
	lookup := func(ref string) (int, message) {
		t.Helper()
		code, body := req("GET", "/message?"+ref, nil)
		var m message
		if code == 200 {
			if err := json.Unmarshal([]byte(body), &m); err != nil {
				t.Fatal(err)
			}
		}
		return code, m
	}

	// Some published (for the lateness chart), the rest pending.
	for i := range 5 {
		mustPub(fmt.Sprintf("/pub?topic=reports&defer=%d", 20*i))
	}
	for deadline := time.Now().Add(5 * time.Second); s.Stats().Published < 5; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the short-delay messages were not published")
		}
	}
	mustPub("/pub?topic=orders&defer=3600000&id=renew-42")
	mustPub("/pub?topic=orders&defer=3600000&id=victim")
	mustPub("/mpub?topic=orders&defer=1800000")
	mustPub("/pub?topic=emails&defer=600000&id=run-me")
	mustPub("/mpub?topic=emails&defer=900000")
	mustPub("/pub?topic=billing.eu&defer=86400000")

	stop := make(chan struct{})
	defer close(stop)
	if shot != "" {
		go traffic(base, stop)
	}

	ctx := browser(t, 90*time.Second)
	if shot == "" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 25*time.Second)
		defer cancel()
	}
	run := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	waitFor := func(what, js string) {
		t.Helper()
		run(what, chromedp.Poll[chromedp.Void](js, chromedp.WithPollingInterval(50*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second)))
	}
	eval := func(what, js string, v any) {
		t.Helper()
		b, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](js))
		if err == nil {
			err = json.Unmarshal(b, v)
		}
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}

	// The topics and counts /stats has.
	run("open the page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.CSS(`#topics g.topic-row`)))
	var stats struct {
		PendingByTopic map[string]int64 `json:"pending_by_topic"`
	}
	code, body := req("GET", "/stats", nil)
	if code != 200 || json.Unmarshal([]byte(body), &stats) != nil {
		t.Fatalf("/stats: %d %s", code, body)
	}
	if shot == "" {
		var shown map[string]int64
		eval("read the topic bars", `Object.fromEntries(Array.from(document.querySelectorAll('#topics g.topic-row'), g => [g.dataset.topic, +g.dataset.count]))`, &shown)
		if fmt.Sprint(shown) != fmt.Sprint(stats.PendingByTopic) || len(shown) != 3 {
			t.Errorf("page shows %v, /stats has %v", shown, stats.PendingByTopic)
		}
		var labels []string
		eval("read the topic labels", `Array.from(document.querySelectorAll('#topics g.topic-row'), g => g.querySelector('.topic-name').textContent + '=' + g.querySelector('.topic-count').textContent)`, &labels)
		if strings.Join(labels, " ") != "orders=3 emails=2 billing.eu=1" {
			t.Errorf("topic bars read %q", labels)
		}
	}
	waitFor("the cluster panel: one reachable peer owning all 256 shards",
		`(() => { const n = document.querySelectorAll('#cluster-peers .node'); return !$('cluster-card').hidden && n.length === 1 && n[0].dataset.reachable === 'true' && n[0].textContent.includes('256 shards'); })()`)
	waitFor("the lateness and due charts", `document.querySelectorAll('#lateness g.lateness-row').length === 5 && document.querySelectorAll('#due g.due-bucket').length === 8`)

	// A lookup by id shows its due time.
	_, m := lookup("id=renew-42")
	run("look up renew-42",
		chromedp.SetValue(chromedp.CSS(`#lookup-input`), "renew-42"),
		chromedp.Click(chromedp.CSS(`#lookup-btn`)),
		chromedp.WaitVisible(chromedp.CSS(`#msg-due`)))
	waitFor("the due time", `document.getElementById('msg-due').dataset.dueMs === '`+fmt.Sprint(m.DueMs)+`'`)
	dueText, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(`#msg-due`)))
	if err != nil {
		t.Fatal(err)
	}
	if want := time.UnixMilli(m.DueMs).Format("2006-01-02 15:04:05.000"); !strings.HasPrefix(dueText, want) {
		t.Errorf("due shown %q, want %s (local time)", dueText, want)
	}

	// Reschedule moves it.
	before := time.Now().UnixMilli()
	run("reschedule renew-42", chromedp.SetValue(chromedp.CSS(`#resched-defer`), "7200000"), chromedp.Click(chromedp.CSS(`#btn-resched`)))
	waitFor("rescheduled", `document.getElementById('msg-status').textContent === 'rescheduled'`)
	after := time.Now().UnixMilli()
	if code, m2 := lookup("id=renew-42"); code != 200 || m2.DueMs < before+7200000 || m2.DueMs > after+7200000+1 {
		t.Errorf("after reschedule: %d due_ms %d, want %d..%d", code, m2.DueMs, before+7200000, after+7200000)
	} else {
		waitFor("the new due time", `document.getElementById('msg-due').dataset.dueMs === '`+fmt.Sprint(m2.DueMs)+`'`)
	}
	if shot != "" {
		time.Sleep(20 * time.Second) // samples for the rate chart
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes); the checks after it need the test's own quiet data: run without DEFERD_SCREENSHOT", shot, len(png))
		return
	}

	// Run now, from the next-due list: click the row, then the button.
	run("list emails", chromedp.SetValue(chromedp.CSS(`#pending-topic`), "emails"),
		chromedp.Evaluate[chromedp.Void](`document.getElementById('pending-topic').dispatchEvent(new Event('change'))`))
	_, runMe := lookup("id=run-me")
	waitFor("the emails page", `Array.from(document.querySelectorAll('#pending-table tbody tr')).map(r => r.dataset.key).join(' ').includes('`+runMe.Key+`') && document.getElementById('pending-page').textContent.startsWith('page 1 of emails')`)
	run("pick run-me", chromedp.Click(chromedp.CSS(`#pending-table tbody tr[data-key="`+runMe.Key+`"]`)))
	waitFor("run-me shown", `document.getElementById('msg-id').textContent === 'run-me'`)
	run("run it now", chromedp.Click(chromedp.CSS(`#btn-runnow`)))
	waitFor("sent", `document.getElementById('msg-status').textContent === 'sent to run now'`)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if code, m := lookup("id=run-me"); code == 200 && m.State == "published" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("run now: /message %d %+v, want published", code, m)
		}
	}

	// Cancel removes it.
	run("look up renew-42 again",
		chromedp.SetValue(chromedp.CSS(`#lookup-kind`), "id"),
		chromedp.SetValue(chromedp.CSS(`#lookup-input`), "renew-42"),
		chromedp.Click(chromedp.CSS(`#lookup-btn`)))
	waitFor("renew-42 shown", `document.getElementById('msg-id').textContent === 'renew-42' && !document.getElementById('btn-cancel').disabled`)
	run("cancel", chromedp.Click(chromedp.CSS(`#btn-cancel`)), chromedp.Click(chromedp.CSS(`#btn-cancel-yes`)))
	waitFor("cancelled", `document.getElementById('msg-status').textContent.startsWith('cancelled')`)
	if code, body := req("GET", "/message?id=renew-42", nil); code != 404 || body != `{"message":"NOT_FOUND"}` {
		t.Errorf("after cancel: /message %d %s, want 404", code, body)
	}

	// Another origin cannot: a request with its Origin, and a page on
	// another 127.0.0.1 port, through the browser (a no-cors fetch, a
	// fetch with the page's header, which needs a preflight deferd does
	// not grant, and a form).
	if code, body := req("POST", "/cancel?id=victim", http.Header{"Origin": {"http://127.0.0.1:1"}}); code != 403 || body != `{"message":"CROSS_ORIGIN"}` {
		t.Errorf("POST /cancel with another Origin: %d %s, want 403 CROSS_ORIGIN", code, body)
	}
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprintf(w, `<!doctype html><title>evil</title><form id="f" method="POST" action="%[1]s/cancel?id=victim"></form>
<script>
window.results = [];
fetch('%[1]s/cancel?id=victim', {method: 'POST', mode: 'no-cors'}).then(() => results.push('no-cors sent'), e => results.push('no-cors failed'))
.then(() => fetch('%[1]s/reschedule?id=victim&defer=0', {method: 'POST', headers: {'X-Deferd-UI': '1'}}))
.then(r => results.push('header: ' + r.status), e => results.push('header: blocked'))
.then(() => { document.title = results.join(', '); });
</script>`, base)
	}))
	defer evil.Close()
	run("open the other page", chromedp.Navigate(evil.URL))
	waitFor("its fetches", `document.title.includes('header:')`)
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	if title != "no-cors sent, header: blocked" {
		t.Errorf("the other page's fetches: %q, want the no-cors one sent (and refused) and the one with the header blocked", title)
	}
	run("submit its form", chromedp.Evaluate[chromedp.Void](`document.getElementById('f').submit()`))
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		// The form navigates: evaluations fail until the answer loads.
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`location.href.startsWith('`+base+`/cancel') && document.body.innerText.includes('CROSS_ORIGIN')`))
		if err == nil && ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the form's answer: %v %v", ok, err)
		}
	}
	if code, m := lookup("id=victim"); code != 200 || m.State != "pending" {
		t.Errorf("victim after the other page: /message %d %+v, want pending", code, m)
	}
	if got := s.Stats().Ingest["http"].Errors["403 CROSS_ORIGIN"]; got != 3 {
		t.Errorf("403 CROSS_ORIGIN answered %d times, want 3 (the test's, the no-cors fetch, the form)", got)
	}
}

// traffic publishes a varying load until stop: something always due soon,
// some later, so the screenshot's charts have lines and bars.
func traffic(base string, stop <-chan struct{}) {
	topics := []string{"orders", "emails", "billing.eu", "reports"}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		case <-time.After(20 * time.Millisecond):
		}
		n := 5 + (i/25)%4*10
		var b strings.Builder
		for j := range n {
			fmt.Fprintf(&b, "msg %d-%d\n", i, j)
		}
		d := []int{0, 300, 2000, 8000, 45000, 300000, 2400000}[i%7]
		resp, err := http.Post(fmt.Sprintf("%s/mpub?topic=%s&defer=%d", base, topics[i%len(topics)], d), "text/plain", strings.NewReader(b.String()))
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
}
