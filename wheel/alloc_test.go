//go:build !race

package wheel

import (
	"testing"
	"time"
)

func TestAddCancelZeroAlloc(t *testing.T) {
	w := New[uint64](Options{Clock: &fakeClock{}})
	// Steady state: the slab already holds enough entries.
	hs := make([]Handle, 1000)
	for i := range hs {
		hs[i] = w.Add(int64(i)*int64(time.Second), uint64(i))
	}
	i := 0
	allocs := testing.AllocsPerRun(10000, func() {
		h := w.Add(int64(i%5000)*int64(time.Minute), uint64(i))
		if !w.Cancel(h) {
			t.Fatal("Cancel = false")
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("Add+Cancel: %v allocs/op, want 0", allocs)
	}
	vals := make([]uint64, 100)
	bhs := make([]Handle, 100)
	allocs = testing.AllocsPerRun(1000, func() {
		w.AddBatch(int64(i%5000)*int64(time.Minute), vals, bhs)
		for _, h := range bhs {
			if !w.Cancel(h) {
				t.Fatal("Cancel after AddBatch = false")
			}
		}
		i++
	})
	if allocs != 0 {
		t.Fatalf("AddBatch+Cancel: %v allocs/op, want 0", allocs)
	}
	// Expiry with recycled batches does not allocate per entry either.
	c := w.clock.(*fakeClock)
	now := int64(0)
	allocs = testing.AllocsPerRun(1000, func() {
		for j := range 10 {
			w.Add(now+int64(j)*int64(time.Millisecond), 1)
		}
		now += int64(10 * time.Millisecond)
		c.ns.Store(now)
		w.Poll(now, releaseBatch)
	})
	if allocs > 1 {
		t.Fatalf("Add+Poll: %v allocs per 10 entries", allocs)
	}
}

func releaseBatch(b *Batch[uint64]) { b.Release() }
