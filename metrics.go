package deferd

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// initMetrics creates the Scheduler's metrics.Set: gauges read its counters
// at scrape time, so the hot paths pay only their atomic adds.
func (s *Scheduler) initMetrics() {
	set := metrics.NewSet()
	s.set = set
	s.lateness = set.NewHistogram("deferd_delivery_lateness_seconds")
	gauge := func(name string, f func() float64) { set.NewGauge(name, f) }
	gauge("deferd_pending_messages", func() float64 { return float64(s.pending.Load()) })
	gauge("deferd_pending_bytes", func() float64 { return float64(s.pendingBytes.Load()) })
	gauge("deferd_wheel_entries", func() float64 { return float64(s.w.Len()) })
	gauge("deferd_pool_running", func() float64 { return float64(s.pool.Running()) })
	gauge("deferd_pool_waiting", func() float64 { return float64(s.pool.Waiting()) })
	counter := func(name string, v *atomic.Uint64) {
		set.NewGauge(name, func() float64 { return float64(v.Load()) })
	}
	counter("deferd_accepted_total", &s.accepted)
	counter("deferd_published_total", &s.published)
	counter("deferd_published_direct_total", &s.direct)
	counter("deferd_direct_journaled_total", &s.directMissed)
	counter("deferd_cancelled_total", &s.cancelled)
	counter("deferd_retried_total", &s.retried)
	counter("deferd_failed_total", &s.failed)
	counter("deferd_journal_read_errors_total", &s.readErrors)
	counter("deferd_journal_moved_total", &s.moved)
	counter("deferd_delivered_early_total", &s.early)
	gauge("deferd_journal_corrupt_records", func() float64 { return float64(len(s.recovery.Corrupt)) })
	gauge("deferd_journal_recovery_seconds", func() float64 { return s.recovery.Duration.Seconds() })
	set.RegisterMetricsWriter(s.writeMetrics)
}

// AddMetrics adds set to what WritePrometheus writes: the metrics of a
// listener or of the embedder's own. Safe for concurrent use.
func (s *Scheduler) AddMetrics(set *metrics.Set) {
	s.extraMu.Lock()
	s.extra = append(s.extra, set)
	s.extraMu.Unlock()
}

// WritePrometheus writes the Scheduler's metrics in Prometheus text format:
// its own, the default sink's, those added with AddMetrics (the HTTP and
// TCP listeners'), and the process's. Cost: O(metrics + topics); safe for
// concurrent use. The metrics endpoint of ListenHTTP serves it; an
// embedder with an HTTP server of its own can serve it there.
func (s *Scheduler) WritePrometheus(w io.Writer) {
	s.set.WritePrometheus(w)
	if s.eg != nil {
		s.eg.Metrics().WritePrometheus(w)
	}
	s.extraMu.Lock()
	extra := slices.Clone(s.extra)
	s.extraMu.Unlock()
	for _, set := range extra {
		set.WritePrometheus(w)
	}
	metrics.WriteProcessMetrics(w)
}

// writeMetrics writes what /stats has beyond the fixed gauges: the
// journal's state (one Stats call per scrape, O(segments)) and the pending
// messages per topic (one series per topic with pending messages; nsqd's
// topic names need no escaping in a label).
func (s *Scheduler) writeMetrics(w io.Writer) {
	js := s.j.Stats()
	metrics.WriteGaugeUint64(w, "deferd_journal_segments", uint64(js.Segments))
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
	for _, tc := range tcs {
		metrics.WriteGaugeUint64(w, `deferd_pending_by_topic{topic="`+tc.topic+`"}`, uint64(max(tc.n, 0)))
	}
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
	s.lateness.VisitNonZeroBuckets(func(vmrange string, n uint64) {
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
