package benchmarks

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/redis/go-redis/v9"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// Micro-benchmarks of each design's core operation, without the harness.

var sinkMsg Msg

func BenchmarkNewMsg500(b *testing.B) {
	b.ReportAllocs()
	now := time.Now()
	for i := range b.N {
		sinkMsg = NewMsg(uint64(i), now, 500)
	}
}

// BenchmarkChannelHandoff is the channel design's core: one message through
// a buffered channel of 24,000 to a worker (no sleep, no publish).
func BenchmarkChannelHandoff(b *testing.B) {
	b.ReportAllocs()
	ch := make(chan Msg, 24000)
	done := make(chan struct{})
	go func() {
		for m := range ch {
			sinkMsg = m
		}
		close(done)
	}()
	m := NewMsg(1, time.Now(), 500)
	b.ResetTimer()
	for range b.N {
		ch <- m
	}
	close(ch)
	<-done
}

func startRedisB(b *testing.B) *redis.Client {
	b.Helper()
	srv, err := StartRedis(b.TempDir(), false)
	if err != nil {
		skipOrFail(b, "%v", err)
	}
	b.Cleanup(srv.Kill)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkZSetAddPipelined100 is the ZSET design's ingest: ZADD of 500 B
// members, pipelined 100 at a time, to a real redis-server.
func BenchmarkZSetAddPipelined100(b *testing.B) {
	c := startRedisB(b)
	ctx := context.Background()
	z := NewZSet(ZSetOptions{Shards: 1000})
	z.names = make([]string, 1000)
	for i := range z.names {
		z.names[i] = "dq:" + strconv.Itoa(i)
	}
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		pipe := c.Pipeline()
		for j := i; j < min(b.N, i+100); j++ {
			m := NewMsg(uint64(j), now, 500)
			pipe.ZAdd(ctx, z.shard(m.Seq), redis.Z{Score: float64(m.Due / 1e6), Member: member(m)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// fillZSet adds n due members to one key.
func fillZSet(b *testing.B, c *redis.Client, key string, n int) {
	b.Helper()
	ctx := context.Background()
	past := time.Now().Add(-time.Second)
	for i := 0; i < n; i += 1000 {
		pipe := c.Pipeline()
		for j := i; j < min(n, i+1000); j++ {
			m := NewMsg(uint64(j), past, 500)
			pipe.ZAdd(ctx, key, redis.Z{Score: float64(m.Due / 1e6), Member: member(m)})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkZSetPollTake10 is the polling design's take: ZRANGEBYSCORE LIMIT
// 0 10 then ZREM of what came back; reported per message.
func BenchmarkZSetPollTake10(b *testing.B) {
	c := startRedisB(b)
	ctx := context.Background()
	fillZSet(b, c, "k", b.N)
	b.ResetTimer()
	for taken := 0; taken < b.N; {
		now := strconv.FormatInt(time.Now().UnixMilli(), 10)
		got, err := c.ZRangeByScore(ctx, "k", &redis.ZRangeBy{Min: "-inf", Max: now, Count: 10}).Result()
		if err != nil || len(got) == 0 {
			b.Fatalf("took %d of %d: %v", taken, b.N, err)
		}
		ms := make([]any, len(got))
		for i, g := range got {
			ms[i] = g
		}
		if err := c.ZRem(ctx, "k", ms...).Err(); err != nil {
			b.Fatal(err)
		}
		taken += len(got)
	}
}

// BenchmarkZSetLuaPop500 is the Lua design's take: one script call pops up
// to 500 due members atomically; reported per message.
func BenchmarkZSetLuaPop500(b *testing.B) {
	c := startRedisB(b)
	ctx := context.Background()
	fillZSet(b, c, "k", b.N)
	b.ResetTimer()
	for taken := 0; taken < b.N; {
		got, err := popScript.Run(ctx, c, []string{"k"}, time.Now().UnixMilli(), 500).StringSlice()
		if err != nil || len(got) == 0 {
			b.Fatalf("took %d of %d: %v", taken, b.N, err)
		}
		taken += len(got)
	}
}

// BenchmarkNSQDeferredPublish is nsqd's own deferred publish: DPUB of a
// 500 B message (1 h delay) to an in-process nsqd, pipelined 100 at a time.
func BenchmarkNSQDeferredPublish(b *testing.B) {
	n := nsqdnodetest.Start(b, nsqdnode.Config{})
	p, err := newProducer(n.TCPAddr)
	if err != nil {
		b.Fatal(err)
	}
	defer p.Stop()
	// A channel must exist for DPUB to land in a deferred queue.
	if err := p.Publish("bench", []byte("x")); err != nil {
		b.Fatal(err)
	}
	t, _ := n.NSQD.GetExistingTopic("bench")
	t.GetChannel("c")
	body := NewMsg(1, time.Now(), 500).Body
	done := make(chan *nsq.ProducerTransaction, 100)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i += 100 {
		k := min(b.N, i+100) - i
		for range k {
			if err := p.DeferredPublishAsync("bench", time.Hour, body, done); err != nil {
				b.Fatal(err)
			}
		}
		for range k {
			if tr := <-done; tr.Error != nil {
				b.Fatal(tr.Error)
			}
		}
	}
}
