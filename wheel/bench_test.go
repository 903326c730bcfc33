package wheel

// Side-by-side benchmarks of the wheel against time.AfterFunc, a
// mutex-protected container/heap, and one sleeping goroutine per message.
// Run them all in one go so the ratios are comparable on a noisy machine:
//
//	go test -run XXX -bench . -benchtime 200000x -timeout 30m ./wheel/
//
// except BenchmarkSustained, which needs several times n ops per run (see
// its comment):
//
//	go test -run XXX -bench BenchmarkSustained -benchtime 60000000x -timeout 30m ./wheel/

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var sinkHandle Handle

func benchSizes(b *testing.B) []int {
	if testing.Short() {
		return []int{1_000_000}
	}
	return []int{1_000_000, 10_000_000}
}

// liveBytes is the memory held by live heap objects and goroutine stacks
// after a full GC.
func liveBytes() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// farDue spreads pending entries between one and two hours ahead.
func farDue(i int) time.Duration {
	return time.Hour + time.Duration(uint64(i)*2654435761%uint64(time.Hour/time.Microsecond))*time.Microsecond
}

// impl is one scheduler design under test. Handles are kept by the impl
// in a slice sized before memory is measured.
type impl struct {
	name   string
	fill   func(n, extra int) // pre-fill n entries far ahead, room for extra
	add    func(i int)        // add entry i far ahead
	cancel func(i int)        // cancel pre-filled entry i
	// replace cancels the entry whose handle sits in slot k of the
	// pre-fill's handles and adds entry i far ahead in its place.
	replace func(k, i int)
	soon    func(i int, d int64) // add entry i due d ns from the current time
	expire  func(now int64) int  // hand out everything due at now (fake time)
	clean   func()               // drop everything
}

func wheelImpl() *impl { return newWheelImpl(false) }

// wheelReuseImpl adds 256Ki more entries after the pre-fill and cancels
// them, so the timed Adds reuse free entries (the steady state of a wheel
// whose entries expire and are replaced) instead of growing the slab. Its
// B/pending includes those free entries.
func wheelReuseImpl() *impl { return newWheelImpl(true) }

func newWheelImpl(reuse bool) *impl {
	var (
		c  fakeClock
		w  *Wheel[uint64]
		hs []Handle
	)
	var fired int
	onBatch := func(b *Batch[uint64]) { fired += len(b.Items); b.Release() }
	name := "wheel"
	if reuse {
		name = "wheel-reuse"
	}
	return &impl{
		name: name,
		fill: func(n, extra int) {
			w = New[uint64](Options{Clock: &c})
			hs = make([]Handle, n)
			for i := range n {
				hs[i] = w.Add(int64(farDue(i)), uint64(i))
			}
			if reuse {
				spare := make([]Handle, 1<<18)
				for i := range spare {
					spare[i] = w.Add(int64(farDue(i)), 0)
				}
				for _, h := range spare {
					w.Cancel(h)
				}
			}
		},
		add:    func(i int) { sinkHandle = w.Add(int64(farDue(i)), uint64(i)) },
		cancel: func(i int) { w.Cancel(hs[i]) },
		replace: func(k, i int) {
			w.Cancel(hs[k])
			hs[k] = w.Add(int64(farDue(i)), uint64(i))
		},
		soon: func(i int, d int64) { w.Add(c.Now()+d, uint64(i)) },
		expire: func(now int64) int {
			fired = 0
			c.ns.Store(now)
			w.Poll(now, onBatch)
			return fired
		},
		clean: func() { w, hs = nil, nil; c.ns.Store(0) },
	}
}

func afterFuncImpl() *impl {
	var ts []*time.Timer
	noop := func() {}
	return &impl{
		name: "afterfunc",
		fill: func(n, extra int) {
			ts = make([]*time.Timer, n, n+extra)
			for i := range n {
				ts[i] = time.AfterFunc(farDue(i), noop)
			}
		},
		add:    func(i int) { ts = append(ts, time.AfterFunc(farDue(i), noop)) },
		cancel: func(i int) { ts[i].Stop() },
		replace: func(k, i int) {
			ts[k].Stop()
			ts[k] = time.AfterFunc(farDue(i), noop)
		},
		// soon/expire: see BenchmarkAddExpireAfterFunc (real time).
		clean: func() {
			for _, t := range ts {
				t.Stop()
			}
			ts = nil
		},
	}
}

// heapItem is the classic design: one heap object per entry, its index
// kept inside it for O(log n) removal (as nsqd's in-flight queue does).
type heapItem struct {
	due   int64
	index int
	value uint64
}

type itemHeap []*heapItem

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h itemHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *itemHeap) Push(x any) { it := x.(*heapItem); it.index = len(*h); *h = append(*h, it) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	it.index = -1
	return it
}

// lockedHeap is a mutex-protected container/heap driven by one goroutine.
type lockedHeap struct {
	mu sync.Mutex
	h  itemHeap
}

func (l *lockedHeap) add(due int64, v uint64) *heapItem {
	it := &heapItem{due: due, value: v}
	l.mu.Lock()
	heap.Push(&l.h, it)
	l.mu.Unlock()
	return it
}

func (l *lockedHeap) cancel(it *heapItem) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if it.index < 0 {
		return false
	}
	heap.Remove(&l.h, it.index)
	return true
}

func (l *lockedHeap) expire(now int64, out []*heapItem) []*heapItem {
	l.mu.Lock()
	for len(l.h) > 0 && l.h[0].due <= now {
		out = append(out, heap.Pop(&l.h).(*heapItem))
	}
	l.mu.Unlock()
	return out
}

func heapImpl() *impl {
	var (
		l   *lockedHeap
		hs  []*heapItem
		now int64
		buf []*heapItem
	)
	return &impl{
		name: "heap",
		fill: func(n, extra int) {
			l = &lockedHeap{h: make(itemHeap, 0, n+extra)}
			hs = make([]*heapItem, n)
			for i := range n {
				hs[i] = l.add(int64(farDue(i)), uint64(i))
			}
		},
		add:    func(i int) { l.add(int64(farDue(i)), uint64(i)) },
		cancel: func(i int) { l.cancel(hs[i]) },
		replace: func(k, i int) {
			l.cancel(hs[k])
			hs[k] = l.add(int64(farDue(i)), uint64(i))
		},
		soon: func(i int, d int64) { l.add(now+d, uint64(i)) },
		expire: func(t int64) int {
			now = t
			buf = l.expire(t, buf[:0])
			n := len(buf)
			clear(buf)
			return n
		},
		clean: func() { l, hs, buf, now = nil, nil, nil, 0 },
	}
}

// BenchmarkAdd: Add throughput with n entries already pending far ahead,
// the memory each pending entry costs (live heap + stacks, including the
// 8-byte handle the caller keeps), and the wall time of one full GC cycle
// with them pending. fill-ns/entry is the pre-fill's wall time per entry:
// Add throughput while the pending set grows from 0 to n, including the
// garbage collections the growing heap triggers (the timed Adds, 200k at
// n pending, trigger none).
func BenchmarkAdd(b *testing.B) {
	for _, n := range benchSizes(b) {
		for _, mk := range []func() *impl{wheelImpl, wheelReuseImpl, afterFuncImpl, heapImpl} {
			im := mk()
			b.Run(fmt.Sprintf("impl=%s/pending=%dM", im.name, n/1_000_000), func(b *testing.B) {
				runtime.GC()
				before := liveBytes()
				tf := time.Now()
				im.fill(n, 4_000_000)
				fill := time.Since(tf)
				after := liveBytes()
				t0 := time.Now()
				runtime.GC() // what the pending entries cost each GC cycle
				gc := time.Since(t0)
				b.ReportAllocs()
				b.ResetTimer()
				i := n
				for b.Loop() {
					im.add(i)
					i++
				}
				b.StopTimer()
				b.ReportMetric(float64(after-before)/float64(n), "B/pending")
				b.ReportMetric(float64(gc.Microseconds()), "gc-µs")
				b.ReportMetric(float64(fill.Nanoseconds())/float64(n), "fill-ns/entry")
				im.clean()
			})
		}
	}
}

// BenchmarkSustained: the steady state of a scheduler holding n pending
// entries. Each op cancels the oldest entry and adds a new one far ahead in
// its place, so n stay pending. BenchmarkAdd's 200k timed Adds end before
// the garbage they make is collected; a run of several times n ops here
// pays for the collections its own allocations cause, so ns/op is
// sustainable throughput. cpu-ns/op is the process's CPU time per op
// (user+sys, all threads, so the GC's background workers on the other core
// count too); gcs is the number of GC cycles that ended during the timed
// ops. 60M ops take about 15 s for afterfunc, 7 s for heap, 1.5 s for
// wheel (about 2.5 min for the whole benchmark):
//
//	go test -run XXX -bench BenchmarkSustained -benchtime 60000000x -timeout 30m ./wheel/
func BenchmarkSustained(b *testing.B) {
	for _, n := range benchSizes(b) {
		for _, mk := range []func() *impl{wheelImpl, afterFuncImpl, heapImpl} {
			im := mk()
			b.Run(fmt.Sprintf("impl=%s/pending=%dM", im.name, n/1_000_000), func(b *testing.B) {
				im.fill(n, 0)
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				gc0 := ms.NumGC
				c0 := cpuTime(b)
				b.ReportAllocs()
				b.ResetTimer()
				i := n
				for b.Loop() {
					im.replace(i%n, i) // slot i%n holds the oldest entry
					i++
				}
				b.StopTimer()
				cpu := cpuTime(b) - c0
				runtime.ReadMemStats(&ms)
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
				b.ReportMetric(float64(ms.NumGC-gc0), "gcs")
				if b.N < 2*n {
					b.Logf("%d ops, fewer than 2x the %d pending: the run can end before the collections its allocations cause; use -benchtime %dx or more", b.N, n, 6*n)
				}
				im.clean()
			})
		}
	}
}

// BenchmarkCancel: cancelling pre-filled entries in random order.
func BenchmarkCancel(b *testing.B) {
	for _, n := range benchSizes(b) {
		for _, mk := range []func() *impl{wheelImpl, afterFuncImpl, heapImpl} {
			im := mk()
			b.Run(fmt.Sprintf("impl=%s/pending=%dM", im.name, n/1_000_000), func(b *testing.B) {
				im.fill(n, 0)
				perm := rand.Perm(n)
				b.ReportAllocs()
				b.ResetTimer()
				i := 0
				for b.Loop() {
					im.cancel(perm[i%n])
					i++
				}
				b.StopTimer()
				im.clean()
			})
		}
	}
}

// BenchmarkAddExpire: with n entries pending far ahead, add entries due
// within the next 64 ms and expire them tick by tick. ns/op is per entry
// (add + expire); expire-ns/entry is the expiry part alone.
func BenchmarkAddExpire(b *testing.B) {
	const chunk = 4096
	for _, n := range benchSizes(b) {
		for _, mk := range []func() *impl{wheelImpl, heapImpl} {
			im := mk()
			b.Run(fmt.Sprintf("impl=%s/pending=%dM", im.name, n/1_000_000), func(b *testing.B) {
				im.fill(n, chunk)
				b.ReportAllocs()
				b.ResetTimer()
				var expireTime time.Duration
				now, i, fired := int64(0), 0, 0
				for b.Loop() {
					im.soon(i, int64(i%64)*int64(time.Millisecond)+1)
					i++
					if i%chunk == 0 {
						t0 := time.Now()
						for range 64 { // 64 Polls, one tick each
							now += int64(time.Millisecond)
							fired += im.expire(now)
						}
						expireTime += time.Since(t0)
					}
				}
				b.StopTimer()
				now += int64(time.Minute)
				fired += im.expire(now)
				if fired != i {
					b.Fatalf("fired %d of %d", fired, i)
				}
				b.ReportMetric(float64(expireTime.Nanoseconds())/float64(max(i/chunk*chunk, 1)), "expire-ns/entry")
				im.clean()
			})
		}
	}
}

// BenchmarkAddExpireAfterFunc: the same for time.AfterFunc, on real time:
// chunks of timers due within 0-64 µs, waiting until each chunk has fired.
func BenchmarkAddExpireAfterFunc(b *testing.B) {
	const chunk = 4096
	for _, n := range benchSizes(b) {
		b.Run(fmt.Sprintf("impl=afterfunc/pending=%dM", n/1_000_000), func(b *testing.B) {
			im := afterFuncImpl()
			im.fill(n, 0)
			var fired atomic.Int64
			onFire := func() { fired.Add(1) }
			b.ReportAllocs()
			b.ResetTimer()
			i := int64(0)
			for b.Loop() {
				time.AfterFunc(time.Duration(i%64)*time.Microsecond, onFire)
				i++
				if i%chunk == 0 {
					for fired.Load() < i {
						runtime.Gosched()
					}
				}
			}
			for fired.Load() < i {
				runtime.Gosched()
			}
			b.StopTimer()
			im.clean()
		})
	}
}

// BenchmarkGoroutinePerMessage: the channel design's worker, one goroutine
// sleeping per message (with a stop path so the benchmark can clean up).
// Add cost and memory only, at 1M pending.
func BenchmarkGoroutinePerMessage(b *testing.B) {
	const n = 1_000_000
	stop := make(chan struct{})
	var wg sync.WaitGroup
	spawn := func(d time.Duration) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-stop:
				t.Stop()
			}
		}()
	}
	before := liveBytes()
	for i := range n {
		spawn(farDue(i))
	}
	time.Sleep(100 * time.Millisecond) // let them all park
	after := liveBytes()
	b.ReportAllocs()
	b.ResetTimer()
	i := n
	for b.Loop() {
		spawn(farDue(i))
		i++
	}
	b.StopTimer()
	b.ReportMetric(float64(after-before)/float64(n), "B/pending")
	close(stop)
	wg.Wait()
}

// BenchmarkAddParallel: Add+Cancel pairs from all Ps on one wheel (one
// mutex) and on a Sharded wheel (default shards: 4 per P), against the same
// done from one goroutine, with 1M entries pending far ahead.
func BenchmarkAddParallel(b *testing.B) {
	type addCanceler interface {
		Add(due int64, v uint64) Handle
		Cancel(h Handle) bool
	}
	for _, sharded := range []bool{false, true} {
		for _, par := range []bool{false, true} {
			impl := "wheel"
			if sharded {
				impl = "sharded"
			}
			b.Run(fmt.Sprintf("impl=%s/parallel=%v", impl, par), func(b *testing.B) {
				var w addCanceler = New[uint64](Options{Clock: &fakeClock{}})
				if sharded {
					sw := NewSharded[uint64](Options{Clock: &fakeClock{}}, 0)
					for i := range 1_000_000 { // spread the pre-fill over the shards
						sw.addOn(uint32(i)&sw.mask, int64(farDue(i)), uint64(i))
					}
					w = sw
				} else {
					for i := range 1_000_000 {
						w.Add(int64(farDue(i)), uint64(i))
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				if !par {
					i := 0
					for b.Loop() {
						w.Cancel(w.Add(int64(farDue(i)), 1))
						i++
					}
					return
				}
				b.RunParallel(func(pb *testing.PB) {
					i := 0
					for pb.Next() {
						w.Cancel(w.Add(int64(farDue(i)), 1))
						i++
					}
				})
			})
		}
	}
}

// BenchmarkAddBatch: AddBatch of 100 entries at one due time (what deferd
// does per /mpub request) with n entries already pending far ahead, growing
// the slab or reusing 256Ki free entries as in BenchmarkAdd (so b.N up to
// 256Ki reuses only). One op is one entry.
func BenchmarkAddBatch(b *testing.B) {
	const batch = 100
	for _, n := range benchSizes(b) {
		for _, reuse := range []bool{false, true} {
			name := "wheel"
			if reuse {
				name = "wheel-reuse"
			}
			b.Run(fmt.Sprintf("impl=%s/pending=%dM", name, n/1_000_000), func(b *testing.B) {
				var c fakeClock
				w := New[uint64](Options{Clock: &c})
				vals := make([]uint64, batch)
				hs := make([]Handle, batch)
				for i := 0; i < n; i += batch {
					w.AddBatch(int64(farDue(i)), vals, hs)
				}
				if reuse {
					spare := make([]Handle, 0, 256<<10)
					for i := 0; i < 256<<10; i += batch {
						w.AddBatch(int64(farDue(i)), vals, hs)
						spare = append(spare, hs...)
					}
					for _, h := range spare {
						w.Cancel(h)
					}
				}
				b.ReportAllocs()
				b.ResetTimer()
				i := n
				for k := 0; k < b.N; k += batch {
					w.AddBatch(int64(farDue(i)), vals[:min(batch, b.N-k)], hs)
					i++
				}
			})
		}
	}
}

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
