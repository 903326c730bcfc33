package deferd

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/deferd/deferd/egress"
	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/journal"
)

// Options configures a Scheduler. NewOptions is the one place defaults
// live: start from it and change what you need. The zero Options is not
// valid (New names the first bad field), so an explicit 0 is never
// mistaken for "unset": where 0 means something (CompactInterval: off,
// EmbeddedNSQDMemQueueSize: nothing in memory) it means that.
//
// A field with a `flag` tag is also a command-line flag of cmd/deferd,
// which builds its flag set from NewOptions, so the daemon and embedders
// share every default.
type Options struct {
	// DataPath holds the journal (DataPath/journal) and the embedded
	// nsqd's data (DataPath/nsqd).
	DataPath string `flag:"data-path"`
	// Sink receives due messages. nil: egress to NSQDTCPAddresses and
	// the nsqds of LookupdHTTPAddresses (or to the embedded nsqd),
	// deferd's default sink.
	Sink Sink
	// NSQDTCPAddresses are the nsqd the default sink publishes to.
	NSQDTCPAddresses []string `flag:"nsqd-tcp-address"`
	// LookupdHTTPAddresses are nsqlookupd HTTP addresses (host:port, or
	// an http:// URL). The default sink asks each for its nsqds (GET
	// /nodes) at New and every LookupdPollInterval, and publishes to
	// every nsqd listed (at its broadcast address and TCP port) besides
	// NSQDTCPAddresses, which discovery never removes. An nsqd no longer
	// listed gets no new batches; those in flight to it finish, and what
	// it did not acknowledge is retried elsewhere. With no nsqd known,
	// publishes fail and are retried after RetryBackoff. deferd does not
	// register with nsqlookupd.
	LookupdHTTPAddresses []string `flag:"lookupd-http-address"`
	// LookupdPollInterval is the time between queries of
	// LookupdHTTPAddresses. Default 15s (go-nsq's).
	LookupdPollInterval time.Duration `flag:"lookupd-poll-interval"`
	// ClusterPeers lists the HTTP addresses (host:port) of every deferd
	// instance of a cluster, the same ordered list on each (an entry may
	// hold several, comma-separated). Empty: no cluster. Set, any instance
	// takes any request and hands a request naming an id to the id's
	// owner (cluster.go; the shard map is internal/cluster's doc).
	ClusterPeers []string `flag:"cluster-peers"`
	// ClusterSelf is this instance's entry in ClusterPeers, spelled the
	// same; "" means HTTPAddress.
	ClusterSelf string `flag:"cluster-self"`
	// ClusterForwardTimeout bounds one forwarded request (and one poll of
	// a peer's /stats): past it the client gets 503 OWNER_UNAVAILABLE.
	// ClusterForwardConns is the most connections to one peer at once
	// (keep-alive; a request finding none free waits within the timeout).
	// ClusterPollInterval is how often the peers' /stats are polled and
	// a hand-off pass runs (until one finds nothing to move). Defaults 5s,
	// 64 and 2s.
	ClusterForwardTimeout time.Duration `flag:"cluster-forward-timeout"`
	ClusterForwardConns   int           `flag:"cluster-forward-conns"`
	ClusterPollInterval   time.Duration `flag:"cluster-poll-interval"`
	// EmbeddedNSQD starts a real nsqd in this process (New starts it,
	// Close persists and stops it) and publishes to it. It needs Sink nil
	// and NSQDTCPAddresses and LookupdHTTPAddresses empty. Default false.
	EmbeddedNSQD             bool
	EmbeddedNSQDTCPAddress   string `flag:"embedded-nsqd-tcp-address"`
	EmbeddedNSQDHTTPAddress  string `flag:"embedded-nsqd-http-address"`
	EmbeddedNSQDMemQueueSize int64  `flag:"embedded-nsqd-mem-queue-size"` // 0: every message on its disk queue
	EmbeddedNSQDLogLevel     string `flag:"embedded-nsqd-log-level"`

	// HTTPAddress is where ListenHTTP binds the nsqd-compatible HTTP API.
	// New does not listen; the API is a part an embedder turns on.
	HTTPAddress string `flag:"http-address"`
	// TCPAddress is where ListenTCP binds nsqd's TCP protocol for
	// producers; "" in cmd/deferd: none.
	TCPAddress string `flag:"tcp-address"`
	// HTTPListener, if set, is the bound listener the first ListenHTTP
	// serves on instead of binding HTTPAddress, so a caller (cmd/deferd)
	// can bind before New replays the journal and find a port in use
	// first. ListenHTTP's Server owns it from then on. No flag.
	HTTPListener net.Listener
	// TCPListener is the same for ListenTCP: a bound listener the first
	// ListenTCP serves on instead of binding TCPAddress; its TCPServer
	// owns it from then on. No flag.
	TCPListener net.Listener
	// UI serves the status page at GET / of the HTTP API (charts of what
	// is pending, egress and the journal; look up, cancel, reschedule).
	// Its POSTs are the API's, under the API's cross-origin check
	// (ingest/doc.go). Default true; false: GET / is 404, as in nsqd.
	UI bool `flag:"ui"`
	// Limits of the HTTP API on clients (ingest.Options has the details):
	// the most open connections (beyond: 503 and close), the time for a
	// request's head and then for its body, a keep-alive connection's
	// idle time, and the body budget: the most bytes of request bodies
	// being received at once, past which a /pub or /mpub gets 503
	// BODY_BUDGET_EXCEEDED before its body is buffered.
	HTTPMaxConns         int           `flag:"http-max-conns"`
	HTTPHeaderTimeout    time.Duration `flag:"http-header-timeout"`
	HTTPBodyTimeout      time.Duration `flag:"http-body-timeout"`
	HTTPIdleTimeout      time.Duration `flag:"http-idle-timeout"`
	MaxInflightBodyBytes int64         `flag:"max-inflight-body-bytes"`
	// MaxMsgSize and MaxBodySize are nsqd's limits for one message and
	// one request (HTTP and Publish); MaxDefer is the longest delay.
	MaxMsgSize  int64         `flag:"max-msg-size"`
	MaxBodySize int64         `flag:"max-body-size"`
	MaxDefer    time.Duration `flag:"max-defer"`

	// Tick is the timing wheel's resolution: a message is published at
	// most about one tick after its due time.
	Tick time.Duration `flag:"tick"`
	// PoolSize is the number of ants workers publishing due buckets.
	PoolSize int `flag:"pool-size"`
	// TaskSize splits a large due bucket into tasks of at most this many
	// messages, so a burst is published on several connections at once.
	TaskSize int `flag:"task-size"`
	// BatchSize is the most messages per MPUB; ConnsPerNSQD the go-nsq
	// producers per nsqd (the default sink).
	BatchSize    int `flag:"batch-size"`
	ConnsPerNSQD int `flag:"conns-per-nsqd"`
	// PublishBackoff is the first wait between the default sink's tries
	// of one batch (it doubles, with jitter).
	PublishBackoff time.Duration
	// MaxPending and MaxPendingBytes bound what deferd holds; past them
	// Publish returns ErrOverCapacity. Bytes count journal record bytes
	// (the body + ~30 B). Default AutoCapacity (-1): New derives them
	// from the machine (Capacity): MaxPending from the memory available
	// (half of it, at CapacityRAMPerPending = 128 B per message, within
	// [1M, 1G]), MaxPendingBytes from the space free on DataPath's file
	// system plus what the journal already holds (half of it, within
	// [1 GiB, 1 PiB]); /info shows the values chosen. An explicit value
	// (> 0) is used as given.
	MaxPending      int64 `flag:"max-pending"`
	MaxPendingBytes int64 `flag:"max-pending-bytes"`
	// MaxTopics bounds the distinct topics deferd holds: those with
	// messages pending and, with the embedded nsqd, the topics that nsqd
	// holds (it keeps one until it is deleted there, at about
	// EmbeddedNSQDMemQueueSize x 8 B of heap each: 0.82 MB at the
	// default). A publish that would add one past it gets
	// ErrTooManyTopics (HTTP 503 TOO_MANY_TOPICS); a topic frees its slot
	// when nothing of it is pending (and, with the embedded nsqd, it is
	// deleted there). It is checked before a client id is looked up: a
	// publish to a new topic past it is refused even if its id is
	// pending. Default AutoCapacity (-1): New makes it DefaultMaxTopics
	// (100, about 82 MB of embedded nsqd topics) with EmbeddedNSQD, and
	// DefaultMaxTopicsExternal (10,000) without, where a topic costs
	// deferd only its per-topic counters.
	MaxTopics int `flag:"max-topics"`
	// RetryBackoff is how long a message waits after its sink did not take
	// it before it is tried again; ParkBackoff the wait after the sink
	// refused the message itself (ErrRejected) or its record failed to
	// read.
	RetryBackoff time.Duration `flag:"retry-backoff"`
	ParkBackoff  time.Duration `flag:"park-backoff"`

	// Fsync says when the journal reaches the disk: "always", "interval"
	// (every FsyncInterval) or "never" (the OS decides). Every Publish
	// waits for the write to the OS.
	Fsync         string        `flag:"fsync"`
	FsyncInterval time.Duration `flag:"fsync-interval"`
	// SegmentSize is the journal segment size in bytes.
	SegmentSize int64 `flag:"segment-size"`
	// CompactInterval is how often the journal is checked for a segment
	// worth compacting. 0 disables compaction.
	CompactInterval time.Duration `flag:"compact-interval"`
	// DirectPublish sends messages that are already due and carry no id
	// straight to the sink before Publish returns, instead of through the
	// journal and the wheel: success then means the sink took them.
	// Concurrent requests for a topic share batches (see directQ). What
	// the sink does not take at once is journaled and scheduled as usual.
	DirectPublish bool `flag:"direct-publish"`
	// IDRetention is how long a client id stays known after its message
	// was published: meanwhile a Publish with it returns nil and schedules
	// nothing, and Lookup reports the message published. It holds across
	// restarts and compaction (a small retention record per id in the
	// journal). 0: an id is forgotten once its message is published.
	IDRetention time.Duration `flag:"id-retention"`
	// ShutdownGrace bounds each step of Close run by cmd/deferd: requests
	// in flight, then running publishes.
	ShutdownGrace time.Duration `flag:"shutdown-grace"`

	// Logf logs; nil means log.Printf.
	Logf func(format string, args ...any)

	// clock, if set (by tests only: export_test.go), is the wall clock and
	// the wheel's, and New starts no wheel driver. nil: the real clocks.
	clock testClock
}

// NewOptions returns Options with every default set: an embedded-nsqd-free
// scheduler journaling under ./deferd-data, publishing to no nsqd yet (set
// Sink, NSQDTCPAddresses and/or LookupdHTTPAddresses, or EmbeddedNSQD). It
// allocates; safe to call from any goroutine.
func NewOptions() Options {
	return Options{
		DataPath:                 "deferd-data",
		EmbeddedNSQDTCPAddress:   "127.0.0.1:4150",
		EmbeddedNSQDHTTPAddress:  "127.0.0.1:4151",
		EmbeddedNSQDMemQueueSize: nsqdnode.DefaultMemQueueSize,
		EmbeddedNSQDLogLevel:     "warn",
		HTTPAddress:              "127.0.0.1:4180",
		TCPAddress:               "127.0.0.1:4190",
		UI:                       true,
		HTTPMaxConns:             ingest.DefaultMaxConns,
		HTTPHeaderTimeout:        ingest.DefaultHeaderTimeout,
		HTTPBodyTimeout:          ingest.DefaultBodyTimeout,
		HTTPIdleTimeout:          ingest.DefaultIdleTimeout,
		MaxInflightBodyBytes:     ingest.DefaultMaxInflightBodyBytes,
		MaxMsgSize:               1 << 20,
		MaxBodySize:              5 << 20,
		MaxDefer:                 365 * 24 * time.Hour,
		Tick:                     time.Millisecond,
		PoolSize:                 16,
		TaskSize:                 1000,
		BatchSize:                egress.DefaultMaxBatchMsgs,
		ConnsPerNSQD:             egress.DefaultConnsPerAddr,
		PublishBackoff:           egress.DefaultBackoff,
		LookupdPollInterval:      egress.DefaultLookupdPollInterval,
		ClusterForwardTimeout:    5 * time.Second,
		ClusterForwardConns:      64,
		ClusterPollInterval:      2 * time.Second,
		MaxPending:               AutoCapacity,
		MaxPendingBytes:          AutoCapacity,
		MaxTopics:                int(AutoCapacity),
		RetryBackoff:             time.Second,
		ParkBackoff:              time.Minute,
		Fsync:                    journal.FsyncInterval.String(),
		FsyncInterval:            100 * time.Millisecond,
		SegmentSize:              64 << 20,
		CompactInterval:          10 * time.Second,
		DirectPublish:            true,
		IDRetention:              5 * time.Minute,
		ShutdownGrace:            10 * time.Second,
	}
}

// DefaultMaxTopics is Options.MaxTopics' default: 100 topics of the
// embedded nsqd cost about 82 MB of heap at its default mem-queue-size
// (BenchmarkTopicHeap in internal/nsqdnode).
const DefaultMaxTopics = 100

// DefaultMaxTopicsExternal is Options.MaxTopics' default without the
// embedded nsqd: deferd's own cost per topic is its per-topic counters,
// so the cap only bounds a client that invents topic names.
const DefaultMaxTopicsExternal = 10_000

// mpubHeadroom is how much of MaxBodySize the default sink leaves unused
// in its MPUBs to nsqd.
const mpubHeadroom = 4096

// Validate reports the first option that New would refuse, by its field
// and flag name. It is the only validation: cmd/deferd calls it too.
func (o *Options) Validate() error {
	bad := func(field, flag, rule string, v any) error {
		if flag == "" {
			return fmt.Errorf("Options.%s %s, got %v", field, rule, v)
		}
		return fmt.Errorf("--%s (Options.%s) %s, got %v", flag, field, rule, v)
	}
	if o.DataPath == "" {
		return bad("DataPath", "data-path", "must be set", `""`)
	}
	if _, err := journal.ParseFsyncMode(o.Fsync); err != nil {
		return bad("Fsync", "fsync", "must be always, interval or never", o.Fsync)
	}
	for _, d := range []struct {
		field, flag string
		v           time.Duration
	}{
		{"MaxDefer", "max-defer", o.MaxDefer}, {"Tick", "tick", o.Tick},
		{"RetryBackoff", "retry-backoff", o.RetryBackoff}, {"ParkBackoff", "park-backoff", o.ParkBackoff},
		{"FsyncInterval", "fsync-interval", o.FsyncInterval}, {"ShutdownGrace", "shutdown-grace", o.ShutdownGrace},
		{"PublishBackoff", "", o.PublishBackoff},
		{"LookupdPollInterval", "lookupd-poll-interval", o.LookupdPollInterval},
		{"HTTPHeaderTimeout", "http-header-timeout", o.HTTPHeaderTimeout}, {"HTTPBodyTimeout", "http-body-timeout", o.HTTPBodyTimeout},
		{"HTTPIdleTimeout", "http-idle-timeout", o.HTTPIdleTimeout},
		{"ClusterForwardTimeout", "cluster-forward-timeout", o.ClusterForwardTimeout},
		{"ClusterPollInterval", "cluster-poll-interval", o.ClusterPollInterval},
	} {
		if d.v <= 0 {
			return bad(d.field, d.flag, "must be > 0", d.v)
		}
	}
	if o.CompactInterval < 0 {
		return bad("CompactInterval", "compact-interval", "must be >= 0 (0: off)", o.CompactInterval)
	}
	if o.IDRetention < 0 {
		return bad("IDRetention", "id-retention", "must be >= 0 (0: off)", o.IDRetention)
	}
	for _, n := range []struct {
		field, flag string
		v           int64
	}{
		{"MaxMsgSize", "max-msg-size", o.MaxMsgSize}, {"MaxBodySize", "max-body-size", o.MaxBodySize},
		{"PoolSize", "pool-size", int64(o.PoolSize)}, {"TaskSize", "task-size", int64(o.TaskSize)},
		{"BatchSize", "batch-size", int64(o.BatchSize)}, {"ConnsPerNSQD", "conns-per-nsqd", int64(o.ConnsPerNSQD)},
		{"SegmentSize", "segment-size", o.SegmentSize}, {"ClusterForwardConns", "cluster-forward-conns", int64(o.ClusterForwardConns)},
		{"HTTPMaxConns", "http-max-conns", int64(o.HTTPMaxConns)}, {"MaxInflightBodyBytes", "max-inflight-body-bytes", o.MaxInflightBodyBytes},
	} {
		if n.v <= 0 {
			return bad(n.field, n.flag, "must be > 0", n.v)
		}
	}
	for _, n := range []struct {
		field, flag string
		v           int64
	}{
		{"MaxPending", "max-pending", o.MaxPending}, {"MaxPendingBytes", "max-pending-bytes", o.MaxPendingBytes},
		{"MaxTopics", "max-topics", int64(o.MaxTopics)},
	} {
		if n.v <= 0 && n.v != AutoCapacity {
			return bad(n.field, n.flag, "must be > 0 or -1 (AutoCapacity: derived from the machine or the nsqd used)", n.v)
		}
	}
	if o.EmbeddedNSQDMemQueueSize < 0 {
		return bad("EmbeddedNSQDMemQueueSize", "embedded-nsqd-mem-queue-size", "must be >= 0", o.EmbeddedNSQDMemQueueSize)
	}
	// An MPUB to nsqd carries the message with 8 bytes of framing, within
	// MaxBodySize less the headroom.
	if o.MaxBodySize-mpubHeadroom < o.MaxMsgSize+8 {
		return fmt.Errorf("--max-body-size (Options.MaxBodySize, %d) must be at least --max-msg-size + %d (%d): a message of the largest size must fit in an MPUB to nsqd",
			o.MaxBodySize, mpubHeadroom+8, o.MaxMsgSize+mpubHeadroom+8)
	}
	// Compaction and Reschedule rewrite a message in a moved record, a
	// little larger than the accepted one: the largest must fit too.
	if o.MaxMsgSize > journal.MaxRecordBytes-movedOverhead {
		return fmt.Errorf("--max-msg-size (Options.MaxMsgSize, %d) must be at most %d: the journal's largest record (%d bytes) less a moved record's overhead (%d), or a message of the largest size could be accepted but never compacted or rescheduled",
			o.MaxMsgSize, journal.MaxRecordBytes-movedOverhead, journal.MaxRecordBytes, movedOverhead)
	}
	if err := o.validateCluster(); err != nil {
		return err
	}
	sinks := 0
	// NSQDTCPAddresses and LookupdHTTPAddresses, alone or together, are
	// one choice: the default sink to those nsqds.
	nsqds := len(o.NSQDTCPAddresses) > 0 || len(o.LookupdHTTPAddresses) > 0
	for _, set := range []bool{o.Sink != nil, nsqds, o.EmbeddedNSQD} {
		if set {
			sinks++
		}
	}
	if sinks != 1 {
		return errors.New("Options: exactly one of Sink, NSQDTCPAddresses (--nsqd-tcp-address) and/or LookupdHTTPAddresses (--lookupd-http-address), and EmbeddedNSQD must be set")
	}
	return nil
}

// nsqdMemQueue maps EmbeddedNSQDMemQueueSize to nsqdnode's Config, where
// 0 means "the default": Options' 0 is nsqd's 0 (nothing in memory).
func nsqdMemQueue(n int64) int64 {
	if n == 0 {
		return nsqdnode.MemQueueNone
	}
	return n
}

// journalOptions is the journal's part of o.
func (o *Options) journalOptions() journal.Options {
	mode, _ := journal.ParseFsyncMode(o.Fsync) // Validate checked it
	return journal.Options{
		Dir:           filepath.Join(o.DataPath, "journal"),
		SegmentBytes:  o.SegmentSize,
		Fsync:         mode,
		FsyncInterval: o.FsyncInterval,
		Logf:          o.Logf,
	}
}

// egressOptions is the default sink's part of o, publishing to addrs.
func (o *Options) egressOptions(addrs []string) egress.Options {
	return egress.Options{
		Addrs:         addrs,
		ConnsPerAddr:  o.ConnsPerNSQD,
		MaxBatchMsgs:  o.BatchSize,
		MaxBatchBytes: int(o.MaxBodySize) - mpubHeadroom,
		MaxMsgSize:    int(o.MaxMsgSize),
		Attempts:      egress.DefaultAttempts,
		Backoff:       o.PublishBackoff,
		Logf:          o.Logf,
		// With the embedded nsqd, NSQDTCPAddresses and
		// LookupdHTTPAddresses are empty (Validate).
		LookupdHTTPAddrs:    o.LookupdHTTPAddresses,
		LookupdPollInterval: o.LookupdPollInterval,
	}
}
