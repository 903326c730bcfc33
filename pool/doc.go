// Package pool runs deferd's publish tasks on a bounded ants goroutine pool.
//
// It owns the workers and the count of tasks running and waiting, and a
// Release that waits for them within a timeout. It imports ants, nothing
// of deferd's; what a task does is the caller's.
package pool
