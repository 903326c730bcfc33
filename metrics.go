package deferd

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// latenessBuckets are the upper bounds, in seconds, of the le buckets of
// deferd_delivery_lateness_le_seconds and
// deferd_egress_batch_duration_le_seconds: 0.5 ms to 60 s, so that
// histogram_quantile over them answers within a factor of about 2.5.
var latenessBuckets = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60}

// latency is the delivery lateness, kept in two histograms updated
// together: VictoriaMetrics' vmrange one (buckets about 12% wide, what
// Percentiles and /stats read; deferd_delivery_lateness_seconds) and a
// Prometheus le one over latenessBuckets
// (deferd_delivery_lateness_le_seconds, for histogram_quantile); for
// messages published through the wheel, its stages; and, for all, the
// same by ingest protocol (both lateness.go). Safe for concurrent use.
type latency struct {
	vm     *metrics.Histogram
	prom   *metrics.PrometheusHistogram
	stages stages
	protos protoHists
}

// Update records one lateness of v seconds in both histograms.
func (l *latency) Update(v float64) {
	l.vm.Update(v)
	l.prom.Update(v)
}

// counterFamilies are the Scheduler's counters: read from its atomics at
// scrape time and written as Prometheus counters (TYPE counter).
var counterFamilies = [...]string{
	"deferd_accepted_total",
	"deferd_published_total",
	"deferd_published_direct_total",
	"deferd_direct_journaled_total",
	"deferd_cancelled_total",
	"deferd_retried_total",
	"deferd_failed_total",
	"deferd_journal_read_errors_total",
	"deferd_journal_moved_total",
	"deferd_delivered_early_total",
}

// initMetrics creates the Scheduler's metrics.Set: gauges read its counters
// at scrape time, so the hot paths pay only their atomic adds. It turns on
// metrics.ExposeMetadata (process-wide: every metrics.Set then writes
// # HELP and # TYPE lines), which WritePrometheus needs to type each family.
func (s *Scheduler) initMetrics() {
	metrics.ExposeMetadata(true)
	set := metrics.NewSet()
	s.set = set
	s.lateness = &latency{
		vm:   set.NewHistogram("deferd_delivery_lateness_seconds"),
		prom: set.NewPrometheusHistogramExt("deferd_delivery_lateness_le_seconds", latenessBuckets),
	}
	gauge := func(name string, f func() float64) { set.NewGauge(name, f) }
	gauge("deferd_pending_messages", func() float64 { return float64(s.pending.Load()) })
	gauge("deferd_pending_bytes", func() float64 { return float64(s.pendingBytes.Load()) })
	gauge("deferd_wheel_entries", func() float64 { return float64(s.w.Len()) })
	gauge("deferd_pool_running", func() float64 { return float64(s.pool.Running()) })
	gauge("deferd_pool_waiting", func() float64 { return float64(s.pool.Waiting()) })
	gauge("deferd_journal_corrupt_records", func() float64 { return float64(len(s.recovery.Corrupt)) })
	gauge("deferd_journal_recovery_seconds", func() float64 { return s.recovery.Duration.Seconds() })
	set.RegisterMetricsWriter(s.writeMetrics)
}

// counters returns the Scheduler's counters in the order of
// counterFamilies.
func (s *Scheduler) counters() [len(counterFamilies)]*atomic.Uint64 {
	return [...]*atomic.Uint64{&s.accepted, &s.published, &s.direct, &s.directMissed,
		&s.cancelled, &s.retried, &s.failed, &s.readErrors, &s.moved, &s.early}
}

// AddMetrics adds set to what WritePrometheus writes: the metrics of a
// listener or of the embedder's own. Safe for concurrent use.
func (s *Scheduler) AddMetrics(set *metrics.Set) {
	s.extraMu.Lock()
	s.extra = append(s.extra, set)
	s.extraMu.Unlock()
}

// WritePrometheus writes the Scheduler's metrics in Prometheus text format
// 0.0.4: its own, the default sink's, those added with AddMetrics (the HTTP
// and TCP listeners'), and the process's. Each family appears once, its
// lines together under one # HELP and one # TYPE line (untyped for the
// _bucket, _sum and _count families of a vmrange histogram), even when
// several sets write it; a series written twice is kept once (the first).
// Cost: O(metrics + topics); safe for concurrent use. The metrics endpoint
// of ListenHTTP serves it; an embedder with an HTTP server of its own can
// serve it there.
func (s *Scheduler) WritePrometheus(w io.Writer) {
	var buf bytes.Buffer
	s.set.WritePrometheus(&buf)
	if s.eg != nil {
		s.eg.Metrics().WritePrometheus(&buf)
	}
	s.extraMu.Lock()
	extra := slices.Clone(s.extra)
	s.extraMu.Unlock()
	for _, set := range extra {
		set.WritePrometheus(&buf)
	}
	metrics.WriteProcessMetrics(&buf)
	writeFamilies(w, buf.Bytes())
}

// writeMetrics writes what /stats has beyond the fixed gauges: the
// counters, the journal's state (one Stats call per scrape, O(segments))
// and the pending messages per topic (one series per topic with pending
// messages; nsqd's topic names need no escaping in a label).
func (s *Scheduler) writeMetrics(w io.Writer) {
	for i, v := range s.counters() {
		metrics.WriteCounterUint64(w, counterFamilies[i], v.Load())
	}
	js := s.j.Stats()
	metrics.WriteGaugeUint64(w, "deferd_journal_segments", uint64(js.Segments))
	writable := uint64(0)
	if js.Writable {
		writable = 1
	}
	metrics.WriteGaugeUint64(w, "deferd_journal_writable", writable)
	metrics.WriteGaugeUint64(w, "deferd_journal_disk_bytes", uint64(max(js.DiskBytes, 0)))
	metrics.WriteGaugeUint64(w, "deferd_journal_live_messages", uint64(max(js.Live, 0)))
	metrics.WriteCounterUint64(w, "deferd_journal_appends_total", js.Appends)
	metrics.WriteCounterUint64(w, "deferd_journal_done_records_total", js.DoneRecords)
	metrics.WriteCounterUint64(w, "deferd_journal_groups_total", js.Groups)
	metrics.WriteCounterUint64(w, "deferd_journal_fsyncs_total", js.Fsyncs)
	metrics.WriteCounterUint64(w, "deferd_journal_write_errors_total", js.WriteErrors)
	metrics.WriteCounterUint64(w, "deferd_journal_corrupt_total", js.Corrupt)
	metrics.WriteCounterUint64(w, "deferd_journal_deleted_segments_total", js.Deleted)
	type topicCount struct {
		topic string
		n     int64
	}
	counts := s.ix.topicCounts()
	tcs := make([]topicCount, 0, len(counts))
	for t, n := range counts {
		tcs = append(tcs, topicCount{t, n})
	}
	slices.SortFunc(tcs, func(a, b topicCount) int { return strings.Compare(a.topic, b.topic) })
	metrics.WriteMetadataIfNeeded(w, "deferd_pending_by_topic", "gauge")
	for _, tc := range tcs {
		fmt.Fprintf(w, "deferd_pending_by_topic{topic=%q} %d\n", tc.topic, max(tc.n, 0))
	}
	s.writeDueMetrics(w)
	s.lateness.stages.writePrometheus(w)
	s.lateness.protos.writePrometheus(w)
}

// help is the # HELP text of deferd's families; a family not listed keeps
// the text its writer gave.
var help = map[string]string{
	"deferd_accepted_total":                       "Messages accepted into the journal (a 200 for a delayed message).",
	"deferd_published_total":                      "Messages nsqd (the sink) took, journaled or direct.",
	"deferd_published_direct_total":               "Of deferd_published_total: due on arrival and published before the reply, without the journal.",
	"deferd_direct_journaled_total":               "Messages due on arrival that the sink did not take at once, journaled instead.",
	"deferd_cancelled_total":                      "Pending messages removed by /cancel.",
	"deferd_retried_total":                        "Publish attempts that failed and were rescheduled.",
	"deferd_failed_total":                         "Messages the sink refused outright (retried after --park-backoff, never dropped).",
	"deferd_journal_read_errors_total":            "Journal records that could not be read back when due (retried after --park-backoff).",
	"deferd_journal_moved_total":                  "Messages compaction moved to a newer journal segment.",
	"deferd_delivered_early_total":                "Messages published before their due time by the wall clock (the clock stepped back).",
	"deferd_delivery_lateness_seconds":            "Publish time minus due time, VictoriaMetrics vmrange buckets (about 12% wide).",
	"deferd_delivery_lateness_le_seconds":         "Publish time minus due time, Prometheus le buckets (for histogram_quantile).",
	"deferd_delivery_wheel_to_task_seconds":       "Lateness stage, messages through the wheel: due time to the start of their publish task (tick, wheel wake-up, pool queue).",
	"deferd_delivery_task_to_mpub_seconds":        "Lateness stage: publish task start to the MPUB carrying the message handed to go-nsq (journal read, grouping, batches ahead in the task).",
	"deferd_delivery_mpub_to_ok_seconds":          "Lateness stage: the MPUB handed to go-nsq to nsqd's OK (the sink's round trip).",
	protoFamily:                                   "Publish time minus due time by ingest protocol, proto=http|tcp|lib (Scheduler.Publish)|recovered (replayed from the journal after a restart, whatever its protocol); the series add up to deferd_delivery_lateness_le_seconds.",
	"deferd_pending_messages":                     "Messages accepted and not yet published or cancelled.",
	"deferd_pending_bytes":                        "Bytes of the pending messages' bodies.",
	"deferd_pending_by_topic":                     "Pending messages per topic (topics with pending messages only).",
	"deferd_wheel_entries":                        "Entries in the timing wheel.",
	"deferd_pool_running":                         "Publish tasks running.",
	"deferd_pool_waiting":                         "Publish tasks waiting for a worker.",
	"deferd_journal_corrupt_records":              "Corrupt journal records the last recovery found.",
	"deferd_journal_recovery_seconds":             "Duration of the last journal recovery.",
	"deferd_journal_segments":                     "Journal segment files.",
	"deferd_journal_writable":                     "1 if the journal can write, 0 while it cannot (disk full: delayed publishes answer 503 JOURNAL_UNAVAILABLE, published marks are held in memory, retried every second).",
	"deferd_journal_disk_bytes":                   "Bytes in journal segment files still present.",
	"deferd_journal_live_messages":                "Live messages in the journal.",
	"deferd_journal_appends_total":                "Message records written to the journal.",
	"deferd_journal_done_records_total":           "Done records (published or cancelled marks) written to the journal.",
	"deferd_journal_groups_total":                 "Journal write groups (one write(2) per segment touched).",
	"deferd_journal_fsyncs_total":                 "Journal fsyncs.",
	"deferd_journal_write_errors_total":           "Failed journal writes (while failing, publishes answer 503 JOURNAL_UNAVAILABLE).",
	"deferd_journal_corrupt_total":                "Corrupt journal regions found (recovery, compaction, reads).",
	"deferd_journal_deleted_segments_total":       "Journal segments deleted.",
	"deferd_egress_published_total":               "Messages nsqd answered OK to, per nsqd.",
	"deferd_egress_batches_total":                 "MPUB batches nsqd answered OK to, per nsqd.",
	"deferd_egress_errors_total":                  "Failed MPUB tries, per nsqd.",
	"deferd_egress_batch_duration_seconds":        "Duration of a successful MPUB, VictoriaMetrics vmrange buckets.",
	"deferd_egress_batch_duration_le_seconds":     "Duration of a successful MPUB, Prometheus le buckets (for histogram_quantile).",
	"deferd_egress_inflight_batches":              "MPUB batches in flight, per nsqd.",
	"deferd_egress_up":                            "1 if the nsqd is taking batches, 0 while it is backed off after failures.",
	"deferd_egress_retries_total":                 "MPUB tries repeated after a retryable error.",
	"deferd_egress_permanent_errors_total":        "Publish calls that ended with a permanent error (bad topic, body too big, refused by nsqd).",
	"deferd_egress_gave_up_total":                 "Publish calls given up after all tries (the scheduler retries their messages later).",
	"deferd_ingest_requests_total":                "Requests received, by path (HTTP) or command (TCP).",
	"deferd_ingest_messages_total":                "Messages received in requests.",
	"deferd_ingest_message_bytes_total":           "Bytes of the message bodies received.",
	"deferd_ingest_errors_total":                  "Error answers, by status code and message (HTTP) or error code (TCP).",
	"deferd_ingest_tcp_connections":               "Open TCP (nsqd V2 protocol) connections.",
	"deferd_ingest_tcp_connections_total":         "TCP connections accepted.",
	"deferd_ingest_tcp_connections_refused_total": "TCP connections closed at once (connection limit reached, or shutting down).",
	"deferd_ingest_tcp_heartbeats_total":          "Heartbeats sent on TCP connections.",
}

// family is one metric family of an exposition: its metadata and its
// sample lines.
type family struct {
	help, typ string
	lines     [][]byte
}

// writeFamilies writes text, Prometheus text format from several writers
// (metrics.Sets with metadata, WriteGauge* and similar helpers), to w with
// each family's samples together, in order of first appearance, under one
// # HELP (the help table's, else the first given) and one # TYPE line (the
// first given; untyped for a family without one). A sample belongs to the
// family its name's TYPE line declared, or, for name_bucket, name_sum and
// name_count, to histogram or summary name. Repeated series are dropped.
func writeFamilies(w io.Writer, text []byte) {
	fams := map[string]*family{}
	var order []string
	get := func(name string) *family {
		f := fams[name]
		if f == nil {
			f = &family{}
			fams[name] = f
			order = append(order, name)
		}
		return f
	}
	seen := map[string]bool{}
	for line := range bytes.Lines(text) {
		line = bytes.TrimRight(line, "\n")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if line[0] == '#' {
			fs := strings.Fields(string(line))
			if len(fs) < 3 || (fs[1] != "HELP" && fs[1] != "TYPE") {
				continue
			}
			f := get(fs[2])
			rest := strings.Join(fs[3:], " ")
			if fs[1] == "HELP" && f.help == "" {
				f.help = rest
			} else if fs[1] == "TYPE" && f.typ == "" {
				f.typ = rest
			}
			continue
		}
		end := bytes.IndexAny(line, "{ ")
		if end < 0 {
			continue
		}
		name := string(line[:end])
		key := name
		if line[end] == '{' {
			if c := bytes.IndexByte(line, '}'); c > 0 {
				key = string(line[:c+1])
			}
		}
		if seen[key] {
			continue
		}
		seen[key] = true
		fam := name
		if f := fams[name]; f == nil || f.typ == "" {
			for _, suf := range [...]string{"_bucket", "_sum", "_count"} {
				base, ok := strings.CutSuffix(name, suf)
				if f := fams[base]; ok && f != nil && (f.typ == "histogram" || f.typ == "summary") {
					fam = base
					break
				}
			}
		}
		f := get(fam)
		f.lines = append(f.lines, line)
	}
	var out bytes.Buffer
	for _, name := range order {
		f := fams[name]
		if len(f.lines) == 0 {
			continue
		}
		h := help[name]
		if h == "" {
			h = f.help
		}
		for _, suf := range [...]string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && h == "" && help[base] != "" {
				h = help[base] + " (" + suf[1:] + ")"
			}
		}
		if h != "" {
			fmt.Fprintf(&out, "# HELP %s %s\n", name, h)
		}
		typ := f.typ
		if typ == "" {
			typ = "untyped"
		}
		fmt.Fprintf(&out, "# TYPE %s %s\n", name, typ)
		for _, l := range f.lines {
			out.Write(l)
			out.WriteByte('\n')
		}
	}
	w.Write(out.Bytes())
}

// Percentiles returns the delivery lateness at the given quantiles (0..1),
// in seconds, from the lateness histogram (bucket upper bounds: about 12%
// resolution).
func (s *Scheduler) Percentiles(qs ...float64) []float64 {
	type bucket struct {
		upper float64
		n     uint64
	}
	var bs []bucket
	var total uint64
	s.lateness.vm.VisitNonZeroBuckets(func(vmrange string, n uint64) {
		var upper float64
		if i := strings.Index(vmrange, "..."); i >= 0 {
			fmt.Sscan(vmrange[i+3:], &upper)
		}
		bs = append(bs, bucket{upper, n})
		total += n
	})
	out := make([]float64, len(qs))
	if total == 0 {
		return out
	}
	// VisitNonZeroBuckets visits in increasing order of bucket.
	for qi, q := range qs {
		want := uint64(q*float64(total) + 0.5)
		if want < 1 {
			want = 1
		}
		var seen uint64
		for _, b := range bs {
			seen += b.n
			if seen >= want {
				out[qi] = b.upper
				break
			}
		}
	}
	return out
}
