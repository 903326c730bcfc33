package engine

import (
	"time"

	"github.com/deferd/deferd/egress"
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
	Journal  journal.Stats      `json:"journal"`
	// Recovery is the journal replay at start; Recovery.Corrupt lists
	// every corrupt region found (never skipped silently).
	Recovery journal.Report `json:"recovery"`
}

// Lateness holds delivery lateness percentiles in milliseconds.
type Lateness struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
}

// PoolStats describes the publish pool.
type PoolStats struct {
	Size    int `json:"size"`
	Running int `json:"running"`
	Waiting int `json:"waiting"`
}

// Stats implements ingest.Backend. It is safe for concurrent use and
// costs O(topics + histogram buckets).
func (e *Engine) Stats() any { return e.Snapshot() }

// Snapshot returns the engine's statistics.
func (e *Engine) Snapshot() Stats {
	e.mu.Lock()
	topics := make(map[string]int64, len(e.topics))
	for k, v := range e.topics {
		topics[k] = v
	}
	e.mu.Unlock()
	p := e.Percentiles(0.5, 0.9, 0.99, 0.999, 1)
	ms := func(s float64) float64 { return s * 1000 }
	return Stats{
		UptimeSeconds:   time.Since(e.startAt).Seconds(),
		Pending:         e.pending.Load(),
		PendingBytes:    e.pendingBytes.Load(),
		PendingByTopic:  topics,
		WheelEntries:    e.w.Len(),
		Accepted:        e.accepted.Load(),
		Published:       e.published.Load(),
		PublishedDirect: e.direct.Load(),
		DirectJournaled: e.directMissed.Load(),
		Cancelled:       e.cancelled.Load(),
		Retried:         e.retried.Load(),
		Failed:          e.failed.Load(),
		ReadErrors:      e.readErrors.Load(),
		Moved:           e.moved.Load(),
		Early:           e.early.Load(),
		Lateness:        Lateness{P50: ms(p[0]), P90: ms(p[1]), P99: ms(p[2]), P999: ms(p[3]), Max: ms(p[4])},
		Pool:            PoolStats{Size: e.pool.Cap(), Running: e.pool.Running(), Waiting: e.pool.Waiting()},
		Egress:          e.pub.Stats(),
		Journal:         e.j.Stats(),
		Recovery:        e.recovery,
	}
}

// Info implements ingest.Backend; the daemon wraps it with its addresses
// and version.
func (e *Engine) Info() any {
	o := e.opts
	return map[string]any{
		"tick":               o.Tick.String(),
		"pool_size":          o.PoolSize,
		"task_size":          o.TaskSize,
		"max_pending":        o.MaxPending,
		"max_pending_bytes":  o.MaxPendingBytes,
		"nsqd_tcp_addresses": o.Egress.Addrs,
		"conns_per_nsqd":     o.Egress.ConnsPerAddr,
		"batch_size":         o.Egress.MaxBatchMsgs,
		"fsync":              o.Journal.Fsync.String(),
		"fsync_interval":     o.Journal.FsyncInterval.String(),
		"segment_size":       o.Journal.SegmentBytes,
		"direct_publish":     o.DirectPublish,
	}
}
