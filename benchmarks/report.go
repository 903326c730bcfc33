package benchmarks

import (
	"errors"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Scenario names used by cmd/compare and the chart.
const (
	ScenarioFixed    = "fixed"
	ScenarioMixed    = "mixed"
	ScenarioBurst    = "burst"
	ScenarioCapacity = "capacity"
	ScenarioCrash    = "crash"
)

// WriteTable writes results as one markdown table. A negative MemPerMsg (the
// design held less than at its baseline) is shown as 0 and flagged in the
// note column, with the measured value.
func WriteTable(w io.Writer, rs []Result) error {
	var b strings.Builder
	b.WriteString("| design | scenario | offered msg/s | sustained msg/s | lateness p50 | p99 | max | early | accepted | lost | dup | CPU s/M msgs total (ext) | mem B/pending | note |\n")
	b.WriteString("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	for _, r := range rs {
		if r.Skipped != "" {
			fmt.Fprintf(&b, "| %s | %s | | | | | | | | | | | | skipped: %s |\n", r.Design, r.Scenario, escape(r.Skipped))
			continue
		}
		offered := "max"
		if r.Offered > 0 {
			offered = fmt.Sprintf("%.0f", r.Offered)
			if r.OfferedActual < 0.95*r.Offered {
				offered += fmt.Sprintf(" (got %.0f)", r.OfferedActual)
			}
		} else if r.OfferedActual > 0 {
			offered = fmt.Sprintf("max (%.0f)", r.OfferedActual)
		}
		lat := func(d time.Duration) string {
			if r.Delivered == 0 {
				return "-"
			}
			return fmtDur(d)
		}
		sustained, cpu, mem := "-", "-", "-"
		if r.Sustained > 0 {
			sustained = fmt.Sprintf("%.0f", r.Sustained)
		}
		if r.CPUTotal > 0 {
			cpu = fmt.Sprintf("%.1f", r.CPUTotal)
			if r.HasExt {
				cpu += fmt.Sprintf(" (%.1f)", r.CPUExt)
			}
		}
		note := r.Note
		switch {
		case r.MemPerMsg < 0:
			// Less memory held than at the baseline: what was freed during
			// the run (a previous run's leftovers, the allocator's caches)
			// outweighed what the pending messages hold. Not a measurement
			// of them: shown as 0 and said so.
			mem = "0"
			note = strings.TrimPrefix(note+fmt.Sprintf("; mem below its baseline (%.0f B/pending), shown as 0", r.MemPerMsg), "; ")
		case r.MemPerMsg > 0:
			mem = fmt.Sprintf("%.0f", r.MemPerMsg)
		}
		switch {
		case r.Span > 0 && r.Lost == 0:
			note = strings.TrimPrefix(note+fmt.Sprintf("; all %d delivered %s after due (ingest took %s)", r.Delivered, fmtDur(r.Span), fmtDur(r.IngestTime)), "; ")
		case r.Span > 0:
			note = strings.TrimPrefix(note+fmt.Sprintf("; %d of %d delivered, the last %s after due (ingest took %s)", r.Delivered, r.Accepted, fmtDur(r.Span), fmtDur(r.IngestTime)), "; ")
		}
		if r.Rejected > 0 {
			note = strings.TrimPrefix(note+fmt.Sprintf("; %d rejected by Submit", r.Rejected), "; ")
		}
		if r.MemNote != "" {
			note = strings.TrimPrefix(note+"; mem = "+r.MemNote, "; ")
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %d | %s | %s | %s |\n",
			r.Design, r.Scenario, offered, sustained, lat(r.P50), lat(r.P99), lat(r.Max), r.Early,
			r.Accepted, r.Lost, r.Dup, cpu, mem, escape(note))
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func escape(s string) string { return strings.ReplaceAll(s, "|", "/") }

func fmtDur(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + fmtDur(-d)
	case d < time.Millisecond:
		return fmt.Sprintf("%.0fµs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

// minMS is the floor lateness is clamped to on log axes.
const minMS = 0.1

func clampMS(ns int64) float64 { return math.Max(float64(ns)/1e6, minMS) }

// ErrNoChartData is Chart's error when no result has data for any panel
// (for example a run of the capacity scenario alone); no file is written.
var ErrNoChartData = errors.New("no result has data for a chart panel")

// Chart draws into one PNG at path the panels that rs has data for, in this
// order: the lateness distribution of every design under mixed delays, p99
// lateness and delivered throughput against offered rate under a fixed
// delay, and the burst's delivery time against nsqd's own take time + 1 s
// (nsqdTake; 0 to leave it out). A panel no result has data for is left
// out, and the image is sized to the panels drawn; with none, Chart writes
// nothing and returns ErrNoChartData.
func Chart(path string, rs []Result, nsqdTake time.Duration) error {
	panels, err := chartPanels(rs, nsqdTake)
	if err != nil {
		return err
	}
	return writePanels(path, panels, 11*vg.Centimeter)
}

// writePanels draws panels into one PNG at path, two to a row (one if
// there is only one), each 15 cm wide and rowHeight high; with no panels
// it writes nothing and returns ErrNoChartData.
func writePanels(path string, panels []*plot.Plot, rowHeight vg.Length) error {
	if len(panels) == 0 {
		return ErrNoChartData
	}
	cols := min(2, len(panels))
	rows := (len(panels) + cols - 1) / cols
	w, h := vg.Length(cols)*15*vg.Centimeter, vg.Length(rows)*rowHeight
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 6,
		PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	grid := make([][]*plot.Plot, rows) // an odd last panel leaves a nil tile
	for i := range grid {
		grid[i] = make([]*plot.Plot, cols)
	}
	for i, p := range panels {
		grid[i/cols][i%cols] = p
	}
	canvases := plot.Align(grid, tiles, dc)
	for i := range grid {
		for j, p := range grid[i] {
			if p != nil {
				p.Draw(canvases[i][j])
			}
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// chartPanels builds Chart's panels that rs has data for, in Chart's order,
// each with its axis ranges set from its data: log lateness axes span the
// data's decades, log rate axes the data padded by a quarter (more for a
// single value), and throughput and burst time start at zero. A panel has data when at least one design has a line or bar in it;
// a reference line (offered rate, nsqd's take time) alone does not count.
func chartPanels(rs []Result, nsqdTake time.Duration) ([]*plot.Plot, error) {
	designs := designOrder(rs)
	colorOf := designColor(designs)
	var panels []*plot.Plot

	// (a) lateness quantile curve, mixed delays.
	pa := plot.New()
	pa.Title.Text = "Lateness distribution, mixed delays"
	pa.X.Label.Text = "fraction of messages"
	pa.Y.Label.Text = "lateness (ms, log; early/0 shown at 0.1)"
	pa.Y.Scale = plot.LogScale{}
	pa.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	pa.Legend.Top, pa.Legend.Left = true, true
	var aY span
	for _, r := range rs {
		if r.Scenario != ScenarioMixed || r.Skipped != "" || len(r.Lateness) == 0 {
			continue
		}
		const points = 400
		xy := make(plotter.XYs, 0, points)
		for i := range points {
			k := i * (len(r.Lateness) - 1) / (points - 1)
			y := clampMS(r.Lateness[k])
			aY.add(y)
			xy = append(xy, plotter.XY{X: float64(k) / float64(max(1, len(r.Lateness)-1)), Y: y})
		}
		if err := addLine(pa, r.Design, xy, colorOf(r.Design)); err != nil {
			return nil, err
		}
	}
	if aY.ok {
		pa.X.Min, pa.X.Max = 0, 1
		aY.setLogDecades(&pa.Y)
		panels = append(panels, pa)
	}

	// (b) p99 lateness vs offered rate and (c) delivered vs offered, fixed.
	pb := plot.New()
	pb.Title.Text = "p99 lateness vs offered rate, fixed delay"
	pb.X.Label.Text = "offered msg/s (log)"
	pb.Y.Label.Text = "p99 lateness (ms, log)"
	pb.Y.Scale = plot.LogScale{}
	pb.X.Scale = plot.LogScale{}
	pb.X.Tick.Marker = plot.LogTicks{Prec: -1}
	pb.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	pb.Legend.Top, pb.Legend.Left = true, true
	pc := plot.New()
	pc.Title.Text = "Delivered vs offered, fixed delay"
	pc.X.Label.Text = "offered msg/s (log)"
	pc.Y.Label.Text = "sustained delivered msg/s"
	pc.X.Scale = plot.LogScale{}
	pc.X.Tick.Marker = plot.LogTicks{Prec: -1}
	pc.Legend.Top, pc.Legend.Left = true, true
	var fixedX, bY, cY span
	for _, d := range designs {
		var p99, thr plotter.XYs
		for _, r := range rs {
			if r.Design != d || r.Scenario != ScenarioFixed || r.Skipped != "" || r.Delivered == 0 || r.Offered <= 0 {
				continue
			}
			fixedX.add(r.Offered)
			bY.add(clampMS(int64(r.P99)))
			cY.add(r.Sustained)
			p99 = append(p99, plotter.XY{X: r.Offered, Y: clampMS(int64(r.P99))})
			thr = append(thr, plotter.XY{X: r.Offered, Y: r.Sustained})
		}
		if len(p99) == 0 {
			continue
		}
		if err := addLine(pb, d, p99, colorOf(d)); err != nil {
			return nil, err
		}
		if err := addLine(pc, d, thr, colorOf(d)); err != nil {
			return nil, err
		}
	}
	if fixedX.ok {
		ideal, err := idealLine(fixedX.lo, fixedX.hi)
		if err != nil {
			return nil, err
		}
		ideal.Color = color2gray
		ideal.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		pc.Add(ideal)
		pc.Legend.Add("offered", ideal)
		cY.add(fixedX.hi)
		fixedX.setLog(&pb.X)
		bY.setLogDecades(&pb.Y)
		fixedX.setLog(&pc.X)
		cY.setFromZero(&pc.Y)
		panels = append(panels, pb, pc)
	}

	// (d) burst: seconds from due until the last message arrived, one bar
	// per design in the colour it has in the other panels.
	pd := plot.New()
	pd.Title.Text = "Burst: last delivery after due"
	pd.Y.Label.Text = "seconds"
	bars, names, err := burstBars(rs, colorOf)
	if err != nil {
		return nil, err
	}
	var dY span
	for _, b := range bars {
		pd.Add(b)
		dY.add(b.Values[0])
	}
	if len(names) > 0 {
		pd.NominalX(names...)
		if nsqdTake > 0 {
			lim := (nsqdTake + time.Second).Seconds()
			target, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: lim}, {X: float64(len(names)) - 0.5, Y: lim}})
			if err != nil {
				return nil, err
			}
			target.Color = color2gray
			target.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
			pd.Add(target)
			pd.Legend.Add(fmt.Sprintf("nsqd take N + 1 s = %.2fs", lim), target)
			pd.Legend.Top = true
			dY.add(lim)
		}
		pd.X.Min, pd.X.Max = -0.5, float64(len(names))-0.5
		dY.setFromZero(&pd.Y)
		panels = append(panels, pd)
	}
	return panels, nil
}

// burstBars returns one bar per burst result that delivered all of it
// (a design that lost part of the burst did not finish it): its Span in
// seconds, at x = its index in names, in the design's colour (colorOf).
func burstBars(rs []Result, colorOf func(design string) color.Color) ([]*plotter.BarChart, []string, error) {
	var bars []*plotter.BarChart
	var names []string
	for _, r := range rs {
		if r.Scenario != ScenarioBurst || r.Skipped != "" || r.Span <= 0 || r.Lost != 0 {
			continue
		}
		bar, err := plotter.NewBarChart(plotter.Values{r.Span.Seconds()}, vg.Points(28))
		if err != nil {
			return nil, nil, err
		}
		bar.XMin = float64(len(names))
		bar.Color = colorOf(r.Design)
		bar.LineStyle.Width = 0
		bars = append(bars, bar)
		names = append(names, r.Design)
	}
	return bars, names, nil
}

// span is the range of the values added to it.
type span struct {
	lo, hi float64
	ok     bool
}

func (s *span) add(v float64) {
	if !s.ok {
		s.lo, s.hi, s.ok = v, v, true
		return
	}
	s.lo, s.hi = math.Min(s.lo, v), math.Max(s.hi, v)
}

// setLog sets a log axis to the span, widened by a factor of 1.25 each way
// (2 for a single value) so no point sits on the frame; bounds below minMS
// are raised to it, as a log axis needs them positive.
func (s span) setLog(a *plot.Axis) {
	lo, hi := math.Max(s.lo, minMS), math.Max(s.hi, minMS)
	f := 1.25
	if hi <= lo*1.01 {
		f = 2
	}
	a.Min, a.Max = lo/f, hi*f
}

// setLogDecades sets a log axis to the span widened out to whole decades,
// so that at least two labelled ticks (powers of ten) are on it; bounds
// below minMS are raised to it.
func (s span) setLogDecades(a *plot.Axis) {
	lo, hi := math.Max(s.lo, minMS), math.Max(s.hi, minMS)
	a.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	a.Max = math.Pow(10, math.Ceil(math.Log10(hi)))
	if a.Max <= a.Min {
		a.Max = a.Min * 10
	}
	// A hair beyond the decades, so rounding keeps their ticks on the axis.
	a.Min, a.Max = a.Min*0.999, a.Max*1.001
}

// idealLine is y = x from lo to hi, sampled densely enough to be drawn as
// the straight line it is on a log x axis against a linear y axis.
func idealLine(lo, hi float64) (*plotter.Line, error) {
	const n = 64
	xy := make(plotter.XYs, n)
	for i := range xy {
		x := lo * math.Pow(hi/lo, float64(i)/(n-1))
		xy[i] = plotter.XY{X: x, Y: x}
	}
	return plotter.NewLine(xy)
}

// setFromZero sets a linear axis to 0 .. the span's top plus 8% (1 when
// every value is 0).
func (s span) setFromZero(a *plot.Axis) {
	a.Min, a.Max = 0, s.hi*1.08
	if a.Max <= 0 {
		a.Max = 1
	}
}

var color2gray = color.Gray{Y: 120}

// designColors keeps each design's colour apart from the others' and the
// same in every panel; deferd is black.
var designColors = map[string]color.Color{
	"channel":    color.RGBA{R: 220, G: 40, B: 40, A: 255},
	"zset-poll":  color.RGBA{R: 60, G: 170, B: 60, A: 255},
	"zset-lua":   color.RGBA{R: 40, G: 110, B: 220, A: 255},
	"nsqd-defer": color.RGBA{R: 240, G: 150, B: 20, A: 255},
	"wheel":      color.RGBA{R: 150, G: 60, B: 190, A: 255},
	"deferd":     color.RGBA{A: 255},
}

// designColor returns each design's colour in every panel: its entry in
// designColors, else plotutil's colour for its place in designs.
func designColor(designs []string) func(design string) color.Color {
	return func(name string) color.Color {
		if c, ok := designColors[name]; ok {
			return c
		}
		for i, d := range designs {
			if d == name {
				return plotutil.Color(i)
			}
		}
		return plotutil.Color(0)
	}
}

// Downsample returns rs with each Lateness cut to at most n+1 evenly spaced
// quantiles, small enough to keep in a JSON file and still draw the curves.
func Downsample(rs []Result, n int) []Result {
	out := make([]Result, len(rs))
	for i, r := range rs {
		if k := len(r.Lateness); k > n+1 {
			q := make([]int64, n+1)
			for j := range q {
				q[j] = r.Lateness[j*(k-1)/n]
			}
			r.Lateness = q
		}
		out[i] = r
	}
	return out
}

func addLine(p *plot.Plot, name string, xy plotter.XYs, c color.Color) error {
	l, pts, err := plotter.NewLinePoints(xy)
	if err != nil {
		return err
	}
	l.Color = c
	l.Width = vg.Points(1.5)
	pts.Color = c
	pts.Radius = vg.Points(1.5)
	if len(xy) > 50 {
		p.Add(l)
	} else {
		p.Add(l, pts)
	}
	p.Legend.Add(name, l)
	return nil
}

func designOrder(rs []Result) []string {
	var out []string
	seen := map[string]bool{}
	for _, r := range rs {
		if !seen[r.Design] {
			seen[r.Design] = true
			out = append(out, r.Design)
		}
	}
	return out
}
