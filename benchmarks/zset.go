package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/redis/go-redis/v9"
)

// ZSetOptions configures the Redis sorted-set design. Zero values take the
// defaults noted per field.
type ZSetOptions struct {
	// Shards is the number of sorted sets messages are hashed into by id
	// (default 1000; the original ran thousands).
	Shards int
	// Batch is m, the most members one poll takes from one shard (default
	// 10 for polling, 500 for Lua).
	Batch int
	// Interval is how long a poller waits between passes over its shards
	// (default 200 ms). The Lua variant skips the wait while a shard keeps
	// returning full batches.
	Interval time.Duration
	// Pollers is the number of poller goroutines; shard i belongs to poller
	// i % Pollers (default 20).
	Pollers int
	// Lua pops due members with one atomic script per batch instead of
	// ZRANGEBYSCORE followed by ZREM, and publishes each batch with MPUB.
	Lua bool
	// AppendOnly runs redis-server with the AOF on (appendfsync everysec);
	// otherwise persistence is off. The crash scenario turns it on.
	AppendOnly bool
}

// popScript removes and returns up to ARGV[2] members of KEYS[1] with score
// <= ARGV[1], atomically.
var popScript = redis.NewScript(`
local r = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #r > 0 then redis.call('ZREM', KEYS[1], unpack(r)) end
return r`)

// ZSet is the Redis sorted-set design: each message is ZADDed to the shard
// its id hashes to, with score = due unix ms and member = 8-byte id + body.
// Pollers run ZRANGEBYSCORE key -inf now LIMIT 0 m on each shard every
// interval, ZREM what they took and publish it; or, with Lua, pop due members
// atomically in batches. The design starts and owns its own redis-server.
type ZSet struct {
	opt ZSetOptions

	env   Env
	srv   *RedisServer
	rdb   *redis.Client
	prod  *nsq.Producer
	stop  chan struct{}
	wg    sync.WaitGroup
	names []string
}

// NewZSet returns a ZSET design; see ZSetOptions for defaults.
func NewZSet(opt ZSetOptions) *ZSet {
	if opt.Shards <= 0 {
		opt.Shards = 1000
	}
	if opt.Batch <= 0 {
		opt.Batch = 10
		if opt.Lua {
			opt.Batch = 500
		}
	}
	if opt.Interval <= 0 {
		opt.Interval = 200 * time.Millisecond
	}
	if opt.Pollers <= 0 {
		opt.Pollers = 20
	}
	if opt.Pollers > opt.Shards {
		opt.Pollers = opt.Shards
	}
	return &ZSet{opt: opt}
}

func (z *ZSet) Name() string {
	if z.opt.Lua {
		return "zset-lua"
	}
	return "zset-poll"
}

func (z *ZSet) String() string {
	return fmt.Sprintf("%s(shards=%d,m=%d,interval=%s,pollers=%d,aof=%v)",
		z.Name(), z.opt.Shards, z.opt.Batch, z.opt.Interval, z.opt.Pollers, z.opt.AppendOnly)
}

func (z *ZSet) Start(env Env) error {
	srv, err := StartRedis(env.TempDir, z.opt.AppendOnly)
	if err != nil {
		if errors.Is(err, ErrNoRedis) {
			return &ErrNotRunnable{Reason: err.Error()}
		}
		return err
	}
	p, err := newProducer(env.NSQDTCPAddr)
	if err != nil {
		srv.Kill()
		return err
	}
	z.env, z.srv, z.prod = env, srv, p
	z.rdb = redis.NewClient(&redis.Options{
		Addr:         srv.Addr,
		PoolSize:     z.opt.Pollers + 16,
		MaxRetries:   -1, // a failed command is reported, not silently retried
		DialTimeout:  time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
	})
	z.names = make([]string, z.opt.Shards)
	for i := range z.names {
		z.names[i] = "dq:" + strconv.Itoa(i)
	}
	z.stop = make(chan struct{})
	for i := range z.opt.Pollers {
		z.wg.Add(1)
		go z.poller(i)
	}
	return nil
}

// shard returns the sorted set a message id hashes to.
func (z *ZSet) shard(seq uint64) string {
	h := fnv.New32a()
	var b [8]byte
	for i := range b {
		b[i] = byte(seq >> (8 * i))
	}
	h.Write(b[:])
	return z.names[h.Sum32()%uint32(len(z.names))]
}

// member is the 8-byte id followed by the body.
func member(m Msg) string {
	b := make([]byte, 8+len(m.Body))
	for i := range 8 {
		b[i] = byte(m.Seq >> (56 - 8*i))
	}
	copy(b[8:], m.Body)
	return string(b)
}

// Submit ZADDs the messages in one pipeline.
func (z *ZSet) Submit(ctx context.Context, msgs []Msg) (int, error) {
	pipe := z.rdb.Pipeline()
	for _, m := range msgs {
		pipe.ZAdd(ctx, z.shard(m.Seq), redis.Z{Score: float64(m.Due / 1e6), Member: member(m)})
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil {
		// Count the prefix that succeeded.
		for i, c := range cmds {
			if c.Err() != nil {
				return i, err
			}
		}
		return 0, err
	}
	return len(msgs), nil
}

func (z *ZSet) poller(idx int) {
	defer z.wg.Done()
	ctx := context.Background()
	t := time.NewTicker(z.opt.Interval)
	defer t.Stop()
	for {
		for s := idx; s < len(z.names); s += z.opt.Pollers {
			select {
			case <-z.stop:
				return
			default:
			}
			if z.opt.Lua {
				z.popLua(ctx, z.names[s])
			} else {
				z.pollOnce(ctx, z.names[s])
			}
		}
		select {
		case <-z.stop:
			return
		case <-t.C:
		}
	}
}

// pollOnce is the original loop body: ZRANGEBYSCORE, ZREM, publish each.
func (z *ZSet) pollOnce(ctx context.Context, key string) {
	now := strconv.FormatInt(time.Now().UnixMilli(), 10)
	got, err := z.rdb.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "-inf", Max: now, Count: int64(z.opt.Batch)}).Result()
	if err != nil || len(got) == 0 {
		return
	}
	ms := make([]any, len(got))
	for i, g := range got {
		ms[i] = g
	}
	if err := z.rdb.ZRem(ctx, key, ms...).Err(); err != nil {
		return // not removed: the next pass takes them again
	}
	for _, g := range got {
		if err := z.prod.Publish(z.env.Topic, []byte(g[8:])); err != nil {
			z.env.logf("zset: publish: %v", err) // removed, not published: lost
		}
	}
}

// popLua pops due members of key in batches until a batch comes back short.
func (z *ZSet) popLua(ctx context.Context, key string) {
	for {
		now := time.Now().UnixMilli()
		got, err := popScript.Run(ctx, z.rdb, []string{key}, now, z.opt.Batch).StringSlice()
		if err != nil || len(got) == 0 {
			return
		}
		bodies := make([][]byte, len(got))
		for i, g := range got {
			bodies[i] = []byte(g[8:])
		}
		if err := z.prod.MultiPublish(z.env.Topic, bodies); err != nil {
			z.env.logf("zset-lua: publish: %v", err)
		}
		if len(got) < z.opt.Batch {
			return
		}
		select {
		case <-z.stop:
			return
		default:
		}
	}
}

func (z *ZSet) Stop() error {
	close(z.stop)
	z.wg.Wait()
	z.prod.Stop()
	z.rdb.Close()
	z.srv.Kill()
	return nil
}

// Crash SIGKILLs redis-server and restarts it on the same directory; with
// AppendOnly it replays the AOF (everysec: up to about a second of writes
// may be lost), without it everything pending is gone.
func (z *ZSet) Crash() error {
	z.srv.Kill()
	return z.srv.Restart()
}

func (z *ZSet) CrashNote() string {
	if z.opt.AppendOnly {
		return "redis-server SIGKILLed and restarted with --appendonly yes --appendfsync everysec"
	}
	return "redis-server SIGKILLed and restarted with persistence off"
}

func (z *ZSet) External() []int { return []int{z.srv.PID()} }

// Memory is redis's INFO used_memory: the bytes its allocator has handed
// out, not its RSS.
func (z *ZSet) Memory() (int64, string) {
	const note = "redis INFO used_memory (allocated, not RSS)"
	s, err := z.rdb.Info(context.Background(), "memory").Result()
	if err != nil {
		return 0, note
	}
	return parseInfoInt(s, "used_memory"), note
}

func parseInfoInt(info, key string) int64 {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(line, key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

var _ Crasher = (*ZSet)(nil)
