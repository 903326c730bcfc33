package wheel

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// TestShardedRunRealClock: Run on the real clock delivers the entries of
// every shard exactly once, never early, with the handles Add returned.
func TestShardedRunRealClock(t *testing.T) {
	w := NewSharded[int](Options{}, 4)
	out := make(chan *Batch[int])
	stop := make(chan struct{})
	done := make(chan *Batch[int])
	go func() { done <- w.Run(stop, out) }()

	const n = 400
	want := map[Handle]int64{}
	vals := map[Handle]int{}
	for i := range n {
		d := time.Duration(rand.IntN(80_000)) * time.Microsecond
		if i%50 == 0 {
			d = -time.Millisecond // already due
		}
		due := w.Now() + int64(d)
		h := w.addOn(uint32(i)%4, due, i)
		want[h], vals[h] = due, i
	}
	expectRun(t, w.shards[0], w.Now, func() int64 { return int64(w.Len()) }, out, stop, done, want, vals)
}

// shardedPlanned reports whether the driver has planned a sleep on every
// shard.
func shardedPlanned(w *Sharded[int]) bool {
	for _, sh := range w.shards {
		sh.mu.Lock()
		p := sh.planned
		sh.mu.Unlock()
		if p == 0 {
			return false
		}
	}
	return true
}

// TestShardedRunWakesOnEarlierAdd: the driver sleeps until an hour-ahead
// entry in one shard; an Add due sooner in any shard (an empty one, one
// with later entries, the same one) must wake it.
func TestShardedRunWakesOnEarlierAdd(t *testing.T) {
	for _, s := range []uint32{0, 1, 3} {
		w := NewSharded[int](Options{}, 4)
		out := make(chan *Batch[int], 1)
		stop := make(chan struct{})
		done := make(chan *Batch[int])
		w.addOn(0, w.Now()+int64(time.Hour), 1)
		w.addOn(1, w.Now()+int64(2*time.Hour), 1)
		go func() { done <- w.Run(stop, out) }()
		for wait := time.Now(); !shardedPlanned(w); { // let the driver plan its hour-long sleep
			if time.Since(wait) > 5*time.Second {
				t.Fatal("the driver did not plan a sleep")
			}
			time.Sleep(time.Millisecond)
		}
		start := time.Now()
		h := w.addOn(s, w.Now()+int64(20*time.Millisecond), 2)
		select {
		case b := <-out:
			if len(b.Items) != 1 || b.Items[0].Handle != h {
				t.Fatalf("shard %d: got %+v", s, b.Items)
			}
			if el := time.Since(start); el < 20*time.Millisecond {
				t.Fatalf("shard %d: fired after %v, before its 20ms delay", s, el)
			}
			b.Release()
		case <-time.After(5 * time.Second):
			t.Fatalf("an earlier Add on shard %d did not wake the sleeping driver", s)
		}
		close(stop)
		if b := <-done; b != nil {
			t.Fatalf("Run returned %+v", b.Items)
		}
		if w.Len() != 2 {
			t.Fatalf("Len() = %d, the hour-ahead entries should still be pending", w.Len())
		}
	}
}

// TestShardedRunReturnsUndelivered: when nobody receives, Run hands back
// the batch it was blocked sending once stop closes, with this wheel's
// handle.
func TestShardedRunReturnsUndelivered(t *testing.T) {
	w := NewSharded[int](Options{}, 2)
	out := make(chan *Batch[int]) // never read
	stop := make(chan struct{})
	done := make(chan *Batch[int])
	h := w.addOn(1, w.Now(), 7)
	go func() { done <- w.Run(stop, out) }()
	for w.Len() != 0 { // wait until Run has collected it
		time.Sleep(time.Millisecond)
	}
	close(stop)
	select {
	case b := <-done:
		if b == nil || len(b.Items) != 1 || b.Items[0].Handle != h || b.Items[0].Value != 7 {
			t.Fatalf("Run returned %+v, want the undelivered batch with handle %#x", b, h)
		}
		b.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after stop")
	}
}

// TestShardedConcurrent hammers Add/AddBatch/Cancel/Len from many
// goroutines (Sharded's own shard pick) while Run delivers; every entry is
// delivered or cancelled, never both, never early, and the goroutines used
// more than one shard. Run it under -race.
func TestShardedConcurrent(t *testing.T) {
	w := NewSharded[int](Options{Tick: 100 * time.Microsecond}, 4)
	out := make(chan *Batch[int], 16)
	stop := make(chan struct{})
	done := make(chan *Batch[int])
	go func() { done <- w.Run(stop, out) }()
	const workers, per = 32, 600
	fired := make(chan map[Handle]bool)
	go func() {
		got := map[Handle]bool{}
		for b := range out {
			now := w.Now()
			for _, it := range b.Items {
				if now < it.Due {
					t.Errorf("early by %v", time.Duration(it.Due-now))
				}
				if got[it.Handle] {
					t.Errorf("handle %#x delivered twice", it.Handle)
				}
				got[it.Handle] = true
			}
			b.Release()
		}
		fired <- got
	}()
	var (
		mu        sync.Mutex
		added     = map[Handle]bool{}
		cancelled = map[Handle]bool{}
		wg        sync.WaitGroup
	)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 2))
			var mine, gone []Handle
			hs := make([]Handle, 3)
			for i := range per {
				d := time.Duration(r.IntN(20_000)) * time.Microsecond
				if i%10 == 0 {
					w.AddBatch(w.Now()+int64(d), []int{i, i, i}, hs)
					mine = append(mine, hs...)
					continue
				}
				h := w.AddAfter(d, i)
				mine = append(mine, h)
				if i%3 == 0 && w.Cancel(h) {
					gone = append(gone, h)
				}
				_ = w.Len()
			}
			mu.Lock()
			for _, h := range mine {
				if added[h] {
					t.Errorf("handle %#x returned twice", h)
				}
				added[h] = true
			}
			for _, h := range gone {
				cancelled[h] = true
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for w.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	close(stop)
	if b := <-done; b != nil {
		t.Fatalf("Run returned %+v", b.Items)
	}
	close(out)
	got := <-fired
	shardsUsed := map[uint32]bool{}
	for h := range added {
		shardsUsed[uint32(h)&w.mask] = true
		if got[h] == cancelled[h] {
			t.Fatalf("handle %#x: delivered %v, cancelled %v", h, got[h], cancelled[h])
		}
	}
	if len(got)+len(cancelled) != len(added) {
		t.Fatalf("delivered %d + cancelled %d != added %d", len(got), len(cancelled), len(added))
	}
	if len(shardsUsed) < 2 {
		t.Fatalf("%d goroutines all added to one shard", workers)
	}
}

// TestShardedHandles: Cancel finds an entry by its Sharded handle in every
// shard; stale, foreign and zero handles are refused; NewSharded rounds
// and caps the shard count.
func TestShardedHandles(t *testing.T) {
	for n, want := range map[int]int{1: 1, 2: 2, 3: 4, 5: 8, 16: 16, 17: 16, 1000: 16} {
		if got := NewSharded[int](Options{}, n).Shards(); got != want {
			t.Fatalf("NewSharded(%d).Shards() = %d, want %d", n, got, want)
		}
	}
	var c fakeClock
	w := NewSharded[int](Options{Clock: &c}, 4)
	var hs []Handle
	for s := range uint32(4) {
		hs = append(hs, w.addOn(s, int64(time.Second), int(s)))
	}
	if w.Cancel(0) {
		t.Fatal("Cancel(0) = true")
	}
	for s, h := range hs {
		// Each shard's first entry has the same index and generation in
		// its shard; the handles differ by the shard bits alone.
		if uint32(h)&w.mask != uint32(s) || h>>32 != hs[0]>>32 || uint32(h)>>w.bits != uint32(hs[0])>>w.bits {
			t.Fatalf("handle %#x of shard %d (shard 0's: %#x)", h, s, hs[0])
		}
	}
	for s, h := range hs {
		if !w.Cancel(h) {
			t.Fatalf("Cancel(%#x) of shard %d = false", h, s)
		}
		if w.Cancel(h) {
			t.Fatalf("second Cancel(%#x) = true", h)
		}
	}
	if w.Len() != 0 {
		t.Fatalf("Len() = %d", w.Len())
	}
	if _, ok := w.Next(); ok {
		t.Fatal("Next() ok with nothing pending")
	}
}

// TestShardedAddSkipsBusyShards: Add takes a shard whose lock is free when
// its own is held, and waits only when every shard's lock is held.
func TestShardedAddSkipsBusyShards(t *testing.T) {
	var c fakeClock
	w := NewSharded[int](Options{Clock: &c}, 4)
	for free := range uint32(4) {
		for s, sh := range w.shards {
			if uint32(s) != free {
				sh.mu.Lock()
			}
		}
		h := w.Add(int64(time.Second), int(free)) // must not block
		for s, sh := range w.shards {
			if uint32(s) != free {
				sh.mu.Unlock()
			}
		}
		if got := uint32(h) & w.mask; got != free {
			t.Fatalf("with only shard %d free, Add used shard %d", free, got)
		}
	}
	for _, sh := range w.shards {
		sh.mu.Lock()
	}
	added := make(chan Handle)
	go func() { added <- w.Add(int64(time.Second), 9) }()
	select {
	case h := <-added:
		t.Fatalf("Add returned %#x while every shard was locked", h)
	case <-time.After(50 * time.Millisecond):
	}
	for _, sh := range w.shards {
		sh.mu.Unlock()
	}
	select {
	case h := <-added:
		if !w.Cancel(h) {
			t.Fatalf("Cancel(%#x) of the waiting Add's entry = false", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Add still blocked after the shards were unlocked")
	}
	if w.Len() != 4 {
		t.Fatalf("Len() = %d, want 4", w.Len())
	}
}

// mustPanic runs f and reports whether it panicked.
func mustPanic(f func()) (panicked bool) {
	defer func() { panicked = recover() != nil }()
	f()
	return false
}

// TestFull: a full Wheel's Add and AddBatch panic with nothing added and
// the lock released (a recovered panic leaves the wheel working); a
// Sharded wheel fills its other shards before it panics. The slab limit
// is lowered to 8 entries per wheel to make it cheap.
func TestFull(t *testing.T) {
	var c fakeClock
	w := New[int](Options{Clock: &c})
	w.limit = firstEntry + 8
	var hs []Handle
	for i := range 8 {
		hs = append(hs, w.Add(int64(time.Second), i))
	}
	if !mustPanic(func() { w.Add(int64(time.Second), 9) }) {
		t.Fatal("Add to a full wheel did not panic")
	}
	w.Cancel(hs[0])
	w.Cancel(hs[1])
	batch := make([]Handle, 3)
	if !mustPanic(func() { w.AddBatch(int64(time.Second), []int{1, 2, 3}, batch) }) {
		t.Fatal("AddBatch of 3 with room for 2 did not panic")
	}
	if w.Len() != 6 { // the lock was released, and nothing was added
		t.Fatalf("Len() = %d, want 6", w.Len())
	}
	w.AddBatch(int64(time.Second), []int{1, 2}, batch) // room for exactly 2, off the free list
	n := 0
	w.Poll(int64(2*time.Second), func(b *Batch[int]) { n += len(b.Items); b.Release() })
	if n != 8 || w.Len() != 0 {
		t.Fatalf("handed out %d, Len %d; want 8 and 0", n, w.Len())
	}

	sw := NewSharded[int](Options{Clock: &c}, 4)
	for _, sh := range sw.shards {
		sh.limit = firstEntry + 8
	}
	for i := range 32 { // one goroutine: one home shard, then the others
		sw.Add(int64(3*time.Second), i)
	}
	if !mustPanic(func() { sw.Add(int64(3*time.Second), 32) }) {
		t.Fatal("Add to a full Sharded wheel did not panic")
	}
	if sw.Len() != 32 {
		t.Fatalf("Sharded Len() = %d, want 32", sw.Len())
	}
	n = 0
	sw.Poll(int64(4*time.Second), func(b *Batch[int]) { n += len(b.Items); b.Release() })
	for range 4 { // batches of 8 fill the shards one by one
		sw.AddBatch(int64(5*time.Second), make([]int, 8), make([]Handle, 8))
	}
	if !mustPanic(func() { sw.AddBatch(int64(5*time.Second), []int{1}, make([]Handle, 1)) }) {
		t.Fatal("AddBatch to a full Sharded wheel did not panic")
	}
	if n != 32 || sw.Len() != 32 {
		t.Fatalf("handed out %d, Len %d; want 32 and 32", n, sw.Len())
	}
}

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
