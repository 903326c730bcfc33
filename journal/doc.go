// Package journal is deferd's durable, segmented, group-committed
// append-only log of accepted, published and cancelled messages.
//
// # Scope
//
// The package owns the segment files and their directory lock, the record
// frames and their encoding (record.go), group commit and fsync (append.go,
// done.go, flusher.go), reading records back (read.go), recovery
// (recover.go, scanning segments in scan.go) and the compaction scan
// (compact.go); when to compact, what a message means and where it goes
// belong to its caller. It imports the standard library and, of deferd's
// packages, only internal/intern, so it can be built, tested and fuzzed on
// its own.
//
// # Contract
//
// When Append returns nil the messages are written to the OS (write(2)
// returned), so they survive kill -9 of the process; with FsyncAlways they
// are also fsynced, so they survive power loss. FsyncInterval fsyncs the
// active segment every Options.FsyncInterval; FsyncNever leaves it to the OS.
//
// # Files
//
// Dir holds LOCK (flocked by the one process using Dir) and segment files
// named by zero-padded increasing id, 00000001.seg, 00000002.seg, ... A
// segment is rolled over when the next record would take it past
// Options.SegmentBytes (a record larger than that gets a segment of its
// own). Records are frames
//
//	[u32 len][u32 crc32c(type+payload)][u8 type][payload]
//
// of three types: Accept (ord, due, id, topic, body), Moved (ord, old key,
// then as Accept: compaction's copy, which kills old in the same record)
// and Done (kind + up to 64Ki keys of 8 bytes). A message's Key is its
// segment id and ordinal among the segment's message records; the ordinal
// is stored in the record, so records found again after a corrupt region
// keep their Key and the number of messages lost is exact.
//
// # Writing
//
// Appenders encode into the current group's buffer under one mutex, which
// fixes their positions; one flusher goroutine swaps the buffer, issues one
// pwrite per segment touched and fsyncs per mode, then releases the group.
// A group is capped (Options.GroupBytes); appenders wait while it is full.
// A failed write is truncated away, fails its group and the group being
// filled behind it, and the journal keeps going from the same offset.
//
// # Liveness and space
//
// Each segment keeps a live count and one dead bit per ordinal (12M
// messages: 1.5 MB). Segments are deleted oldest-first only: the oldest is
// deleted when it is sealed, fully written and has no live message, because
// a newer segment may hold the Done marks of older ones. Compactable,
// ScanLive and AppendMoved let the owner move the few live messages out of
// an old segment that holds the rest of the log on disk.
//
// # Recovery
//
// Recover reads all segments (mmap), verifies every CRC and tells a torn
// tail from corruption like etcd's wal: bad bytes at the end of the LAST
// segment with no valid record after them (a short record, a zero-filled
// or partially written end) are a torn write and are truncated (reported in
// Report.TornTails). Anything else (a bad record followed by valid ones,
// or a bad record anywhere in an earlier segment) is corruption: it is
// reported in Report.Corrupt, Stats.Corrupt and Logf, never silently
// skipped. Records after a corrupt region are kept if a valid frame can be
// found again (resync); otherwise the rest of that segment is lost and the
// report says the count is unknown. Done marks lost to corruption make
// their messages live again (redelivery, at-least-once).
package journal
