package egress

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// NodeStats is a snapshot of one nsqd as the Publisher sees it.
type NodeStats struct {
	Addr        string    `json:"addr"`
	Up          bool      `json:"up"` // false from a failed try until the next successful one
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	Published   uint64    `json:"published"` // messages acknowledged
	Batches     uint64    `json:"batches"`   // MPUBs acknowledged
	Errors      uint64    `json:"errors"`    // failed tries
	InFlight    int       `json:"in_flight"` // batches awaiting nsqd's answer
	// Discovered: listed by an nsqlookupd (Options.LookupdHTTPAddrs) and
	// not in Options.Addrs. Draining: no longer listed; it gets no new
	// batches, and its connections close once those in flight finished.
	Discovered bool `json:"discovered,omitempty"`
	Draining   bool `json:"draining,omitempty"`
}

// node is one nsqd and its connections.
type node struct {
	addr   string
	conns  []*conn
	static bool // from Options.Addrs: never removed by discovery
	// gone is set once discovery removed the node from the view, before
	// its drain waits for inFlight to reach 0 (see Publisher.send).
	gone atomic.Bool
	// label is the {nsqd="addr"} of its metrics, which drain unregisters.
	label string

	// downUntil is 0 while the node is up, else the UnixNano time its
	// backoff ends; it is read on every pick, so it is an atomic.
	downUntil atomic.Int64
	inFlight  atomic.Int64

	mu        sync.Mutex // guards fails, lastErr, lastErrAt
	fails     int        // consecutive failed tries
	lastErr   string
	lastErrAt time.Time

	published *metrics.Counter
	batches   *metrics.Counter
	errors    *metrics.Counter
	batchDur  durations
}

// conn is one connection slot of an nsqd: its current link (one TCP
// connection, MPUBs pipelined on it), replaced when it fails.
type conn struct {
	node     *node
	link     atomic.Pointer[link]
	inFlight atomic.Int32
}

// leastBusy returns n's connection with the fewest batches in flight.
func (n *node) leastBusy() *conn {
	c := n.conns[0]
	for _, cc := range n.conns[1:] {
		if cc.inFlight.Load() < c.inFlight.Load() {
			c = cc
		}
	}
	return c
}

func newNode(addr string, set *metrics.Set) *node {
	label := fmt.Sprintf("{nsqd=%q}", addr)
	n := &node{addr: addr, label: label}
	n.published = set.NewCounter("deferd_egress_published_total" + label)
	n.batches = set.NewCounter("deferd_egress_batches_total" + label)
	n.errors = set.NewCounter("deferd_egress_errors_total" + label)
	n.batchDur = durations{
		vm:   set.NewHistogram("deferd_egress_batch_duration_seconds" + label),
		prom: set.NewPrometheusHistogramExt("deferd_egress_batch_duration_le_seconds"+label, durationBuckets),
	}
	set.NewGauge("deferd_egress_inflight_batches"+label, func() float64 { return float64(n.inFlight.Load()) })
	set.NewGauge("deferd_egress_up"+label, func() float64 {
		if n.downUntil.Load() == 0 {
			return 1
		}
		return 0
	})
	return n
}

// durationBuckets are the le bounds, in seconds, of
// deferd_egress_batch_duration_le_seconds: 0.5 ms to 60 s.
var durationBuckets = []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60}

// durations is a batch duration histogram kept twice, updated together:
// VictoriaMetrics' vmrange buckets (deferd_egress_batch_duration_seconds)
// and Prometheus le buckets (deferd_egress_batch_duration_le_seconds, for
// histogram_quantile). Safe for concurrent use.
type durations struct {
	vm   *metrics.Histogram
	prom *metrics.PrometheusHistogram
}

// UpdateDuration records the time since start in both histograms.
func (d durations) UpdateDuration(start time.Time) {
	v := time.Since(start).Seconds()
	d.vm.Update(v)
	d.prom.Update(v)
}

// failed records a failed try and, if down, keeps the node out of picks for
// a backoff that doubles with each consecutive such failure.
func (n *node) failed(err error, down bool, p *Publisher) {
	n.errors.Inc()
	now := time.Now()
	n.mu.Lock()
	n.lastErr = err.Error()
	n.lastErrAt = now
	wasUp := false
	if down {
		n.fails++
		d := jitter(backoff(p.opts.Backoff, p.opts.MaxBackoff, n.fails))
		wasUp = n.downUntil.Swap(now.Add(d).UnixNano()) == 0
	}
	n.mu.Unlock()
	if wasUp {
		p.opts.Logf("egress: nsqd %s marked down: %v", n.addr, err)
		p.replaceIdle(n)
	}
}

// markUp records a successful try. Fast path: one atomic load when the node
// is already up.
func (n *node) markUp(p *Publisher) {
	if n.downUntil.Load() == 0 {
		return
	}
	n.mu.Lock()
	n.fails = 0
	wasDown := n.downUntil.Swap(0) != 0
	n.mu.Unlock()
	if wasDown {
		p.opts.Logf("egress: nsqd %s is up again", n.addr)
	}
}

// nodeMetricNames are the metrics newNode registers, without the label.
var nodeMetricNames = []string{
	"deferd_egress_published_total", "deferd_egress_batches_total", "deferd_egress_errors_total",
	"deferd_egress_batch_duration_seconds", "deferd_egress_batch_duration_le_seconds",
	"deferd_egress_inflight_batches", "deferd_egress_up",
}

// unregister removes n's metrics from set, so that a removed nsqd does not
// stay in /metrics (as deferd_egress_up 0) and can come back later.
func (n *node) unregister(set *metrics.Set) {
	for _, name := range nodeMetricNames {
		set.UnregisterMetric(name + n.label)
	}
}

func (n *node) stats() NodeStats {
	n.mu.Lock()
	s := NodeStats{
		Addr:        n.addr,
		Up:          n.downUntil.Load() == 0,
		LastError:   n.lastErr,
		LastErrorAt: n.lastErrAt,
		Discovered:  !n.static,
		Draining:    n.gone.Load(),
	}
	n.mu.Unlock()
	s.Published = n.published.Get()
	s.Batches = n.batches.Get()
	s.Errors = n.errors.Get()
	s.InFlight = int(n.inFlight.Load())
	return s
}
