package deferd

import (
	"bytes"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// Every nanosecond value falls in the fine bucket whose bounds hold it,
// and a bucket is at most 12.5% of its lower bound wide.
func TestStageHistFineBuckets(t *testing.T) {
	check := func(v uint64) {
		i := fineIndex(v)
		lo := uint64(0)
		if i > 0 {
			lo = fineUpper(i - 1)
		}
		hi := fineUpper(i)
		if v < lo || v >= hi && hi != math.MaxUint64 {
			t.Fatalf("value %d in bucket %d = [%d, %d)", v, i, lo, hi)
		}
		if lo >= 8 && float64(hi-lo) > 0.125*float64(lo)+1 {
			t.Fatalf("bucket %d = [%d, %d) wider than 12.5%%", i, lo, hi)
		}
	}
	for v := range uint64(5000) {
		check(v)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		check(r.Uint64() >> r.IntN(64))
	}
	check(math.MaxUint64)
	if got := fineIndex(math.MaxUint64); got != numFine-1 {
		t.Errorf("fineIndex(max) = %d, want %d", got, numFine-1)
	}
}

// add takes a count with each value: percentiles, count, the le buckets
// and the sum see it as that many values; negative durations count as 0.
func TestStageHistWeighted(t *testing.T) {
	var h stageHist
	if p := h.percentiles(0.5, 1); p[0] != 0 || p[1] != 0 {
		t.Errorf("empty: percentiles %v, want 0", p)
	}
	h.add(100*time.Microsecond, 98) // le 0.0001 exactly
	h.add(3*time.Millisecond, 1)
	h.add(-time.Second, 1) // a clock step
	h.add(time.Second, 0)  // nothing
	if n := h.count(); n != 100 {
		t.Errorf("count %d, want 100", n)
	}
	p := h.percentiles(0.5, 0.99, 1)
	within := func(got float64, want time.Duration) bool {
		return got >= want.Seconds() && got <= want.Seconds()*1.125
	}
	if !within(p[0], 100*time.Microsecond) || !within(p[1], 100*time.Microsecond) || !within(p[2], 3*time.Millisecond) {
		t.Errorf("percentiles p50 %v p99 %v max %v s, want 100µs, 100µs, 3ms (bucket bounds)", p[0], p[1], p[2])
	}
	if got, want := h.le[0].Load(), uint64(99); got != want { // 0 and 100µs: le 0.0001
		t.Errorf("le 0.0001: %d, want %d", got, want)
	}
	if got := h.sumNs.Load(); got != 98*100_000+3_000_000 {
		t.Errorf("sum %d ns", got)
	}
}

// recordStages splits each message's time into the three stages: by its
// due time, its batch's times, and the call's for what no batch covered.
func TestRecordStages(t *testing.T) {
	var st stages
	due := time.UnixMilli(1_000_000)
	start := due.Add(700 * time.Microsecond)
	call := start.Add(50 * time.Microsecond)
	now := call.Add(5 * time.Millisecond)
	msgs := []msgRef{{due: due.UnixMilli()}, {due: due.UnixMilli()}, {due: due.UnixMilli() - 1}, {due: due.UnixMilli()}}
	bs := []batchTime{{n: 3, sent: call.Add(10 * time.Microsecond), ok: call.Add(400 * time.Microsecond)}}
	st.recordStages(start, call, now, msgs, bs)
	for i, want := range [numStages]uint64{4, 4, 4} {
		if n := st[i].count(); n != want {
			t.Errorf("stage %s: count %d, want %d", stageFamilies[i], n, want)
		}
	}
	bucket := func(stage int, d time.Duration) uint64 { return st[stage].fine[fineIndex(uint64(d))].Load() }
	for _, c := range []struct {
		stage int
		d     time.Duration
		want  uint64
	}{
		{stageWheelToTask, 700 * time.Microsecond, 3},
		{stageWheelToTask, 1700 * time.Microsecond, 1},
		{stageTaskToMPUB, 60 * time.Microsecond, 3},
		{stageTaskToMPUB, 50 * time.Microsecond, 1}, // not in a batch: the call
		{stageMPUBToOK, 390 * time.Microsecond, 3},
		{stageMPUBToOK, 5 * time.Millisecond, 1},
	} {
		if got := bucket(c.stage, c.d); got != c.want {
			t.Errorf("stage %s: %d in the bucket of %v, want %d", stageFamilies[c.stage], got, c.d, c.want)
		}
	}
}

// The stages reach /stats (lateness_ms.stages) and /metrics (one le
// histogram family each), counting the messages published through the
// wheel, not those published straight from Publish.
func TestLatenessStagesExposed(t *testing.T) {
	s, base, got := promScheduler(t)
	const now, later = 3, 4
	promPublish(t, s, got, now, later)
	for deadline := time.Now().Add(10 * time.Second); s.Stats().Published < now+later; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("published %d, want %d", s.Stats().Published, now+later)
		}
	}
	st := s.Stats().Lateness.Stages
	for name, sl := range map[string]StageLateness{"wheel_to_task": st.WheelToTask, "task_to_mpub": st.TaskToMPUB, "mpub_to_ok": st.MPUBToOK} {
		if sl.Count != later {
			t.Errorf("stage %s: count %d, want %d", name, sl.Count, later)
		}
		if sl.P50 < 0 || sl.P50 > sl.P99 || sl.P99 > sl.Max {
			t.Errorf("stage %s: percentiles out of order: %+v", name, sl)
		}
	}
	for _, text := range [][]byte{func() []byte { var b bytes.Buffer; s.WritePrometheus(&b); return b.Bytes() }(), promGet(t, base+"/metrics")} {
		fams := promCheck(t, text)
		for _, name := range stageFamilies {
			f := fams[name]
			if f.GetType() != dto.MetricType_HISTOGRAM || len(f.GetMetric()) != 1 {
				t.Fatalf("family %s: %v", name, f)
			}
			h := f.Metric[0].GetHistogram()
			if h.GetSampleCount() != later {
				t.Errorf("%s_count %d, want %d", name, h.GetSampleCount(), later)
			}
			bs := h.GetBucket()
			if len(bs) < len(stageBuckets) || bs[0].GetUpperBound() != 0.0001 || bs[len(stageBuckets)-1].GetUpperBound() != 60 {
				t.Errorf("%s: buckets %v", name, bs)
			}
			if help[name] == "" {
				t.Errorf("%s has no HELP in the help table", name)
			}
		}
	}
}
