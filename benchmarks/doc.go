// Package benchmarks is deferd's comparison suite: the designs users run
// today (a buffered Go channel read by sleeping workers, Redis sorted sets
// polled or popped by a Lua script, nsqd's own deferred publish), deferd's
// timing wheel alone in-process, and deferd itself as a subprocess, driven
// with the same offered load against a real nsqd and a real redis-server on
// 127.0.0.1.
//
// A Design takes messages (Submit) and publishes each to nsqd when it is due.
// The harness (Run*) offers the load, consumes from nsqd with go-nsq, and
// measures lateness, loss, duplicates, CPU and memory. cmd/compare runs every
// design through every scenario and writes a markdown table, a PNG chart and
// the data behind them (comparison.json); BENCHMARKS.md reads the results.
package benchmarks
