// Package benchmarks holds deferd's comparison suite: the channel design, the
// Redis ZSET design, nsqd's own deferred publish, and deferd, side by side.
package benchmarks

import (
	_ "github.com/redis/go-redis/v9" // the ZSET baseline's client
	_ "gonum.org/v1/plot"            // the comparison chart
)
