package ingest

import (
	"reflect"
	"testing"

	"github.com/VictoriaMetrics/metrics"
)

// errorCounts reads both listeners' error series back by their labels,
// quoted values with commas and escapes included; Add sums per key.
func TestErrorCountsAndAdd(t *testing.T) {
	set := metrics.NewSet()
	set.GetOrCreateCounter(`deferd_ingest_errors_total{code="400",message="A,\"B\"=C"}`).Add(2)
	set.GetOrCreateCounter(`deferd_ingest_errors_total{protocol="tcp",code="E_INVALID"}`).Add(3)
	set.GetOrCreateCounter(`deferd_ingest_requests_total{path="/pub"}`).Inc()
	got := errorCounts(set, func(l map[string]string) string { return l["code"] + " " + l["message"] + "|" + l["protocol"] })
	want := map[string]uint64{`400 A,"B"=C|`: 2, "E_INVALID |tcp": 3}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("errorCounts: %v, want %v", got, want)
	}
	for _, bad := range []string{"", `code}`, `code="x"`, `code="x",}`, `code=x}`} {
		if _, ok := parseLabels(bad); ok {
			t.Errorf("parseLabels(%q) ok", bad)
		}
	}

	a := IngestStats{Requests: map[string]uint64{"PUB": 1}, Messages: 2, Errors: map[string]uint64{"E_X": 1}, Connections: &ConnStats{Open: 1, Accepted: 2}}
	b := IngestStats{Requests: map[string]uint64{"PUB": 2, "MPUB": 1}, Messages: 3, MessageBytes: 7, Connections: &ConnStats{Accepted: 1, Heartbeats: 4}}
	sum := a.Add(b)
	wantSum := IngestStats{Requests: map[string]uint64{"PUB": 3, "MPUB": 1}, Messages: 5, MessageBytes: 7, Errors: map[string]uint64{"E_X": 1},
		Connections: &ConnStats{Open: 1, Accepted: 3, Heartbeats: 4}}
	if !reflect.DeepEqual(sum, wantSum) {
		t.Fatalf("Add: %+v, want %+v", sum, wantSum)
	}
	if a.Requests["PUB"] != 1 || a.Connections.Accepted != 2 {
		t.Fatalf("Add modified its receiver: %+v", a)
	}
	if z := (IngestStats{}).Add(IngestStats{}); z.Connections != nil || z.Requests == nil {
		t.Fatalf("zero Add: %+v", z)
	}
}
