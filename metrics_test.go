package deferd

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// /metrics carries what /stats reports beyond the fixed gauges: pending per
// topic and the journal's state, with the same numbers.
func TestMetricsMirrorStats(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	h.mustPost("/mpub?topic=alpha&defer=600000", []byte("a1\na2\na3"))
	h.mustPost("/pub?topic=beta&defer=600000&id=b1", []byte("b1"))
	h.mustPost("/pub?topic=beta&defer=600000&id=b2", []byte("b2"))
	if code, _ := h.post("/cancel?id=b2", nil); code != 200 {
		t.Fatalf("cancel: %d", code)
	}
	resp, err := http.Get(h.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	st := h.stats()
	if st.PendingByTopic["alpha"] != 3 || st.PendingByTopic["beta"] != 1 {
		t.Fatalf("/stats pending by topic %v", st.PendingByTopic)
	}
	for _, want := range []string{
		`deferd_pending_by_topic{topic="alpha"} 3` + "\n",
		`deferd_pending_by_topic{topic="beta"} 1` + "\n",
		fmt.Sprintf("deferd_journal_segments %d\n", st.Journal.Segments),
		fmt.Sprintf("deferd_journal_appends_total %d\n", st.Journal.Appends),
		fmt.Sprintf("deferd_journal_live_messages %d\n", st.Journal.Live),
		"deferd_journal_write_errors_total 0\n",
	} {
		if !strings.Contains(string(mb), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(string(mb), "deferd_"))
		}
	}
}
