package wheel_test

import (
	"fmt"
	"sync"
	"time"

	"github.com/deferd/deferd/wheel"
)

// ExampleWheel: producers Add, the driver Run sends due batches on a
// channel, a consumer handles them and releases each batch.
func ExampleWheel() {
	w := wheel.New[string](wheel.Options{}) // 1 ms tick, real clock
	out := make(chan *wheel.Batch[string])
	stop := make(chan struct{})
	done := make(chan *wheel.Batch[string])
	go func() { done <- w.Run(stop, out) }()

	w.AddAfter(20*time.Millisecond, "second")
	w.AddAfter(10*time.Millisecond, "first")
	h := w.AddAfter(15*time.Millisecond, "cancelled")
	fmt.Println("cancelled:", w.Cancel(h))

	for got := 0; got < 2; {
		b := <-out
		for _, it := range b.Items {
			fmt.Println(it.Value, "not early:", w.Now() >= it.Due)
			got++
		}
		b.Release() // the batch is recycled; don't touch it afterwards
	}
	close(stop)
	if b := <-done; b != nil {
		b.Release() // Run hands back a batch it could not deliver
	}
	fmt.Println("pending:", w.Len())
	// Output:
	// cancelled: true
	// first not early: true
	// second not early: true
	// pending: 0
}

// ExampleSharded: many goroutines add to a sharded wheel; one driver
// delivers every shard's due entries.
func ExampleSharded() {
	w := wheel.NewSharded[int](wheel.Options{}, 0) // 4 shards per P
	out := make(chan *wheel.Batch[int])
	stop := make(chan struct{})
	done := make(chan *wheel.Batch[int])
	go func() { done <- w.Run(stop, out) }()

	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				w.AddAfter(time.Duration(i%10)*time.Millisecond, g*100+i)
			}
		}()
	}
	wg.Wait()
	sum, n := 0, 0
	for n < 800 {
		b := <-out
		for _, it := range b.Items {
			sum += it.Value
			n++
		}
		b.Release()
	}
	close(stop)
	if b := <-done; b != nil {
		b.Release()
	}
	fmt.Println("delivered:", n, "sum:", sum, "pending:", w.Len())
	// Output:
	// delivered: 800 sum: 319600 pending: 0
}

// ExampleWheel_AddAt schedules entries at wall-clock times. Add takes the
// wheel's own clock (Now), not Unix time: AddAt converts a time.Time, and
// is never early.
func ExampleWheel_AddAt() {
	w := wheel.New[string](wheel.Options{})
	start := time.Now()
	w.AddAt(start.Add(10*time.Millisecond), "at +10ms")
	w.AddAt(start.Add(-time.Hour), "an hour ago: due at once")
	for got := 0; got < 2; time.Sleep(time.Millisecond) {
		w.Poll(w.Now(), func(b *wheel.Batch[string]) {
			for _, it := range b.Items {
				fmt.Println(it.Value)
				got++
			}
			b.Release()
		})
	}
	fmt.Println("not early:", time.Since(start) >= 10*time.Millisecond)
	// Output:
	// an hour ago: due at once
	// at +10ms
	// not early: true
}
