package wheel

// Test hooks: entry points into the package's internals that only tests
// and benchmarks use.

// addOn is Add on shard s: tests and benchmarks spread entries over the
// shards, which one goroutine's Adds would not (Sharded picks the shard
// from the goroutine's stack address).
func (w *Sharded[T]) addOn(s uint32, due int64, v T) Handle {
	return w.outer(w.shards[s].Add(due, v), s)
}
