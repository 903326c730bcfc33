package deferd

import (
	"fmt"
	"io"
	"math"
	"math/bits"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/VictoriaMetrics/metrics"

	"github.com/deferd/deferd/egress"
)

// The stages of a message's lateness through the wheel (a message published
// straight from Publish, due on arrival, is in the total only):
//
//   - wheel to task: its due time to the start of the pool task that
//     publishes it: the wheel's tick and its driver's wake-up, the hand-off
//     to the dispatcher and the wait for a pool worker;
//   - task to MPUB: the task's start to the hand-off of the MPUB holding the
//     message to go-nsq (for a Sink other than the default, to the call of
//     Sink.Publish that took it): the journal read, the grouping by topic,
//     and the round trips of the batches ahead of it in the same task;
//   - MPUB to OK: that hand-off to nsqd's OK (for another Sink, to the
//     return of its Publish): the sink's round trip, go-nsq's goroutines
//     included, and the tries of that batch that failed before it.
//
// A message's three stages add up to its batch's OK minus its due time:
// its lateness, except that the total of a message in an earlier batch of
// a sink call of several counts until the call returned.
const (
	stageWheelToTask = iota
	stageTaskToMPUB
	stageMPUBToOK
	numStages
)

// stageFamilies are the Prometheus histogram families of the stages, in
// stage order.
var stageFamilies = [numStages]string{
	"deferd_delivery_wheel_to_task_seconds",
	"deferd_delivery_task_to_mpub_seconds",
	"deferd_delivery_mpub_to_ok_seconds",
}

// stageBuckets are the le bounds, in seconds, of the stage histograms: finer
// than latenessBuckets below 5 ms, where the stages of a healthy deferd
// are.
var stageBuckets = [...]float64{0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005,
	0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// stageBucketsNs is stageBuckets in nanoseconds.
var stageBucketsNs = func() []int64 {
	ns := make([]int64, len(stageBuckets))
	for i, b := range stageBuckets {
		ns[i] = int64(math.Round(b * 1e9))
	}
	return ns
}()

// fineSub is log2 of the sub-buckets per power of two of a stageHist's
// fine buckets: 8, so each is at most 12.5% wide, as VictoriaMetrics'
// are about 12%.
const fineSub = 3

// numFine is the number of fine buckets: every uint64 nanosecond value.
const numFine = (64 - fineSub + 1) << fineSub

// stageHist is a histogram of durations that takes a count with each
// value, so a batch of n messages costs one add, not n. It keeps fine
// log-linear buckets (at most 12.5% wide, for Percentiles) and the le
// buckets of stageBuckets (for Prometheus), all atomic counters. Safe for
// concurrent use; the zero value is empty and ready.
type stageHist struct {
	fine  [numFine]atomic.Uint64
	le    [len(stageBuckets) + 1]atomic.Uint64 // the last is +Inf only
	sumNs atomic.Uint64
}

// fineIndex is the fine bucket of v nanoseconds: v itself below 8, then 8
// buckets per power of two.
func fineIndex(v uint64) int {
	if v < 1<<fineSub {
		return int(v)
	}
	e := bits.Len64(v) - 1 // >= fineSub
	m := (v >> (e - fineSub)) & (1<<fineSub - 1)
	return (e-fineSub+1)<<fineSub + int(m)
}

// fineUpper is the exclusive upper bound, in nanoseconds, of fine bucket
// i (saturated at math.MaxUint64).
func fineUpper(i int) uint64 {
	if i < 1<<fineSub {
		return uint64(i) + 1
	}
	e := i>>fineSub + fineSub - 1
	m := uint64(i & (1<<fineSub - 1))
	hi, lo := bits.Mul64(1<<fineSub+m+1, 1<<(e-fineSub))
	if hi != 0 {
		return math.MaxUint64
	}
	return lo
}

// add records n values of d (a negative d, from a clock step, as 0). O(len
// of stageBuckets) compares and three atomic adds.
func (h *stageHist) add(d time.Duration, n int) {
	if n <= 0 {
		return
	}
	v := int64(max(d, 0))
	h.fine[fineIndex(uint64(v))].Add(uint64(n))
	i := 0
	for i < len(stageBucketsNs) && v > stageBucketsNs[i] {
		i++
	}
	h.le[i].Add(uint64(n))
	h.sumNs.Add(uint64(v) * uint64(n))
}

// count is the number of values recorded.
func (h *stageHist) count() uint64 {
	var n uint64
	for i := range h.le {
		n += h.le[i].Load()
	}
	return n
}

// percentiles returns the values at quantiles qs (0..1), in seconds: the
// upper bound of the fine bucket where each falls (at most 12.5% above the
// true value), 0 for an empty histogram. q = 1 is the bound of the top
// bucket used. O(fine buckets); concurrent adds may or may not be seen.
func (h *stageHist) percentiles(qs ...float64) []float64 {
	var counts [numFine]uint64
	var total uint64
	for i := range h.fine {
		counts[i] = h.fine[i].Load()
		total += counts[i]
	}
	out := make([]float64, len(qs))
	if total == 0 {
		return out
	}
	for qi, q := range qs {
		want := max(uint64(q*float64(total)+0.5), 1)
		var seen uint64
		for i, c := range counts {
			if seen += c; c > 0 && seen >= want {
				out[qi] = float64(fineUpper(i)) / 1e9
				break
			}
		}
	}
	return out
}

// writePrometheus writes h as Prometheus histogram name (seconds): # HELP
// and # TYPE, then its series (writeSeries, no labels).
func (h *stageHist) writePrometheus(w io.Writer, name string) {
	metrics.WriteMetadataIfNeeded(w, name, "histogram")
	h.writeSeries(w, name, "")
}

// writeSeries writes h's series of histogram name: cumulative
// _bucket{labels,le} lines over stageBuckets and +Inf, _sum{labels} and
// _count{labels} (the +Inf bucket's count). labels is "" or label pairs
// without braces (`proto="tcp"`), already escaped.
func (h *stageHist) writeSeries(w io.Writer, name, labels string) {
	pre, braced := "", ""
	if labels != "" {
		pre, braced = labels+",", "{"+labels+"}"
	}
	var cum uint64
	for i := range h.le {
		cum += h.le[i].Load()
		le := "+Inf"
		if i < len(stageBuckets) {
			le = strconv.FormatFloat(stageBuckets[i], 'g', -1, 64)
		}
		fmt.Fprintf(w, "%s_bucket{%sle=%q} %d\n", name, pre, le, cum)
	}
	fmt.Fprintf(w, "%s_sum%s %g\n", name, braced, float64(h.sumNs.Load())/1e9)
	fmt.Fprintf(w, "%s_count%s %d\n", name, braced, cum)
}

// stages are the lateness stage histograms of a Scheduler, in stage order.
type stages [numStages]stageHist

// batchTime is when one batch of n messages of a sink call went out (sent:
// its MPUB handed to go-nsq, or the sink called) and was taken (ok).
type batchTime struct {
	n        int
	sent, ok time.Time
}

// recordStages records the stages of msgs, which one sink call took in
// order, in batches bs (whose counts cover msgs; what they do not cover
// counts as one batch sent at call and taken at now), for a task that
// started at start. The wheel-to-task stage is added once per run of
// equal due times (a task's messages share a tick, so mostly one run).
func (st *stages) recordStages(start, call, now time.Time, msgs []msgRef, bs []batchTime) {
	for i := 0; i < len(msgs); {
		j := i + 1
		for j < len(msgs) && msgs[j].due == msgs[i].due {
			j++
		}
		st[stageWheelToTask].add(start.Sub(time.UnixMilli(msgs[i].due)), j-i)
		i = j
	}
	left := len(msgs)
	for _, b := range bs {
		n := min(b.n, left)
		st[stageTaskToMPUB].add(b.sent.Sub(start), n)
		st[stageMPUBToOK].add(b.ok.Sub(b.sent), n)
		left -= n
	}
	if left > 0 {
		st[stageTaskToMPUB].add(call.Sub(start), left)
		st[stageMPUBToOK].add(now.Sub(call), left)
	}
}

// LatenessStages breaks Lateness down for the messages published through
// the wheel (see Lateness.Stages); each stage's figures are over messages:
// the stages of one message add up (to its batch's OK minus its due
// time), their percentiles do not.
type LatenessStages struct {
	// WheelToTask is due time to the start of the publish task: the tick,
	// the wheel driver's wake-up and the wait for a pool worker.
	WheelToTask StageLateness `json:"wheel_to_task"`
	// TaskToMPUB is the task's start to the MPUB carrying the message
	// handed to go-nsq (another Sink: to its Publish call): the journal
	// read, grouping, and the round trips of batches ahead in the task.
	TaskToMPUB StageLateness `json:"task_to_mpub"`
	// MPUBToOK is that MPUB to nsqd's OK (another Sink: its Publish call
	// to its return): the sink's round trip.
	MPUBToOK StageLateness `json:"mpub_to_ok"`
}

// StageLateness holds the percentiles of one lateness stage in
// milliseconds: upper bounds of buckets at most 12.5% wide, Max that of
// the top bucket used; Count is the messages recorded.
type StageLateness struct {
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Count uint64  `json:"count"`
}

// stageLateness is h's figures for /stats. O(fine buckets).
func (h *stageHist) stageLateness() StageLateness {
	p := h.percentiles(0.5, 0.9, 0.99, 0.999, 1)
	return StageLateness{P50: p[0] * 1000, P90: p[1] * 1000, P99: p[2] * 1000, P999: p[3] * 1000, Max: p[4] * 1000, Count: h.count()}
}

// stats returns the stages' figures for /stats. O(fine buckets).
func (st *stages) stats() LatenessStages {
	one := (*stageHist).stageLateness
	return LatenessStages{
		WheelToTask: one(&st[stageWheelToTask]),
		TaskToMPUB:  one(&st[stageTaskToMPUB]),
		MPUBToOK:    one(&st[stageMPUBToOK]),
	}
}

// writePrometheus writes each stage as its histogram family.
func (st *stages) writePrometheus(w io.Writer) {
	for i := range st {
		st[i].writePrometheus(w, stageFamilies[i])
	}
}

// ObserveBatch records a batch the sink took during the task's current
// sink call (egress.BatchObserver).
func (t *task) ObserveBatch(n int, sent, ok time.Time) {
	t.batches = append(t.batches, batchTime{n: n, sent: sent, ok: ok})
}

// observedSink is a Sink that reports the batches it sent: the default
// one.
type observedSink interface {
	PublishObserved(topic string, bodies [][]byte, obs egress.BatchObserver) (int, error)
}

// PublishObserved is Publish, reporting each batch nsqd took to obs.
func (s nsqdSink) PublishObserved(topic string, bodies [][]byte, obs egress.BatchObserver) (int, error) {
	return rejected(s.p.PublishObserved(topic, bodies, obs))
}

// ingestProto is the protocol a message came in by. The index keeps it
// with each pending message (a byte per journal ordinal, beside the wheel
// handle; see segTable) so that its lateness counts under it at delivery
// (protoHists). The journal does not record it: a message replayed from
// the journal at start counts as protoRecovered, whatever it came in by.
// The zero value is protoRecovered.
type ingestProto uint8

const (
	protoRecovered ingestProto = iota // replayed from the journal at start
	protoHTTP                         // the HTTP API (ListenHTTP), a cluster peer's forwards included
	protoTCP                          // nsqd's TCP protocol (ListenTCP)
	protoLib                          // Scheduler.Publish, from Go
	numProtos
)

// protoNames are the protocols' names in /stats (lateness_ms.by_proto)
// and the proto label of protoFamily, in protocol order.
var protoNames = [numProtos]string{"recovered", "http", "tcp", "lib"}

// protoFamily is the Prometheus histogram family of the lateness by
// protocol, one series per protocol (label proto, every protocol always
// written), over the le buckets of the stages (stageBuckets).
const protoFamily = "deferd_delivery_lateness_by_proto_seconds"

// protoHists is the delivery lateness by protocol: every message the sink
// took, through the wheel or straight from Publish, counts once under its
// protocol, so their counts add up to the total lateness histogram's.
// Safe for concurrent use; the zero value is empty and ready.
type protoHists [numProtos]stageHist

// record records the lateness at now of msgs, a sink call's messages
// (their proto set by index.published): one add per run of equal due time
// and protocol (a task's messages share a tick, so mostly one run).
func (ph *protoHists) record(now time.Time, msgs []msgRef) {
	for i := 0; i < len(msgs); {
		j := i + 1
		for j < len(msgs) && msgs[j].due == msgs[i].due && msgs[j].proto == msgs[i].proto {
			j++
		}
		ph[msgs[i].proto].add(now.Sub(time.UnixMilli(msgs[i].due)), j-i)
		i = j
	}
}

// stats returns each protocol's figures for /stats, by name; every
// protocol is present (Count 0 if none came by it). O(fine buckets).
func (ph *protoHists) stats() map[string]StageLateness {
	m := make(map[string]StageLateness, numProtos)
	for p := range ph {
		m[protoNames[p]] = ph[p].stageLateness()
	}
	return m
}

// writePrometheus writes protoFamily: # HELP and # TYPE once, then a
// series per protocol.
func (ph *protoHists) writePrometheus(w io.Writer) {
	metrics.WriteMetadataIfNeeded(w, protoFamily, "histogram")
	for p := range ph {
		ph[p].writeSeries(w, protoFamily, `proto="`+protoNames[p]+`"`)
	}
}
