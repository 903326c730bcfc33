package deferd

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/deferd/deferd/egress"
)

// promScheduler starts a Scheduler whose sink is a function counting the
// messages it takes, with its HTTP API on a free loopback port. Both stop
// in t.Cleanup. It returns the Scheduler, the API's base URL and the count.
func promScheduler(t testing.TB) (*Scheduler, string, *atomic.Int64) {
	t.Helper()
	var got atomic.Int64
	opts := NewOptions()
	opts.DataPath = t.TempDir()
	opts.HTTPAddress = "127.0.0.1:0"
	opts.Sink = SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		got.Add(int64(len(bodies)))
		return len(bodies), nil
	})
	opts.Logf = func(string, ...any) {}
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := s.ListenHTTP()
	if err != nil {
		s.Close(5 * time.Second)
		t.Fatal(err)
	}
	go srv.Serve()
	t.Cleanup(func() {
		srv.Shutdown()
		s.Close(5 * time.Second)
	})
	return s, "http://" + srv.Addr(), &got
}

// promPublish publishes now messages due at once and later due in 100 ms
// (topic "alpha"), plus one due in an hour (topic "later", so a per-topic
// series exists), and waits until the sink took now+later.
func promPublish(t testing.TB, s *Scheduler, got *atomic.Int64, now, later int) {
	t.Helper()
	for range now {
		if err := s.Publish(Pub{Topic: "alpha", Bodies: [][]byte{[]byte("now")}}); err != nil {
			t.Fatal(err)
		}
	}
	for range later {
		if err := s.Publish(Pub{Topic: "alpha", Bodies: [][]byte{[]byte("later")}, Delay: 100 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Publish(Pub{Topic: "later", Bodies: [][]byte{[]byte("in an hour")}, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	want := int64(now + later)
	for deadline := time.Now().Add(10 * time.Second); got.Load() < want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("sink took %d messages, want %d", got.Load(), want)
		}
	}
}

// promGet returns the body of GET url, failing t unless it answers 200.
func promGet(t testing.TB, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

// promCheck parses text (Prometheus text format) with expfmt and checks
// the rules deferd's exposition keeps: no parse error; every family has
// exactly one # TYPE line and at most one # HELP; no histogram or summary
// is named *_total; and, for deferd_* families (VictoriaMetrics writes
// some process_*_total as gauges and go_*_count as counters), a counter is
// named *_total and a family named *_total is a counter. It returns the
// parsed families.
func promCheck(t testing.TB, text []byte) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("expfmt: %v\n%s", err, text)
	}
	types, helps := map[string]int{}, map[string]int{}
	for line := range strings.Lines(string(text)) {
		fs := strings.Fields(line)
		if len(fs) >= 3 && fs[0] == "#" && fs[1] == "TYPE" {
			types[fs[2]]++
		}
		if len(fs) >= 3 && fs[0] == "#" && fs[1] == "HELP" {
			helps[fs[2]]++
		}
	}
	for name, f := range fams {
		if types[name] != 1 {
			t.Errorf("family %s: %d TYPE lines, want 1", name, types[name])
		}
		if helps[name] > 1 {
			t.Errorf("family %s: %d HELP lines, want at most 1", name, helps[name])
		}
		total := strings.HasSuffix(name, "_total")
		switch typ := f.GetType(); {
		case typ == dto.MetricType_COUNTER && !total && strings.HasPrefix(name, "deferd_"):
			t.Errorf("counter %s does not end in _total", name)
		case typ != dto.MetricType_COUNTER && total && strings.HasPrefix(name, "deferd_"):
			t.Errorf("%s ends in _total but is a %v", name, typ)
		case (typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY) && total:
			t.Errorf("%v %s ends in _total", typ, name)
		}
	}
	return fams
}

// promValue returns the value of the one series of family name in fams
// (counter, gauge or untyped), failing t if there is not exactly one.
func promValue(t testing.TB, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	f := fams[name]
	if f == nil || len(f.Metric) != 1 {
		t.Fatalf("family %s: %v", name, f)
	}
	m := f.Metric[0]
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return m.Untyped.GetValue()
}

// WritePrometheus, what GET /metrics serves first, is valid Prometheus text
// with metadata for every family, keeps the existing series, and has the
// lateness as an le histogram that counts every published message.
func TestPrometheusExposition(t *testing.T) {
	s, base, got := promScheduler(t)
	const now, later = 3, 4
	promPublish(t, s, got, now, later)
	var buf bytes.Buffer
	s.WritePrometheus(&buf)
	promCheckScheduler(t, buf.Bytes(), now+later)

	// GET /metrics is the same: the HTTP server's own set once, merged
	// with the TCP listener's families (httpBackend.WritesServerMetrics).
	t.Run("GET /metrics", func(t *testing.T) {
		text := promGet(t, base+"/metrics")
		promCheckScheduler(t, text, now+later)
	})
}

// promCheckScheduler checks text, the exposition of a Scheduler that
// published n messages of promPublish, with promCheck, and its series.
func promCheckScheduler(t *testing.T, text []byte, n int) {
	t.Helper()
	fams := promCheck(t, text)
	for _, line := range []string{
		`deferd_pending_by_topic{topic="later"} 1`,
		`deferd_published_total 7`,
		`deferd_published_direct_total 3`,
		`deferd_accepted_total 8`,
		`deferd_journal_appends_total 5`,
		`deferd_pending_messages 1`,
	} {
		if !bytes.Contains(text, []byte("\n"+line+"\n")) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	for name, typ := range map[string]dto.MetricType{
		"deferd_published_total":              dto.MetricType_COUNTER,
		"deferd_journal_appends_total":        dto.MetricType_COUNTER,
		"deferd_journal_write_errors_total":   dto.MetricType_COUNTER,
		"deferd_pending_messages":             dto.MetricType_GAUGE,
		"deferd_pending_by_topic":             dto.MetricType_GAUGE,
		"deferd_delivery_lateness_le_seconds": dto.MetricType_HISTOGRAM,
		"deferd_ingest_requests_total":        dto.MetricType_COUNTER,
		"process_cpu_seconds_total":           dto.MetricType_COUNTER,
		"go_gc_duration_seconds":              dto.MetricType_SUMMARY,
		// The vmrange histogram keeps its series; they are untyped families.
		"deferd_delivery_lateness_seconds_bucket": dto.MetricType_UNTYPED,
		"deferd_delivery_lateness_seconds_count":  dto.MetricType_UNTYPED,
	} {
		if f := fams[name]; f == nil || f.GetType() != typ {
			t.Errorf("family %s: %v, want type %v", name, f, typ)
		}
	}
	if c := promValue(t, fams, "deferd_delivery_lateness_seconds_count"); c != float64(n) {
		t.Errorf("deferd_delivery_lateness_seconds_count %v, want %d", c, n)
	}

	h := fams["deferd_delivery_lateness_le_seconds"].GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != uint64(n) {
		t.Errorf("lateness le histogram counts %d, want %d", h.GetSampleCount(), n)
	}
	if h.GetSampleSum() < 0 || h.GetSampleSum() > float64(n)*10 {
		t.Errorf("lateness le histogram sum %v s for %d messages", h.GetSampleSum(), n)
	}
	var prev uint64
	var bounds []float64
	for _, b := range h.GetBucket() {
		if b.GetCumulativeCount() < prev || b.GetCumulativeCount() > h.GetSampleCount() {
			t.Errorf("bucket le=%v: cumulative %d after %d (count %d)", b.GetUpperBound(), b.GetCumulativeCount(), prev, h.GetSampleCount())
		}
		prev = b.GetCumulativeCount()
		bounds = append(bounds, b.GetUpperBound())
	}
	if len(bounds) == 0 || bounds[0] != 0.0005 || bounds[len(bounds)-1] < 60 {
		t.Errorf("lateness le buckets %v, want 0.0005 ... 60", bounds)
	}
}

// The egress Publisher's set carries the batch duration as an le
// histogram too, with metadata, and its counters are counters.
func TestPrometheusEgressHistogram(t *testing.T) {
	p, err := egress.New(egress.Options{Addrs: []string{"127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	metrics.ExposeMetadata(true)
	var buf bytes.Buffer
	p.Metrics().WritePrometheus(&buf)
	var out bytes.Buffer
	writeFamilies(&out, buf.Bytes())
	fams := promCheck(t, out.Bytes())
	f := fams["deferd_egress_batch_duration_le_seconds"]
	if f.GetType() != dto.MetricType_HISTOGRAM || len(f.GetMetric()) != 1 {
		t.Fatalf("deferd_egress_batch_duration_le_seconds: %v", f)
	}
	if l := f.Metric[0].GetLabel(); len(l) != 1 || l[0].GetName() != "nsqd" || l[0].GetValue() != "127.0.0.1:1" {
		t.Errorf("labels %v, want nsqd=127.0.0.1:1", l)
	}
	if f := fams["deferd_egress_up"]; f.GetType() != dto.MetricType_GAUGE {
		t.Errorf("deferd_egress_up: %v", f)
	}
}

// writeFamilies merges what several sets wrote of one family: one HELP and
// TYPE, the series together, a series written twice kept once.
func TestPrometheusFamiliesMerged(t *testing.T) {
	metrics.ExposeMetadata(true)
	a, b := metrics.NewSet(), metrics.NewSet()
	a.NewCounter(`x_requests_total{path="/pub"}`).Add(2)
	a.NewGauge(`x_up`, func() float64 { return 1 })
	b.NewCounter(`x_requests_total{protocol="tcp"}`).Add(3)
	b.NewCounter(`x_requests_total{path="/pub"}`).Add(9) // the same series again: dropped
	var buf bytes.Buffer
	a.WritePrometheus(&buf)
	b.WritePrometheus(&buf)
	metrics.WriteGaugeUint64(&buf, `x_free{disk="a"}`, 4)
	io.WriteString(&buf, "x_plain 5\n")
	var out bytes.Buffer
	writeFamilies(&out, buf.Bytes())
	want := `# TYPE x_requests_total counter
x_requests_total{path="/pub"} 2
x_requests_total{protocol="tcp"} 3
# TYPE x_up gauge
x_up 1
# TYPE x_free gauge
x_free{disk="a"} 4
# TYPE x_plain untyped
x_plain 5
`
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
	promCheck(t, out.Bytes())
}

// promQuery asks the Prometheus at base for the instant value of the PromQL
// expression q; ok is false while the answer has no series (yet).
func promQuery(t testing.TB, base, q string) (v float64, ok bool) {
	t.Helper()
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Status != "success" {
		t.Fatalf("query %s: %s %v %s", q, r.Status, err, r.Error)
	}
	if len(r.Data.Result) != 1 {
		return 0, false
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(v) {
		return 0, false
	}
	return v, true
}

// promWait polls the expression q at the Prometheus at base until cond
// holds for its value, failing t after d.
func promWait(t testing.TB, base, q string, d time.Duration, cond func(float64) bool) float64 {
	t.Helper()
	var v float64
	var ok bool
	for deadline := time.Now().Add(d); ; time.Sleep(200 * time.Millisecond) {
		if v, ok = promQuery(t, base, q); ok && cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v (has value: %v) after %v", q, v, ok, d)
		}
	}
}

// The real prometheus (on PATH; .ci/install-prometheus.sh installs it)
// scrapes a running Scheduler every second, and its PromQL answers agree
// with /stats: the published count exactly, the lateness p99 from the le
// histogram within a bucket of the vmrange one's.
func TestPrometheusScrape(t *testing.T) {
	bin, err := exec.LookPath("prometheus")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("prometheus is not on PATH (.ci/install-prometheus.sh installs it)")
		}
		t.Skip("SKIP: prometheus is not on PATH; run .ci/install-prometheus.sh")
	}
	s, base, got := promScheduler(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	promAddr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	cfg := "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n" +
		"scrape_configs:\n  - job_name: deferd\n    static_configs:\n      - targets: [\"" +
		strings.TrimPrefix(base, "http://") + "\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	cmd := exec.Command(bin, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+promAddr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() || testing.Verbose() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	pbase := "http://" + promAddr
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if resp, err := http.Get(pbase + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus on %s not ready after 15 s", promAddr)
		}
	}
	promWait(t, pbase, `up{job="deferd"}`, 15*time.Second, func(v float64) bool { return v == 1 })

	// Publish after the first scrape, so the rate windows see every message.
	const rounds, now, later = 10, 5, 5
	for range rounds {
		promPublish(t, s, got, now, later)
		got.Store(0)
		time.Sleep(100 * time.Millisecond)
	}
	st := s.Stats()
	if st.Published != rounds*(now+later) {
		t.Fatalf("/stats published %d, want %d", st.Published, rounds*(now+later))
	}
	n := float64(st.Published)
	promWait(t, pbase, `deferd_published_total`, 10*time.Second, func(v float64) bool { return v == n })
	rate := promWait(t, pbase, `rate(deferd_published_total[30s])`, 5*time.Second, func(float64) bool { return true })
	if rate <= 0 || rate > n {
		t.Errorf("rate(deferd_published_total[30s]) = %v for %v messages", rate, n)
	}
	count := promWait(t, pbase, `sum(deferd_delivery_lateness_le_seconds_count)`, 5*time.Second, func(float64) bool { return true })
	if count != n {
		t.Errorf("deferd_delivery_lateness_le_seconds_count %v, want %v", count, n)
	}

	// The le bucket holding /stats' p99 (the upper bound of a vmrange
	// bucket, so it may lie one le bucket above the true p99): PromQL's
	// p99, interpolated within its le bucket, must fall in that bucket or
	// the one below.
	p99 := promWait(t, pbase, `histogram_quantile(0.99, sum(rate(deferd_delivery_lateness_le_seconds_bucket[30s])) by (le))`,
		5*time.Second, func(float64) bool { return true })
	want := st.Lateness.P99 / 1000
	i := sort.SearchFloat64s(latenessBuckets, want) // latenessBuckets[i-1] < want <= latenessBuckets[i]
	lo, hi := 0.0, math.Inf(1)
	if i >= 2 {
		lo = latenessBuckets[i-2]
	}
	if i < len(latenessBuckets) {
		hi = latenessBuckets[i]
	}
	// PromQL interpolates in float64: a p99 on a bucket bound may come
	// out a few ulps past it (0.0010000000000000126 for 0.001).
	const ulps = 1e-12
	if p99 < lo*(1-ulps) || p99 > hi*(1+ulps) {
		t.Errorf("PromQL lateness p99 %v s, /stats p99 %v s: want PromQL's in [%v, %v]", p99, want, lo, hi)
	}
	t.Logf("published %v, rate %.2f/s, lateness p99: PromQL %.4f s, /stats %.4f s", n, rate, p99, want)
}
