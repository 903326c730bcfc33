package benchmarks

import (
	"bytes"
	"encoding/json"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/nsqio/go-nsq"
)

// Buckets are contiguous and ~1.6% wide; quantiles are bucket upper bounds
// never above the maximum.
func TestLatHist(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<22; v += 1 + v/97 {
		i := histIndex(v)
		if i < prev {
			t.Fatalf("histIndex(%d) = %d < %d", v, i, prev)
		}
		prev = i
		if up := histUpper(i); uint64(up) < v || (v >= 128 && float64(up-int64(v)) > 0.0157*float64(v)) {
			t.Fatalf("histUpper(histIndex(%d)) = %d", v, up)
		}
	}
	var h LatHist
	for i := int64(1); i <= 1000; i++ {
		h.Add(i * 1000) // 1..1000 ms
	}
	h.Add(-5) // early: counted at 0
	if h.N != 1001 || h.MaxUS != 1_000_000 {
		t.Fatalf("N %d max %d", h.N, h.MaxUS)
	}
	for _, c := range []struct {
		q    float64
		want int64
	}{{0.5, 500_000}, {0.99, 990_000}, {1, 1_000_000}} {
		if got := h.Quantile(c.q); got < c.want*99/100 || got > c.want*102/100 {
			t.Errorf("q%.2f = %d, want ~%d", c.q, got, c.want)
		}
	}
	var m LatHist
	m.Merge(&h)
	m.Merge(&h)
	if m.N != 2002 || m.Quantile(0.5) != h.Quantile(0.5) {
		t.Errorf("merge: N %d, p50 %d vs %d", m.N, m.Quantile(0.5), h.Quantile(0.5))
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP deferd_pending_messages x
# TYPE deferd_pending_messages gauge
deferd_pending_messages 12000000
deferd_pending_by_topic{topic="a"} 5
go_memstats_heap_inuse_bytes 5.62e+08
deferd_delivery_lateness_le_seconds_bucket{le="0.0005"} 10
deferd_delivery_lateness_le_seconds_bucket{le="0.001"} 90
deferd_delivery_lateness_le_seconds_bucket{le="+Inf"} 100
deferd_delivery_lateness_le_seconds_sum 0.07
`
	vals, le, cum := parseMetrics(text)
	if vals["deferd_pending_messages"] != 12e6 || vals["go_memstats_heap_inuse_bytes"] != 5.62e8 {
		t.Errorf("vals %v", vals)
	}
	if len(le) != 3 || le[2] != math.MaxFloat64 || cum[1] != 90 {
		t.Errorf("le %v cum %v", le, cum)
	}
	if q := deferdQuantile(le, []uint64{10, 10, 10}, cum, 0.5); q != 0.001 {
		t.Errorf("p50 between readings = %v", q)
	}
	if q := deferdQuantile(le, nil, cum, 0.99); !math.IsInf(q, 1) {
		t.Errorf("p99 = %v, want +Inf", q)
	}
	if q := deferdQuantile(le, cum, cum, 0.99); !math.IsNaN(q) {
		t.Errorf("p99 of nothing = %v", q)
	}
}

// syntheticSoak is a 6-minute run at 1000 msg/s with a 60 s delay, sampled
// every 10 s: disk and memory grow for a minute, then hold.
func syntheticSoak() *SoakReport {
	r := &SoakReport{Header: "synthetic\n\n", Rate: 1000, Duration: 5 * time.Minute, Delay: time.Minute, Size: 500,
		Offered: 300_000, Accepted: 299_000, Refused: 1000, Delivered: 299_000, RefusedBy: map[string]uint64{"503 OVER_CAPACITY": 1000},
		DeferdLe: []float64{0.001, 0.01, math.MaxFloat64}, DeferdCPUTotal: 3, NSQDCPUTotal: 2, SelfCPUTotal: 4, Load1Start: 1, Load1End: 2}
	var pub uint64
	for i := 1; i <= 36; i++ {
		t := float64(10 * i)
		fill := math.Min(t, 60) / 60
		if t > 60 && t <= 360 {
			pub += 10_000
		}
		r.Samples = append(r.Samples, SoakSample{T: t, Offered: uint64(min(t, 300) * 1000), Accepted: uint64(min(t, 300) * 1000), Delivered: pub,
			Pending: int64(fill * 60_000), DiskBytes: int64(fill * 32e6), RSS: int64(40<<20 + fill*(8<<20)), HeapInuse: int64(10<<20 + fill*(4<<20)),
			DeferdCPU: t * 0.01, NSQDCPU: t * 0.005, Load1: 1.5, DeferdLate: []uint64{pub * 98 / 100, pub * 995 / 1000, pub}})
	}
	for m := range 7 {
		var h LatHist
		if m >= 1 {
			for i := range 1000 {
				h.Add(int64(2000 + i*m)) // 2 ms + up to m ms
			}
		}
		r.Minutes = append(r.Minutes, h)
	}
	return r
}

// The table has the totals, the steady state and a row per minute; the
// chart is a PNG with every panel.
func TestSoakTableAndChart(t *testing.T) {
	r := syntheticSoak()
	if _, err := json.Marshal(r); err != nil {
		t.Fatalf("soak.json: %v", err)
	}
	rows := r.MinuteRows()
	if len(rows) != 7 {
		t.Fatalf("%d minute rows", len(rows))
	}
	if rows[3].Delivered != 1000 || rows[3].DeferdCores < 0.0099 || rows[3].DeferdCores > 0.0101 || rows[3].DiskMax != 32e6 {
		t.Errorf("minute 3: %+v", rows[3])
	}
	if q := rows[3].DeferdP99; q != 0.01 {
		t.Errorf("minute 3 deferd p99 %v", q)
	}
	var b bytes.Buffer
	if err := WriteSoakTable(&b, r); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"# Soak: 1000 msg/s, 1m0s delay, 500 B bodies, offered for 5m0s",
		"| 300,000 | 299,000 | 1,000 | 299,000 | 0 | 0 | 0 |",
		"503 OVER_CAPACITY: 1,000",
		"Steady state, t = 120-300 s",
		"| disk use of the data path | 0.03 GB | 0.03 GB | +0.00 GB |",
		"| deferd RSS | 48.00 MiB | 48.00 MiB | +0.00 MiB |",
		"| 3 | 1,000 |",
		"10.0 (6.7; 30.1)", // CPU s per M: 3/299k, 2/299k, 9/299k
	} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
	if strings.Count(md, "\n| ") < 7+1+5 {
		t.Errorf("too few rows:\n%s", md)
	}

	panels, err := soakPanels(r)
	if err != nil {
		t.Fatal(err)
	}
	if len(panels) != 7 {
		t.Errorf("%d panels, want 7", len(panels))
	}
	for _, p := range panels {
		if p.Y.Min != 0 || p.Y.Max <= 0 {
			t.Errorf("panel %q: y axis %v..%v, want from 0", p.Title.Text, p.Y.Min, p.Y.Max)
		}
	}
	path := filepath.Join(t.TempDir(), "soak.png")
	if err := SoakChart(path, r); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := png.Decode(f); err != nil {
		t.Fatal(err)
	}

	// Panels with data only: a run without deferd's memory readings or
	// deliveries draws neither panel.
	empty := &SoakReport{Samples: []SoakSample{{T: 10, DiskBytes: 1}}}
	panels, err = soakPanels(empty)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range panels {
		if strings.Contains(p.Title.Text, "memory") || strings.Contains(p.Title.Text, "Lateness") {
			t.Errorf("panel %q drawn without data", p.Title.Text)
		}
	}
	b.Reset()
	if err := WriteSoakTable(&b, empty); err != nil || !strings.Contains(b.String(), "No steady state") {
		t.Errorf("short run: %v\n%s", err, b.String())
	}
}

// The soak consumer counts each message once, duplicates and early ones
// apart, and finds the accepted ones that never came.
func TestSoakConsumer(t *testing.T) {
	node, err := nsqdnode.Start(nsqdnode.Config{DataPath: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Exit()
	start := time.Now()
	c, err := NewSoakConsumer(node.TCPAddr, "soaktest", 100, false, start)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	p, err := nsq.NewProducer(node.TCPAddr, nsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	p.SetLogger(quietLogger, nsq.LogLevelError)
	var bodies [][]byte
	for i := range 10 {
		due := start.Add(-time.Second)
		if i == 9 {
			due = start.Add(time.Hour) // early
		}
		bodies = append(bodies, NewMsg(uint64(i), due, 100).Body)
	}
	bodies = append(bodies, bodies[3]) // a duplicate
	if err := p.MultiPublish("soaktest", bodies); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if d, dup, _ := c.Counts(); (d == 10 && dup == 1) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	d, dup, early := c.Counts()
	if d != 10 || dup != 1 || early != 1 {
		t.Fatalf("delivered %d dup %d early %d", d, dup, early)
	}
	accepted := make([]uint64, 2)
	accepted[0] = 1<<12 - 1 // 0..11: 10 and 11 never sent
	if n := c.Missing(accepted); n != 2 {
		t.Errorf("missing %d, want 2", n)
	}
	mins := c.Minutes()
	if len(mins) != 1 || mins[0].N != 10 || mins[0].Quantile(0.5) < 1e6 {
		t.Errorf("minutes %+v", mins)
	}
}
