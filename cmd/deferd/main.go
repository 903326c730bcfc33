// Command deferd is a delayed-message scheduler in front of nsqd.
//
// With no flags it listens on 127.0.0.1:4180, keeps its journal under
// ./deferd-data and starts an embedded nsqd on 127.0.0.1:4150 (TCP) and
// 127.0.0.1:4151 (HTTP). With --nsqd-tcp-address it publishes to those nsqd
// instead and starts none. See README.md.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/engine"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/journal"
)

// Version is deferd's version, reported by --version and /info.
const Version = "0.1.0"

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// config is deferd's command line.
type config struct {
	httpAddress  string
	dataPath     string
	nsqdTCPAddrs stringList

	embeddedTCP     string
	embeddedHTTP    string
	embeddedMemQ    int64
	embeddedLogLvl  string
	maxMsgSize      int64
	maxBodySize     int64
	maxDefer        time.Duration
	tick            time.Duration
	poolSize        int
	taskSize        int
	batchSize       int
	connsPerNSQD    int
	maxPending      int64
	maxPendingBytes int64
	retryBackoff    time.Duration
	parkBackoff     time.Duration
	fsync           string
	fsyncInterval   time.Duration
	segmentSize     int64
	compactEvery    time.Duration
	directPublish   bool
	shutdownGrace   time.Duration
	version         bool
}

func newFlagSet(c *config) *flag.FlagSet {
	fs := flag.NewFlagSet("deferd", flag.ContinueOnError)
	def := engine.NewOptions("", nil)
	fs.StringVar(&c.httpAddress, "http-address", "127.0.0.1:4180", "<addr>:<port> to listen on for HTTP clients (binding beyond loopback is your explicit choice)")
	fs.StringVar(&c.dataPath, "data-path", "deferd-data", "directory for the journal (and the embedded nsqd's data)")
	fs.Var(&c.nsqdTCPAddrs, "nsqd-tcp-address", "nsqd TCP address to publish to (may be given multiple times); when given, no embedded nsqd is started")
	fs.StringVar(&c.embeddedTCP, "embedded-nsqd-tcp-address", "127.0.0.1:4150", "TCP address of the embedded nsqd")
	fs.StringVar(&c.embeddedHTTP, "embedded-nsqd-http-address", "127.0.0.1:4151", "HTTP address of the embedded nsqd")
	fs.Int64Var(&c.embeddedMemQ, "embedded-nsqd-mem-queue-size", nsqdnode.DefaultMemQueueSize, "the embedded nsqd's --mem-queue-size (messages kept in memory per topic and channel; 0: all on its disk queue, none lost with the process)")
	fs.StringVar(&c.embeddedLogLvl, "embedded-nsqd-log-level", "warn", "the embedded nsqd's log level (debug, info, warn, error, fatal)")
	fs.Int64Var(&c.maxMsgSize, "max-msg-size", 1<<20, "maximum size of a single message in bytes (as nsqd's)")
	fs.Int64Var(&c.maxBodySize, "max-body-size", 5<<20, "maximum size of a single request body in bytes (as nsqd's)")
	fs.DurationVar(&c.maxDefer, "max-defer", 365*24*time.Hour, "maximum delay of a message (defer= or at=)")
	fs.DurationVar(&c.tick, "tick", def.Tick, "timing wheel resolution: messages go out at most about one tick after their due time")
	fs.IntVar(&c.poolSize, "pool-size", def.PoolSize, "ants workers publishing due messages")
	fs.IntVar(&c.taskSize, "task-size", def.TaskSize, "largest number of due messages one publish task takes")
	fs.IntVar(&c.batchSize, "batch-size", def.Egress.MaxBatchMsgs, "messages per MPUB to nsqd")
	fs.IntVar(&c.connsPerNSQD, "conns-per-nsqd", def.Egress.ConnsPerAddr, "TCP connections (go-nsq producers) per nsqd")
	fs.Int64Var(&c.maxPending, "max-pending", def.MaxPending, "most messages held; past it publishes get 503 OVER_CAPACITY")
	fs.Int64Var(&c.maxPendingBytes, "max-pending-bytes", def.MaxPendingBytes, "most journal bytes of pending messages; past it publishes get 503 OVER_CAPACITY")
	fs.DurationVar(&c.retryBackoff, "retry-backoff", def.RetryBackoff, "wait before a failed publish is tried again (messages are never dropped)")
	fs.DurationVar(&c.parkBackoff, "park-backoff", def.ParkBackoff, "wait before a message nsqd refused, or whose journal record failed to read, is tried again")
	fs.StringVar(&c.fsync, "fsync", def.Journal.Fsync.String(), "when the journal reaches the disk: always (before each reply), interval (every --fsync-interval), never (OS decides); every reply waits for the write to the OS")
	fs.DurationVar(&c.fsyncInterval, "fsync-interval", def.Journal.FsyncInterval, "fsync period with --fsync=interval")
	fs.Int64Var(&c.segmentSize, "segment-size", def.Journal.SegmentBytes, "journal segment size in bytes")
	fs.DurationVar(&c.compactEvery, "compact-interval", def.CompactEvery, "how often to look for journal segments to compact (0 disables)")
	fs.BoolVar(&c.directPublish, "direct-publish", def.DirectPublish, "send messages already due (no delay, no id) to nsqd before replying, skipping the journal; the 200 then means nsqd acknowledged them. What nsqd does not take at once is journaled as usual")
	fs.DurationVar(&c.shutdownGrace, "shutdown-grace", 10*time.Second, "on SIGTERM, how long in-flight requests, then running publishes, may take to finish")
	fs.BoolVar(&c.version, "version", false, "print version and exit")
	return fs
}

func main() {
	var c config
	fs := newFlagSet(&c)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if c.version {
		fmt.Println("deferd", Version)
		return
	}
	logger := log.New(os.Stderr, "[deferd] ", log.Ldate|log.Ltime|log.Lmicroseconds)
	if err := run(c, logger, signalChan()); err != nil {
		logger.Printf("FATAL: %v", err)
		os.Exit(1)
	}
}

// validate refuses flag values deferd would otherwise replace or ignore
// without a word.
func (c *config) validate() error {
	if c.maxMsgSize <= 0 || c.maxBodySize <= 0 {
		return fmt.Errorf("--max-msg-size and --max-body-size must be > 0")
	}
	// An MPUB to nsqd carries the message with 8 bytes of framing, and
	// deferd keeps 4 KiB of its --max-body-size as headroom.
	if c.maxBodySize-mpubHeadroom < c.maxMsgSize+8 {
		return fmt.Errorf("--max-body-size (%d) must be at least --max-msg-size + %d (%d): a message of the largest size must fit in an MPUB to nsqd",
			c.maxBodySize, mpubHeadroom+8, c.maxMsgSize+mpubHeadroom+8)
	}
	if c.shutdownGrace <= 0 {
		// With no grace the journal could close under a request being
		// written, which would then be half kept.
		return fmt.Errorf("--shutdown-grace must be > 0 (%v)", c.shutdownGrace)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"tick", c.tick}, {"retry-backoff", c.retryBackoff}, {"park-backoff", c.parkBackoff},
		{"fsync-interval", c.fsyncInterval}, {"compact-interval", c.compactEvery},
		{"max-defer", c.maxDefer},
	} {
		if d.v < 0 {
			return fmt.Errorf("--%s must not be negative (%v)", d.name, d.v)
		}
		// 0 is "disabled" only for --compact-interval; elsewhere the
		// engine, journal or ingest would replace it by its default.
		if d.v == 0 && d.name != "compact-interval" {
			return fmt.Errorf("--%s must be > 0 (0 would silently mean the default)", d.name)
		}
	}
	for _, n := range []struct {
		name string
		v    int64
	}{
		{"embedded-nsqd-mem-queue-size", c.embeddedMemQ}, {"pool-size", int64(c.poolSize)},
		{"task-size", int64(c.taskSize)}, {"batch-size", int64(c.batchSize)},
		{"conns-per-nsqd", int64(c.connsPerNSQD)}, {"max-pending", c.maxPending},
		{"max-pending-bytes", c.maxPendingBytes}, {"segment-size", c.segmentSize},
	} {
		if n.v < 0 {
			return fmt.Errorf("--%s must not be negative (%d)", n.name, n.v)
		}
		switch n.name {
		case "batch-size", "conns-per-nsqd", "segment-size":
			// egress and the journal replace 0 by their defaults.
			if n.v == 0 {
				return fmt.Errorf("--%s must be > 0 (0 would silently mean the default)", n.name)
			}
		}
	}
	return nil
}

// mpubHeadroom is how much of --max-body-size deferd leaves unused in its
// MPUBs to nsqd.
const mpubHeadroom = 4096

// memQueue maps --embedded-nsqd-mem-queue-size to nsqdnode's Config, where
// 0 means "the default": the flag's 0 is nsqd's 0 (nothing in memory).
func memQueue(n int64) int64 {
	if n == 0 {
		return nsqdnode.MemQueueNone
	}
	return n
}

func signalChan() <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	return ch
}

// daemon is the ingest backend: the engine plus the process's own facts
// for /info.
type daemon struct {
	*engine.Engine
	info map[string]any
}

func (d *daemon) Info() any {
	m := map[string]any{}
	for k, v := range d.info {
		m[k] = v
	}
	m["engine"] = d.Engine.Info()
	return m
}

// run starts deferd and blocks until a signal arrives on sig or the HTTP
// server fails; then it stops in order: stop taking requests, stop
// publishing (pending messages stay in the journal), close the journal,
// stop the embedded nsqd (which persists what it holds).
func run(c config, logger *log.Logger, sig <-chan os.Signal) error {
	fsyncMode, err := journal.ParseFsyncMode(c.fsync)
	if err != nil {
		return fmt.Errorf("--fsync: %w", err)
	}
	if err := c.validate(); err != nil {
		return err
	}
	if err := os.MkdirAll(c.dataPath, 0o755); err != nil {
		return fmt.Errorf("--data-path: %w", err)
	}

	var node *nsqdnode.Node
	addrs := []string(c.nsqdTCPAddrs)
	if len(addrs) == 0 {
		node, err = nsqdnode.Start(nsqdnode.Config{
			TCPAddress:   c.embeddedTCP,
			HTTPAddress:  c.embeddedHTTP,
			DataPath:     filepath.Join(c.dataPath, "nsqd"),
			MemQueueSize: memQueue(c.embeddedMemQ),
			MaxMsgSize:   c.maxMsgSize,
			MaxBodySize:  c.maxBodySize,
			Logger:       os.Stderr,
			LogLevel:     c.embeddedLogLvl,
		})
		if err != nil {
			return fmt.Errorf("embedded nsqd: %w", err)
		}
		defer node.Exit()
		addrs = []string{node.TCPAddr}
		logger.Printf("embedded nsqd: TCP %s, HTTP %s, data %s", node.TCPAddr, node.HTTPAddr, filepath.Join(c.dataPath, "nsqd"))
	}

	opts := engine.NewOptions(filepath.Join(c.dataPath, "journal"), addrs)
	opts.Logf = logger.Printf
	opts.Tick = c.tick
	opts.PoolSize = c.poolSize
	opts.TaskSize = c.taskSize
	opts.MaxPending = c.maxPending
	opts.MaxPendingBytes = c.maxPendingBytes
	opts.RetryBackoff = c.retryBackoff
	opts.ParkBackoff = c.parkBackoff
	opts.CompactEvery = c.compactEvery
	opts.DirectPublish = c.directPublish
	opts.Journal.Fsync = fsyncMode
	opts.Journal.FsyncInterval = c.fsyncInterval
	opts.Journal.SegmentBytes = c.segmentSize
	opts.Egress.MaxBatchMsgs = c.batchSize
	opts.Egress.ConnsPerAddr = c.connsPerNSQD
	opts.Egress.MaxMsgSize = int(c.maxMsgSize)
	opts.Egress.MaxBatchBytes = int(c.maxBodySize) - mpubHeadroom
	e, err := engine.New(opts)
	if err != nil {
		return err
	}
	d := &daemon{Engine: e, info: info(c, addrs, node)}
	srv, err := ingest.NewServer(ingest.Options{
		Addr:        c.httpAddress,
		MaxMsgSize:  c.maxMsgSize,
		MaxBodySize: c.maxBodySize,
		MaxDefer:    c.maxDefer,
		Logf:        logger.Printf,
	}, d)
	if err != nil {
		e.Stop(c.shutdownGrace)
		return err
	}
	d.info["http_address"] = srv.Addr()
	logger.Printf("deferd %s: HTTP %s, journal %s (fsync %s), publishing to %s",
		Version, srv.Addr(), opts.Journal.Dir, fsyncMode, strings.Join(addrs, ","))

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve() }()
	select {
	case s := <-sig:
		logger.Printf("%v: shutting down (a second signal exits at once)", s)
	case err = <-serveErr:
		logger.Printf("HTTP server: %v", err)
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case s := <-sig:
			// What was acknowledged is in the journal (or in nsqd);
			// only an embedded nsqd's in-memory messages are lost.
			logger.Printf("%v again: exiting now", s)
			os.Exit(1)
		case <-stopped:
		}
	}()
	// Requests get up to the grace (a client stalled mid-request would
	// hold an unbounded wait forever), then publishing tasks get as long.
	if serr := srv.ShutdownWithin(c.shutdownGrace); serr != nil {
		logger.Printf("HTTP shutdown: %v (requests still in flight get 503 EXITING)", serr)
	}
	pending := e.Pending()
	if serr := e.Stop(c.shutdownGrace); serr != nil {
		logger.Printf("journal close: %v", serr)
		if err == nil {
			err = serr
		}
	}
	if node != nil {
		node.WaitProducersGone(2 * time.Second) // our egress connections
	}
	logger.Printf("stopped; %d messages pending in the journal", pending)
	return err
}

func info(c config, addrs []string, node *nsqdnode.Node) map[string]any {
	m := map[string]any{
		"version":            Version,
		"http_address":       c.httpAddress,
		"data_path":          c.dataPath,
		"nsqd_tcp_addresses": addrs,
		"max_msg_size":       c.maxMsgSize,
		"max_body_size":      c.maxBodySize,
		"max_defer":          c.maxDefer.String(),
	}
	if node != nil {
		m["embedded_nsqd"] = map[string]any{"tcp_address": node.TCPAddr, "http_address": node.HTTPAddr, "mem_queue_size": c.embeddedMemQ}
	}
	return m
}
