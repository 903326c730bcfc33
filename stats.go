package deferd

import (
	"time"

	"github.com/deferd/deferd/egress"
	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/journal"
)

// Stats is the body of GET /stats.
type Stats struct {
	UptimeSeconds  float64          `json:"uptime_seconds"`
	Pending        int64            `json:"pending"`
	PendingBytes   int64            `json:"pending_bytes"`
	PendingByTopic map[string]int64 `json:"pending_by_topic"`
	WheelEntries   int              `json:"wheel_entries"`
	Accepted       uint64           `json:"accepted"`
	Published      uint64           `json:"published"`
	// PublishedDirect counts the published messages that were due when
	// they arrived and went to nsqd before the reply, without the journal.
	PublishedDirect uint64 `json:"published_direct"`
	// DirectJournaled counts messages due on arrival that nsqd did not
	// take at once (down, error, no answer): they were journaled instead
	// and go out through the wheel.
	DirectJournaled uint64 `json:"direct_journaled"`
	Cancelled       uint64 `json:"cancelled"`
	// Retried counts publish attempts that failed and were rescheduled;
	// Failed counts messages nsqd rejected outright (they are retried
	// after ParkBackoff, never dropped).
	Retried    uint64 `json:"retried"`
	Failed     uint64 `json:"failed"`
	ReadErrors uint64 `json:"journal_read_errors"`
	Moved      uint64 `json:"journal_moved"`
	Early      uint64 `json:"delivered_early"`
	// Lateness is publish time minus due time, in milliseconds, over all
	// messages published since start.
	Lateness Lateness           `json:"lateness_ms"`
	Pool     PoolStats          `json:"pool"`
	Egress   []egress.NodeStats `json:"egress"`
	// Journal is the journal's state. Its Live (like
	// deferd_journal_live_messages and the startup "recovered N live")
	// counts the retention records of published ids too (IDRetention),
	// which Pending does not: with retention on it is about Pending
	// plus the ids retained.
	Journal journal.Stats `json:"journal"`
	// Recovery is the journal replay at start; Recovery.Corrupt lists
	// every corrupt region found (never skipped silently).
	Recovery journal.Report `json:"recovery"`
	// Due is the due-time figures of what is pending, in all and per
	// topic: overdue, the oldest overdue, due within 1 s ... later, and
	// the accepted and published rates (see DueReport).
	Due         DueReport `json:"due"`
	Rescheduled uint64    `json:"rescheduled"`
	// Ingest is the counts of the listeners ListenHTTP and ListenTCP made,
	// by protocol ("http", "tcp"; several of one protocol summed), since
	// each was made; absent without listeners.
	Ingest map[string]ingest.IngestStats `json:"ingest,omitempty"`
	// Cluster is the cluster's state (Options.ClusterPeers; absent
	// without): every peer's reachability, last error, pending count and
	// shards, the forwarding counts and the hand-off (ClusterStats).
	Cluster *ClusterStats `json:"cluster,omitempty"`
}

// Lateness holds delivery lateness percentiles in milliseconds.
type Lateness struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	// Stages breaks the lateness of the messages published through the
	// wheel down: due to their task's start, to their MPUB, to nsqd's OK
	// (the messages published straight from Publish are in the total
	// only). A message's stages add up to its batch's OK minus its due
	// time; the total counts until the sink call that took it returned,
	// later for the earlier batches of a call of several.
	Stages LatenessStages `json:"stages"`
	// ByProto is the lateness of the messages that came in by each
	// protocol: "http" (the HTTP API, a cluster peer's forwards
	// included), "tcp" (nsqd's TCP protocol), "lib" (Scheduler.Publish)
	// and "recovered" (replayed from the journal after a restart: the
	// journal does not keep the protocol). Every protocol is present;
	// their counts add up to the messages in the total.
	ByProto map[string]StageLateness `json:"by_proto"`
}

// PoolStats describes the publish pool.
type PoolStats struct {
	Size    int `json:"size"`
	Running int `json:"running"`
	Waiting int `json:"waiting"`
}

// Stats returns the Scheduler's statistics, the body of GET /stats. Safe
// for concurrent use; it costs O(topics + histogram buckets + segments).
func (s *Scheduler) Stats() Stats {
	topics := s.ix.topicCounts()
	p := s.Percentiles(0.5, 0.9, 0.99, 0.999, 1)
	ms := func(sec float64) float64 { return sec * 1000 }
	return Stats{
		UptimeSeconds:   time.Since(s.startAt).Seconds(),
		Pending:         s.pending.Load(),
		PendingBytes:    s.pendingBytes.Load(),
		PendingByTopic:  topics,
		WheelEntries:    s.w.Len(),
		Accepted:        s.accepted.Load(),
		Published:       s.published.Load(),
		PublishedDirect: s.direct.Load(),
		DirectJournaled: s.directMissed.Load(),
		Cancelled:       s.cancelled.Load(),
		Retried:         s.retried.Load(),
		Failed:          s.failed.Load(),
		ReadErrors:      s.readErrors.Load(),
		Moved:           s.moved.Load(),
		Early:           s.early.Load(),
		Lateness:        Lateness{P50: ms(p[0]), P90: ms(p[1]), P99: ms(p[2]), P999: ms(p[3]), Max: ms(p[4]), Stages: s.lateness.stages.stats(), ByProto: s.lateness.protos.stats()},
		Pool:            PoolStats{Size: s.pool.Cap(), Running: s.pool.Running(), Waiting: s.pool.Waiting()},
		Egress:          s.egressStats(),
		Journal:         s.j.Stats(),
		Recovery:        s.recovery,
		Due:             s.Due(),
		Rescheduled:     s.op.rescheduled.Load(),
		Ingest:          s.ingestStats(),
		Cluster:         s.clusterStats(),
	}
}

func (s *Scheduler) egressStats() []egress.NodeStats {
	if s.eg == nil {
		return nil
	}
	return s.eg.Stats()
}

// Info describes the Scheduler's configuration, the body of GET /info
// (with the listeners' addresses, which ListenHTTP adds). Safe for
// concurrent use.
func (s *Scheduler) Info() map[string]any {
	o := s.opts
	m := map[string]any{
		"version":                Version,
		"data_path":              o.DataPath,
		"max_msg_size":           o.MaxMsgSize,
		"max_body_size":          o.MaxBodySize,
		"max_defer":              o.MaxDefer.String(),
		"tick":                   o.Tick.String(),
		"pool_size":              o.PoolSize,
		"task_size":              o.TaskSize,
		"max_pending":            o.MaxPending,
		"max_pending_bytes":      o.MaxPendingBytes,
		"nsqd_tcp_addresses":     s.NSQDTCPAddresses(),
		"lookupd_http_addresses": o.LookupdHTTPAddresses,
		"conns_per_nsqd":         o.ConnsPerNSQD,
		"batch_size":             o.BatchSize,
		"fsync":                  o.Fsync,
		"fsync_interval":         o.FsyncInterval.String(),
		"segment_size":           o.SegmentSize,
		"direct_publish":         o.DirectPublish,
	}
	if s.node != nil {
		m["embedded_nsqd"] = map[string]any{"tcp_address": s.node.TCPAddr, "http_address": s.node.HTTPAddr, "mem_queue_size": o.EmbeddedNSQDMemQueueSize}
	}
	return m
}
