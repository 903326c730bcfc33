package wheel

import (
	"testing"
	"time"
)

// TestFarSlotsReused checks that entries beyond 32 bits of ticks (kept at
// the top level with their full tick on the side) give their side slot back
// when they are cancelled, cascade down, or fire.
func TestFarSlotsReused(t *testing.T) {
	c := &fakeClock{}
	w := New[int](Options{Tick: time.Microsecond, Clock: c})
	far := int64(100 * 24 * time.Hour) // 2^36 µs is 19 h: top level
	var hs []Handle
	for i := range 100 {
		hs = append(hs, w.Add(far+int64(i), i))
	}
	if len(w.far) != 100 {
		t.Fatalf("%d side slots for 100 top-level entries", len(w.far))
	}
	for _, h := range hs[:50] {
		if !w.Cancel(h) {
			t.Fatal("Cancel of a top-level entry = false")
		}
	}
	for i := range 50 {
		w.Add(far+int64(i), i)
	}
	if len(w.far) != 100 || len(w.farFree) != 0 {
		t.Fatalf("cancelled side slots not reused: %d slots, %d free", len(w.far), len(w.farFree))
	}
	n := 0
	w.Poll(far+1000, func(b *Batch[int]) { n += len(b.Items); b.Release() })
	if n != 100 || w.Len() != 0 {
		t.Fatalf("fired %d of 100, %d left", n, w.Len())
	}
	if len(w.farFree) != len(w.far) {
		t.Fatalf("%d of %d side slots free after everything fired", len(w.farFree), len(w.far))
	}
}
