// Package pool runs deferd's publish tasks on a bounded ants goroutine pool.
package pool
