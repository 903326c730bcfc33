package deferd

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// With MaxDefer at the largest time.Duration, ingest accepts
// defer=maxDeferMs, and wheelDue's dueMs*1e6 - wall overflowed int64: the
// message went to the wheel due ~292 years in the past and was published at
// once. The conversion now saturates, and such a message stays pending.
func TestMaxDeferOverflowStaysPending(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	o := testOptions(t.TempDir(), node.TCPAddr)
	o.MaxDefer = time.Duration(math.MaxInt64)
	h := startHarness(t, o)
	col := consume(t, node.TCPAddr, "far")
	maxMs := time.Duration(math.MaxInt64).Milliseconds()
	for i := 0; i < 40; i++ {
		h.mustPost(fmt.Sprintf("/pub?topic=far&defer=%d", maxMs), []byte(fmt.Sprint("far", i)))
		time.Sleep(time.Millisecond / 7)
	}
	time.Sleep(500 * time.Millisecond)
	if got := col.bodies(); len(got) > 0 {
		t.Fatalf("%d of 40 messages deferred by %d ms (292 years) were published at once: %q...", len(got), maxMs, got[0])
	}
}
