package benchmarks

import (
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gonum.org/v1/plot"
)

// fixedResult is one delivered fixed-delay step.
func fixedResult(design string, offered, sustained float64, p99 time.Duration) Result {
	return Result{Design: design, Scenario: ScenarioFixed, Offered: offered, OfferedActual: offered,
		Offer: 100, Accepted: 100, Delivered: 100, Sustained: sustained, P50: p99 / 2, P99: p99, Max: p99}
}

func titles(ps []*plot.Plot) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Title.Text)
	}
	return out
}

func panelTitled(t *testing.T, ps []*plot.Plot, prefix string) *plot.Plot {
	t.Helper()
	for _, p := range ps {
		if strings.HasPrefix(p.Title.Text, prefix) {
			return p
		}
	}
	t.Fatalf("no panel %q in %q", prefix, titles(ps))
	return nil
}

// A run of one design through the fixed scenario only (cmd/compare
// -designs deferd -scenarios fixed) draws the two fixed panels, with ranges
// around the data: not the mixed and burst panels with empty -1..1 axes.
func TestChartPanelsOnlyWithData(t *testing.T) {
	rs := []Result{fixedResult("deferd", 4000, 3990, 3*time.Millisecond)}
	ps, err := chartPanels(rs, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("panels %q, want the two fixed-delay ones", titles(ps))
	}
	pb := panelTitled(t, ps, "p99 lateness")
	if !(pb.X.Min > 0 && pb.X.Min < 4000 && pb.X.Max > 4000) {
		t.Errorf("p99 panel x %g..%g does not hold the one offered rate 4000", pb.X.Min, pb.X.Max)
	}
	if !(pb.Y.Min > 0 && pb.Y.Min < 3 && pb.Y.Max > 3) {
		t.Errorf("p99 panel y %g..%g does not hold the one p99 of 3 ms", pb.Y.Min, pb.Y.Max)
	}
	pc := panelTitled(t, ps, "Delivered vs offered")
	if pc.Y.Min != 0 {
		t.Errorf("throughput axis starts at %g, want 0", pc.Y.Min)
	}
	if pc.Y.Max < 4000 || pc.Y.Max > 5000 {
		t.Errorf("throughput axis ends at %g, want just above the offered 4000", pc.Y.Max)
	}

	// Skipped designs and the other scenarios' rows add no panel.
	rs = append(rs, Result{Design: "zset-lua", Scenario: ScenarioBurst, Skipped: "no redis"},
		Result{Design: "deferd", Scenario: ScenarioCapacity, Accepted: 100, MemPerMsg: 120},
		Result{Design: "channel", Scenario: ScenarioMixed, Skipped: "not run"})
	if ps, err = chartPanels(rs, time.Second); err != nil || len(ps) != 2 {
		t.Fatalf("panels %q, %v; want the two fixed-delay ones", titles(ps), err)
	}
}

func TestChartPanelsEachScenario(t *testing.T) {
	lat := make([]int64, 1000)
	for i := range lat {
		lat[i] = int64(i) * int64(time.Millisecond) / 10
	}
	mixed := Result{Design: "wheel", Scenario: ScenarioMixed, Delivered: 1000, Lateness: lat}
	burst := Result{Design: "deferd", Scenario: ScenarioBurst, Delivered: 10, Accepted: 10, Span: 1500 * time.Millisecond}
	for _, tc := range []struct {
		name string
		rs   []Result
		want []string
	}{
		{"mixed", []Result{mixed}, []string{"Lateness distribution"}},
		{"burst", []Result{burst}, []string{"Burst"}},
		{"all", []Result{mixed, fixedResult("wheel", 1000, 990, time.Millisecond), burst},
			[]string{"Lateness distribution", "p99 lateness", "Delivered vs offered", "Burst"}},
		{"capacity only", []Result{{Design: "deferd", Scenario: ScenarioCapacity, Accepted: 10, MemPerMsg: 100}}, nil},
	} {
		ps, err := chartPanels(tc.rs, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		got := titles(ps)
		if len(got) != len(tc.want) {
			t.Errorf("%s: panels %q, want %q", tc.name, got, tc.want)
			continue
		}
		for i := range got {
			if !strings.HasPrefix(got[i], tc.want[i]) {
				t.Errorf("%s: panels %q, want %q", tc.name, got, tc.want)
			}
		}
		for _, p := range ps {
			if p.X.Min >= p.X.Max || p.Y.Min >= p.Y.Max {
				t.Errorf("%s: %q has an empty range x %g..%g y %g..%g", tc.name, p.Title.Text, p.X.Min, p.X.Max, p.Y.Min, p.Y.Max)
			}
		}
		if tc.name == "burst" {
			pd := ps[0]
			// 0 .. above both the bar (1.5 s) and nsqd's target (1.5 s).
			if pd.Y.Min != 0 || pd.Y.Max < 1.5 || pd.Y.Max > 2 {
				t.Errorf("burst axis %g..%g, want 0 to just above 1.5 s", pd.Y.Min, pd.Y.Max)
			}
		}
		if tc.name == "mixed" {
			pa := ps[0]
			if pa.X.Min != 0 || pa.X.Max != 1 || pa.Y.Min <= 0 || pa.Y.Max < 99.9 {
				t.Errorf("lateness panel x %g..%g y %g..%g, want x 0..1 and y over 0.1..99.9 ms", pa.X.Min, pa.X.Max, pa.Y.Min, pa.Y.Max)
			}
		}
	}
}

// The burst bars are each in its design's colour from the other panels; a
// design that lost part of the burst has no bar.
func TestBurstBarsDesignColours(t *testing.T) {
	rs := []Result{
		{Design: "channel", Scenario: ScenarioBurst, Span: 3 * time.Second, Lost: 7},
		{Design: "zset-lua", Scenario: ScenarioBurst, Span: 2 * time.Second},
		{Design: "deferd", Scenario: ScenarioBurst, Span: time.Second},
		{Design: "extra", Scenario: ScenarioBurst, Span: time.Second},
	}
	colorOf := designColor(designOrder(rs))
	bars, names, err := burstBars(rs, colorOf)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != "zset-lua,deferd,extra" {
		t.Fatalf("bars for %q", names)
	}
	for i, b := range bars {
		if b.Color != colorOf(names[i]) || b.XMin != float64(i) {
			t.Errorf("bar %d (%s): colour %v at x %g, want %v at %d", i, names[i], b.Color, b.XMin, colorOf(names[i]), i)
		}
	}
	if bars[0].Color != designColors["zset-lua"] || bars[1].Color != designColors["deferd"] {
		t.Errorf("bars not in designColors")
	}
	if bars[1].Color == bars[2].Color {
		t.Errorf("deferd and an unlisted design share colour %v", bars[1].Color)
	}
}

func TestChartWritesOnlyWithData(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.png")
	if err := Chart(path, []Result{{Design: "wheel", Scenario: ScenarioCapacity, Accepted: 10, MemPerMsg: 5}}, 0); !errors.Is(err, ErrNoChartData) {
		t.Fatalf("capacity only: %v, want ErrNoChartData", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("a file was written without data: %v", err)
	}
	// Three panels: a 2x2 image with the last tile empty.
	rs := []Result{fixedResult("deferd", 1000, 999, time.Millisecond), fixedResult("deferd", 4000, 3900, 2*time.Millisecond),
		{Design: "deferd", Scenario: ScenarioBurst, Span: time.Second}}
	if err := Chart(path, rs, 400*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg, err := png.DecodeConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Width < cfg.Height || cfg.Width < 1000 {
		t.Errorf("image %dx%d, want two columns of panels", cfg.Width, cfg.Height)
	}
}

// A negative memory delta is not printed as a size: 0, and the note says
// what was measured.
func TestWriteTableNegativeMemory(t *testing.T) {
	var b strings.Builder
	rs := []Result{
		{Design: "wheel", Scenario: ScenarioCapacity, Offer: 10, Accepted: 10, MemPerMsg: -64, MemNote: selfRSSNote, CPUTotal: 1},
		{Design: "deferd", Scenario: ScenarioCapacity, Offer: 10, Accepted: 10, MemPerMsg: 122.4, CPUTotal: 1},
	}
	if err := WriteTable(&b, rs); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	neg, pos := strings.Split(lines[2], " | "), strings.Split(lines[3], " | ")
	if neg[12] != "0" || strings.Contains(lines[2], "| -64 |") {
		t.Errorf("negative mem shown as %q: %s", neg[12], lines[2])
	}
	if !strings.Contains(neg[13], "mem below its baseline (-64 B/pending), shown as 0") || !strings.Contains(neg[13], selfRSSNote) {
		t.Errorf("note %q does not flag the negative delta and its method", neg[13])
	}
	if pos[12] != "122" || strings.Contains(pos[13], "baseline") {
		t.Errorf("positive mem: %q, note %q", pos[12], pos[13])
	}
}
