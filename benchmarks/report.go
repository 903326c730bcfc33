package benchmarks

import (
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

// WriteTable writes results as one markdown table.
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
		if r.MemPerMsg != 0 {
			mem = fmt.Sprintf("%.0f", r.MemPerMsg)
		}
		note := r.Note
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

// Chart draws four panels into one PNG at path: the lateness distribution of
// every design under mixed delays, p99 lateness and delivered throughput
// against offered rate under a fixed delay, and the burst's delivery time
// against nsqd's own take time + 1 s (nsqdTake; 0 to leave it out).
func Chart(path string, rs []Result, nsqdTake time.Duration) error {
	designs := designOrder(rs)
	lines := map[*plot.Plot]int{} // data lines per plot
	addLine := func(p *plot.Plot, name string, xy plotter.XYs, c color.Color) error {
		lines[p]++
		return addLine(p, name, xy, c)
	}
	color := func(name string) color.Color {
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

	// (a) lateness quantile curve, mixed delays.
	pa := plot.New()
	pa.Title.Text = "Lateness distribution, mixed delays"
	pa.X.Label.Text = "fraction of messages"
	pa.Y.Label.Text = "lateness (ms, log; early/0 shown at 0.1)"
	pa.Y.Scale = plot.LogScale{}
	pa.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	pa.Legend.Top, pa.Legend.Left = true, true
	for _, r := range rs {
		if r.Scenario != ScenarioMixed || len(r.Lateness) == 0 {
			continue
		}
		const points = 400
		xy := make(plotter.XYs, 0, points)
		for i := range points {
			k := i * (len(r.Lateness) - 1) / (points - 1)
			xy = append(xy, plotter.XY{X: float64(k) / float64(max(1, len(r.Lateness)-1)), Y: clampMS(r.Lateness[k])})
		}
		if err := addLine(pa, r.Design, xy, color(r.Design)); err != nil {
			return err
		}
	}

	// (b) p99 lateness vs offered rate and (c) delivered vs offered, fixed.
	pb := plot.New()
	pb.Title.Text = "p99 lateness vs offered rate, fixed delay"
	pb.X.Label.Text = "offered msg/s"
	pb.Y.Label.Text = "p99 lateness (ms, log)"
	pb.Y.Scale = plot.LogScale{}
	pb.X.Scale = plot.LogScale{}
	pb.X.Tick.Marker = plot.LogTicks{Prec: -1}
	pb.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	pb.Legend.Top, pb.Legend.Left = true, true
	pc := plot.New()
	pc.Title.Text = "Delivered vs offered, fixed delay"
	pc.X.Label.Text = "offered msg/s"
	pc.Y.Label.Text = "sustained delivered msg/s"
	pc.X.Scale = plot.LogScale{}
	pc.X.Tick.Marker = plot.LogTicks{Prec: -1}
	pc.Y.Scale = plot.LogScale{}
	pc.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	pc.Legend.Top, pc.Legend.Left = true, true
	for _, d := range designs {
		var p99, thr plotter.XYs
		for _, r := range rs {
			if r.Design != d || r.Scenario != ScenarioFixed || r.Skipped != "" || r.Delivered == 0 {
				continue
			}
			p99 = append(p99, plotter.XY{X: r.Offered, Y: clampMS(int64(r.P99))})
			thr = append(thr, plotter.XY{X: r.Offered, Y: math.Max(r.Sustained, 1)})
		}
		if len(p99) == 0 {
			continue
		}
		if err := addLine(pb, d, p99, color(d)); err != nil {
			return err
		}
		if err := addLine(pc, d, thr, color(d)); err != nil {
			return err
		}
	}
	minOffered, maxOffered := math.Inf(1), 0.0
	for _, r := range rs {
		if r.Scenario == ScenarioFixed && r.Offered > 0 {
			minOffered = math.Min(minOffered, r.Offered)
			maxOffered = math.Max(maxOffered, r.Offered)
		}
	}
	if maxOffered > 0 {
		ideal, _ := plotter.NewLine(plotter.XYs{{X: minOffered, Y: minOffered}, {X: maxOffered, Y: maxOffered}})
		ideal.Color = color2gray
		ideal.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		pc.Add(ideal)
		pc.Legend.Add("offered", ideal)
	}

	// (d) burst: seconds from due until the last message arrived.
	pd := plot.New()
	pd.Title.Text = "Burst: last delivery after due"
	pd.Y.Label.Text = "seconds"
	var vals plotter.Values
	var names []string
	for _, r := range rs {
		if r.Scenario == ScenarioBurst && r.Skipped == "" && r.Span > 0 && r.Lost == 0 { // a design that lost part of it did not finish it
			vals = append(vals, r.Span.Seconds())
			names = append(names, r.Design)
		}
	}
	if len(vals) > 0 {
		bars, err := plotter.NewBarChart(vals, vg.Points(28))
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(0)
		pd.Add(bars)
		pd.NominalX(names...)
	}
	if nsqdTake > 0 {
		lim := (nsqdTake + time.Second).Seconds()
		target, _ := plotter.NewLine(plotter.XYs{{X: -0.5, Y: lim}, {X: float64(max(1, len(vals))) - 0.5, Y: lim}})
		target.Color = color2gray
		target.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		pd.Add(target)
		pd.Legend.Add(fmt.Sprintf("nsqd take N + 1 s = %.2fs", lim), target)
		pd.Legend.Top = true
	}

	// An empty log axis cannot be drawn; fall back to linear where a
	// scenario was not run.
	for _, p := range []*plot.Plot{pa, pb, pc} {
		if lines[p] == 0 {
			p.X.Scale, p.Y.Scale = plot.LinearScale{}, plot.LinearScale{}
			p.X.Tick.Marker, p.Y.Tick.Marker = plot.DefaultTicks{}, plot.DefaultTicks{}
		}
	}

	const w, h = 30 * vg.Centimeter, 22 * vg.Centimeter
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(110))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 2, PadX: vg.Millimeter * 6, PadY: vg.Millimeter * 6,
		PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3, PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3}
	plots := [][]*plot.Plot{{pa, pb}, {pc, pd}}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
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
