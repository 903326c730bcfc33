//go:build !race

package intern

import "testing"

// Allocation counts are not a contract under the race detector (its
// instrumentation may allocate), so this test is built without it.
func TestGetKnownDoesNotAllocate(t *testing.T) {
	var tab Table
	b := []byte("orders")
	tab.Get(b)
	if n := testing.AllocsPerRun(1000, func() { tab.Get(b) }); n != 0 {
		t.Fatalf("Get of a known string: %v allocations, want 0", n)
	}
}
