package wheel

import (
	"testing"
	"time"
)

// TestShardedTopIndexHandles: with 16 shards the last indices of a
// shard (up to 2^28-1) encode, cancel and come back from Poll with the
// handle Add returned; a stale one of them is refused.
func TestShardedTopIndexHandles(t *testing.T) {
	var c fakeClock
	w := NewSharded[int](Options{Clock: &c}, 16)
	const s = 15
	sh := w.shards[s]
	if sh.limit != 1<<28 {
		t.Fatalf("limit %d", sh.limit)
	}
	start := sh.limit - 4
	for len(sh.chunks) < int(start>>chunkBits) {
		sh.chunks = append(sh.chunks, nil) // never touched: no entries there
	}
	sh.used = start
	var hs []Handle
	for i := range 4 {
		hs = append(hs, w.addOn(s, int64(time.Millisecond)*int64(i+1), i))
	}
	for i, h := range hs {
		if uint32(h)&w.mask != s || uint32(h)>>w.bits != start+uint32(i) {
			t.Fatalf("handle %#x: shard %d index %d", h, uint32(h)&w.mask, uint32(h)>>w.bits)
		}
	}
	func() {
		defer func() { recover() }()
		w.addOn(s, 1, 9)
		t.Error("Add on a full shard did not panic")
	}()
	if !w.Cancel(hs[0]) || w.Cancel(hs[0]) {
		t.Fatal("cancel of the first top-index entry")
	}
	got := map[Handle]int{}
	c.ns.Store(int64(time.Second))
	w.Poll(c.Now(), func(b *Batch[int]) {
		for _, it := range b.Items {
			got[it.Handle] = it.Value
		}
		b.Release()
	})
	for i, h := range hs[1:] {
		if v, ok := got[h]; !ok || v != i+1 {
			t.Fatalf("handle %#x: got %v %v (all %v)", h, v, ok, got)
		}
		if w.Cancel(h) {
			t.Fatalf("Cancel of handed-out %#x = true", h)
		}
	}
	// the freed entries are reused with a new generation: old handles stale
	h := w.addOn(s, int64(2*time.Second), 7)
	for _, old := range hs {
		if old == h || w.Cancel(old) {
			t.Fatalf("stale handle %#x aliases new %#x", old, h)
		}
	}
	if !w.Cancel(h) || w.Len() != 0 {
		t.Fatal("new entry")
	}
}
