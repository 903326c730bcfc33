package benchmarks

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// SoakMinute is one row of the soak's per-minute table: minute m covers
// t in [60m, 60m+60) s after the load started.
type SoakMinute struct {
	Minute        int
	Delivered     uint64 // first deliveries received in the minute
	P50, P99, Max int64  // consumer lateness, µs
	// DeferdP99 is the p99 of deferd's own lateness histogram over the
	// minute's samples (the upper bound of its bucket, seconds); NaN when
	// unknown or nothing was published.
	DeferdP99                float64
	DiskMax, RSSMax, HeapMax int64
	PendingEnd               int64
	Refused                  uint64
	DeferdCores, NSQDCores   float64
	Load1                    float64 // mean of the minute's samples
}

// MinuteRows summarizes r by minute.
func (r *SoakReport) MinuteRows() []SoakMinute {
	n := len(r.Minutes)
	if k := len(r.Samples); k > 0 {
		n = max(n, int(math.Ceil(r.Samples[k-1].T/60)))
	}
	rows := make([]SoakMinute, n)
	for m := range rows {
		row := &rows[m]
		row.Minute = m
		row.DeferdP99 = math.NaN()
		if m < len(r.Minutes) {
			h := &r.Minutes[m]
			row.Delivered = h.N
			row.P50, row.P99, row.Max = h.Quantile(0.5), h.Quantile(0.99), h.Quantile(1)
		}
		lo, hi := float64(60*m), float64(60*m+60)
		var first SoakSample // the last reading before the minute (zero: the start)
		var last *SoakSample
		var loads []float64
		for i := range r.Samples {
			s := &r.Samples[i]
			switch {
			case s.T < lo:
				first = *s
			case s.T < hi:
				last = s
				loads = append(loads, s.Load1)
				row.DiskMax = max(row.DiskMax, s.DiskBytes)
				row.RSSMax = max(row.RSSMax, s.RSS)
				row.HeapMax = max(row.HeapMax, s.HeapInuse)
			}
		}
		if last == nil {
			continue
		}
		row.PendingEnd = last.Pending
		row.Refused = last.Refused - first.Refused
		if dt := last.T - first.T; dt > 0 {
			row.DeferdCores = (last.DeferdCPU - first.DeferdCPU) / dt
			row.NSQDCores = (last.NSQDCPU - first.NSQDCPU) / dt
		}
		row.Load1 = mean(loads)
		row.DeferdP99 = deferdQuantile(r.DeferdLe, first.DeferdLate, last.DeferdLate, 0.99)
	}
	return rows
}

// deferdQuantile is quantile q of deferd's cumulative le histogram between
// two readings (the upper bound of the bucket that holds it, seconds).
func deferdQuantile(le []float64, from, to []uint64, q float64) float64 {
	if len(le) == 0 || len(to) != len(le) {
		return math.NaN()
	}
	at := func(c []uint64, i int) uint64 {
		if len(c) != len(le) {
			return 0
		}
		return c[i]
	}
	total := to[len(to)-1] - at(from, len(le)-1)
	if total == 0 {
		return math.NaN()
	}
	need := uint64(math.Ceil(q * float64(total)))
	for i := range le {
		if to[i]-at(from, i) >= need {
			if le[i] >= math.MaxFloat64 {
				break
			}
			return le[i]
		}
	}
	return math.Inf(1)
}

func mean(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := 0.0
	for _, x := range v {
		s += x
	}
	return s / float64(len(v))
}

// Total merges the per-minute histograms.
func (r *SoakReport) Total() LatHist {
	var h LatHist
	for i := range r.Minutes {
		h.Merge(&r.Minutes[i])
	}
	return h
}

// SteadyWindow is the part of the run where deferd is in steady state: from
// a minute after the first messages fell due (the journal then compacts
// what was published) to the end of the offer.
func (r *SoakReport) SteadyWindow() (from, to float64) {
	return (r.Delay + time.Minute).Seconds(), r.Duration.Seconds()
}

// slope is the least-squares slope of y over x.
func slope(x, y []float64) float64 {
	n := float64(len(x))
	if n < 2 {
		return math.NaN()
	}
	mx, my := mean(x), mean(y)
	var sxy, sxx float64
	for i := range x {
		sxy += (x[i] - mx) * (y[i] - my)
		sxx += (x[i] - mx) * (x[i] - mx)
	}
	if sxx == 0 {
		return math.NaN()
	}
	return sxy / sxx
}

func usDur(us int64) string { return fmtDur(time.Duration(us) * time.Microsecond) }

func secDur(s float64) string {
	switch {
	case math.IsNaN(s):
		return "-"
	case math.IsInf(s, 1):
		return "> 60 s"
	}
	return fmtDur(time.Duration(s * 1e9))
}

func perM(sec float64, n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", sec/float64(n)*1e6)
}

// WriteSoakTable writes r as markdown: the totals, the steady state and
// one row per minute.
func WriteSoakTable(w io.Writer, r *SoakReport) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# Soak: %.0f msg/s, %s delay, %d B bodies, offered for %s\n\n", r.Rate, r.Delay, r.Size, r.Duration)
	b.WriteString(r.Header)
	tot := r.Total()
	b.WriteString("| offered | accepted | refused | delivered | lost | dup | early | lateness p50 | p99 | max | CPU s per M delivered: deferd (nsqd; all three processes) | deferd's cores | load avg start / end |\n")
	b.WriteString("| --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n")
	span := 0.0
	if k := len(r.Samples); k > 0 {
		span = r.Samples[k-1].T
	}
	cores := "-"
	if span > 0 {
		cores = fmt.Sprintf("%.2f", r.DeferdCPUTotal/span)
	}
	fmt.Fprintf(&b, "| %s | %s | %s | %s | %d | %d | %d | %s | %s | %s | %s (%s; %s) | %s | %.1f / %.1f |\n\n",
		commas(r.Offered), commas(r.Accepted), commas(r.Refused), commas(r.Delivered), r.Lost, r.Dup, r.Early,
		usDur(tot.Quantile(0.5)), usDur(tot.Quantile(0.99)), usDur(tot.Quantile(1)),
		perM(r.DeferdCPUTotal, r.Delivered), perM(r.NSQDCPUTotal, r.Delivered), perM(r.DeferdCPUTotal+r.NSQDCPUTotal+r.SelfCPUTotal, r.Delivered),
		cores, r.Load1Start, r.Load1End)
	if len(r.RefusedBy) > 0 {
		keys := make([]string, 0, len(r.RefusedBy))
		for k := range r.RefusedBy {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteString("Refused, by answer:\n\n")
		for _, k := range keys {
			fmt.Fprintf(&b, "- %s: %s\n", escape(k), commas(r.RefusedBy[k]))
		}
		b.WriteString("\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "Note: %s\n\n", escape(n))
	}

	// Steady state.
	from, to := r.SteadyWindow()
	var ts, disk, rss, heap, pend []float64
	for _, s := range r.Samples {
		if s.T >= from && s.T <= to {
			ts = append(ts, s.T)
			disk = append(disk, float64(s.DiskBytes)/1e9)
			rss = append(rss, float64(s.RSS)/(1<<20))
			heap = append(heap, float64(s.HeapInuse)/(1<<20))
			pend = append(pend, float64(s.Pending)/1e6)
		}
	}
	rows := r.MinuteRows()
	if len(ts) < 2 {
		fmt.Fprintf(&b, "No steady state to report: the run is shorter than its delay + 1 min (t = %.0f s) of load.\n\n", from)
	} else {
		fmt.Fprintf(&b, "Steady state, t = %.0f-%.0f s (from a minute after the first messages fell due to the end of the offer; %d samples):\n\n", from, to, len(ts))
		b.WriteString("| quantity | min | max | trend (least squares, per 10 min) |\n| --- | --: | --: | --: |\n")
		line := func(name, unit string, x, v []float64) {
			lo, hi := v[0], v[0]
			for _, x := range v {
				lo, hi = math.Min(lo, x), math.Max(hi, x)
			}
			fmt.Fprintf(&b, "| %s | %.2f %s | %.2f %s | %+.2f %s |\n", name, lo, unit, hi, unit, slope(x, v)*600, unit)
		}
		line("disk use of the data path", "GB", ts, disk)
		line("deferd RSS", "MiB", ts, rss)
		line("deferd Go heap in use", "MiB", ts, heap)
		line("pending", "M msgs", ts, pend)
		var mt, p99 []float64
		for _, row := range rows {
			if lo, hi := float64(60*row.Minute), float64(60*row.Minute+60); lo >= from && hi <= (r.Duration+r.Delay).Seconds() && row.Delivered > 0 {
				mt = append(mt, lo+30)
				p99 = append(p99, float64(row.P99)/1e3)
			}
		}
		if len(p99) > 0 {
			line("lateness p99 per minute (consumer)", "ms", mt, p99)
		}
		b.WriteString("\n")
	}

	b.WriteString("Per minute (of the time since the load started; lateness by receive time at the consumer, deferd's own p99 from its /metrics histogram, upper bucket bounds):\n\n")
	b.WriteString("| min | delivered | p50 | p99 | max | deferd's p99 | disk GB (max) | RSS MiB (max) | heap MiB (max) | pending (end) | refused | deferd cores | nsqd cores | load avg |\n")
	b.WriteString("| --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |\n")
	for _, row := range rows {
		lat := func(us int64) string {
			if row.Delivered == 0 {
				return "-"
			}
			return usDur(us)
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %.2f | %d | %d | %s | %s | %.2f | %.2f | %.1f |\n",
			row.Minute, commas(row.Delivered), lat(row.P50), lat(row.P99), lat(row.Max), secDur(row.DeferdP99),
			float64(row.DiskMax)/1e9, row.RSSMax>>20, row.HeapMax>>20, commas(uint64(max(row.PendingEnd, 0))), commas(row.Refused),
			row.DeferdCores, row.NSQDCores, row.Load1)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func commas(n uint64) string {
	s := fmt.Sprint(n)
	var out []byte
	for i := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

var (
	soakBlack = color.RGBA{A: 255}
	soakBlue  = color.RGBA{R: 40, G: 110, B: 220, A: 255}
	soakRed   = color.RGBA{R: 220, G: 40, B: 40, A: 255}
	soakGreen = color.RGBA{R: 60, G: 170, B: 60, A: 255}
)

// soakPanels builds the soak chart's panels that r has data for: disk use
// of the data path, deferd's memory, lateness per minute, throughput,
// pending messages, CPU per process and the machine's load average, each
// against minutes since the load started,
// every y axis from zero.
func soakPanels(r *SoakReport) ([]*plot.Plot, error) {
	var panels []*plot.Plot
	type series struct {
		name string
		c    color.Color
		xy   plotter.XYs
	}
	panel := func(title, ylabel string, ss ...series) error {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "minutes since the load started"
		p.Y.Label.Text = ylabel
		p.Legend.Top, p.Legend.Left = true, true
		var ys, xs span
		any := false
		for _, s := range ss {
			if len(s.xy) == 0 {
				continue
			}
			any = true
			for _, pt := range s.xy {
				ys.add(pt.Y)
				xs.add(pt.X)
			}
			if err := addLine(p, s.name, s.xy, s.c); err != nil {
				return err
			}
		}
		if !any {
			return nil
		}
		ys.setFromZero(&p.Y)
		p.Y.Max *= 1.15 // room for the legend
		p.X.Min, p.X.Max = 0, math.Max(xs.hi, 1)
		panels = append(panels, p)
		return nil
	}
	var disk, rss, heap, pend, acc, del, dcpu, ncpu, scpu, load plotter.XYs
	var prev SoakSample
	for i, s := range r.Samples {
		x := s.T / 60
		disk = append(disk, plotter.XY{X: x, Y: float64(s.DiskBytes) / 1e9})
		if s.RSS > 0 {
			rss = append(rss, plotter.XY{X: x, Y: float64(s.RSS) / (1 << 20)})
		}
		if s.HeapInuse > 0 {
			heap = append(heap, plotter.XY{X: x, Y: float64(s.HeapInuse) / (1 << 20)})
		}
		pend = append(pend, plotter.XY{X: x, Y: float64(s.Pending) / 1e6})
		load = append(load, plotter.XY{X: x, Y: s.Load1})
		if dt := s.T - prev.T; dt > 0 {
			acc = append(acc, plotter.XY{X: x, Y: float64(s.Accepted-prev.Accepted) / dt / 1e3})
			del = append(del, plotter.XY{X: x, Y: float64(s.Delivered-prev.Delivered) / dt / 1e3})
			dcpu = append(dcpu, plotter.XY{X: x, Y: (s.DeferdCPU - prev.DeferdCPU) / dt})
			ncpu = append(ncpu, plotter.XY{X: x, Y: (s.NSQDCPU - prev.NSQDCPU) / dt})
			scpu = append(scpu, plotter.XY{X: x, Y: (s.SelfCPU - prev.SelfCPU) / dt})
		}
		prev = r.Samples[i]
	}
	var p50, p99, dp99 plotter.XYs
	for _, row := range r.MinuteRows() {
		x := float64(row.Minute) + 0.5
		// A minute with a few stragglers (the run's last second) has
		// no meaningful p99: drawn only with at least 1000 deliveries.
		if row.Delivered >= 1000 {
			p50 = append(p50, plotter.XY{X: x, Y: float64(row.P50) / 1e3})
			p99 = append(p99, plotter.XY{X: x, Y: float64(row.P99) / 1e3})
		}
		if v := row.DeferdP99; !math.IsNaN(v) && !math.IsInf(v, 0) {
			dp99 = append(dp99, plotter.XY{X: x, Y: v * 1e3})
		}
	}
	steps := []error{
		panel("Disk use of deferd's --data-path", "GB (allocated blocks)", series{"journal", soakBlack, disk}),
		panel("deferd's memory", "MiB", series{"RSS", soakBlack, rss}, series{"Go heap in use", soakBlue, heap}),
		panel("Lateness per minute (minutes with >= 1000 deliveries)", "ms", series{"p99 at the consumer", soakBlack, p99}, series{"p50 at the consumer", soakGreen, p50}, series{"p99 deferd's own (bucket bound)", soakRed, dp99}),
		panel("Throughput per sample", "thousand msg/s", series{"accepted", soakBlue, acc}, series{"delivered", soakBlack, del}),
		panel("Pending in deferd", "million messages", series{"pending", soakBlack, pend}),
		panel("CPU per process", "cores (CPU-s per s)", series{"deferd", soakBlack, dcpu}, series{"nsqd", soakBlue, ncpu}, series{"soak: producer + consumer", soakGreen, scpu}),
		panel("Machine load (shared: others' work included)", "load average (1 min)", series{"load avg", soakRed, load}),
	}
	for _, err := range steps {
		if err != nil {
			return nil, err
		}
	}
	return panels, nil
}

// SoakChart draws r's panels into one PNG at path (ErrNoChartData if none
// has data).
func SoakChart(path string, r *SoakReport) error {
	panels, err := soakPanels(r)
	if err != nil {
		return err
	}
	return writePanels(path, panels, 10*vg.Centimeter)
}
