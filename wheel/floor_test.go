package wheel

import (
	"sync"
	"testing"
)

// addFloor is the least a concurrency-safe Add can do in this wheel: the
// lock, an entry off the free list, the value, a link at the tail of one
// fixed list, the count and the handle; no due-time conversion, level,
// slot or occupancy bit. Benchmark use only (the entry is not findable by
// Poll).
func (w *Wheel[T]) addFloor(v T) Handle {
	w.mu.Lock()
	i := w.free
	e := w.at(i)
	w.free = e.next
	e.gen |= genLive
	e.value = v
	const sn = 1
	sent := &w.sent[sn]
	e.next, e.prev = sn, sent.prev
	w.at(e.prev).next = i
	sent.prev = i
	w.n++
	h := handle(e.gen, i)
	w.mu.Unlock()
	return h
}

// BenchmarkAddFloor splits what one Add costs at 10M pending, reusing
// entries as BenchmarkAdd's wheel-reuse does (4Mi free entries here, so
// b.N up to 4Mi): add is Add itself; floor is addFloor (lock and link into
// one fixed list, no slot computation); lock is an uncontended sync.Mutex
// Lock+Unlock; farDue is the benchmarks' due-time computation, which every
// design's Add benchmark pays per op.
//
//	go test -run XXX -bench BenchmarkAddFloor -benchtime 200000x -count 3 ./wheel/
func BenchmarkAddFloor(b *testing.B) {
	mk := func() *Wheel[uint64] {
		w := New[uint64](Options{Clock: &fakeClock{}})
		for i := range 10_000_000 {
			w.Add(int64(farDue(i)), uint64(i))
		}
		spare := make([]Handle, 1<<22)
		for i := range spare {
			spare[i] = w.Add(int64(farDue(i)), 0)
		}
		for _, h := range spare {
			w.Cancel(h)
		}
		return w
	}
	b.Run("op=add", func(b *testing.B) {
		w := mk()
		i := 0
		for b.Loop() {
			sinkHandle = w.Add(int64(farDue(i)), uint64(i))
			i++
		}
	})
	b.Run("op=floor", func(b *testing.B) {
		w := mk()
		i := 0
		for b.Loop() {
			sinkHandle = w.addFloor(uint64(i))
			i++
		}
	})
	b.Run("op=lock", func(b *testing.B) {
		var mu sync.Mutex
		n := 0
		for b.Loop() {
			mu.Lock()
			n++
			mu.Unlock()
		}
		sinkHandle = Handle(n)
	})
	b.Run("op=farDue", func(b *testing.B) {
		var x int64
		i := 0
		for b.Loop() {
			x += int64(farDue(i))
			i++
		}
		sinkHandle = Handle(x)
	})
}
