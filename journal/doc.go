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
// Dir holds LOCK (flocked by the one process using Dir), segment files
// named by zero-padded increasing id, 00000001.seg, 00000002.seg, ..., and
// at most two deleted segments' files kept for reuse, <id>.free. A segment
// is rolled over when the next record would take it past
// Options.SegmentBytes (a record larger than that gets a segment of its
// own). This is format v2 (all integers little endian):
//
//	segment: [header: 32 bytes][frame]*
//	header:  [8 magic "DEFERDJL"][u32 version=2][u32 segment id][u64 salt]
//	         [u32 prevSize][u32 crc32c(header[0:28])]
//	frame:   [u32 len][u32 crc][u8 type][payload]
//	crc:     crc32c(segment id, salt, type, payload): CRC-32C of type+payload
//	         seeded with the CRC-32C of header[12:24]
//
// len counts type+payload. The salt is random and new for every life of
// the file, so a frame verifies only in the segment, and the life of its
// file, that wrote it: not in another segment, not as a leftover of the
// file's previous life, and never as bytes inside a record (a client's
// body cannot carry the salt). prevSize is the file's size when it was
// recycled, 0 for a new file. Records are of three types: Accept (ord,
// due, id, topic, body), Moved (ord, old key, then as Accept: compaction's
// copy, which kills old in the same record) and Done (kind + up to 64Ki
// keys of 8 bytes); AcceptT and MovedT add the accepted time and origin
// (payloads in record.go). A message's Key is its segment id and ordinal
// among the segment's message records; the ordinal is stored in the
// record, so records found again after a corrupt region keep their Key and
// the number of messages lost is exact.
//
// Format v1, which deferd wrote before, is v2 without the header (frames
// from offset 0) and with unseeded CRCs (crc32c(type+payload)); a v2
// segment starts with the magic, which no v1 frame can (read as a length
// it is far above MaxRecordBytes). Recover reads v1 segments; the journal
// writes only v2: after a v1 journal, appends go to a new v2 segment.
//
// Recycling: a deleted segment's file is renamed to <id>.free instead of
// unlinked (at most two are kept, none while the journal is not Writable,
// when deleting is what frees space) and becomes the next new segment:
// renamed to its name and overwritten from the start with a new header
// and salt, so a long run writes into pages already in the page cache
// instead of allocating fresh ones. The previous life's bytes past the
// new life's last record are cut when the segment is sealed or the
// journal closed; until then (a crash) recovery reads them as the end of
// the segment (see Recovery).
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
// Recover reads all segments (mmap), verifies their headers and every CRC
// (seeded with the segment's salt) and tells a torn tail from corruption
// like etcd's wal: bad bytes at the end of the LAST segment with no valid
// record after them (a short record, a zero-filled or partially written
// end) are a torn write and are truncated (reported in Report.TornTails).
// In a recycled file still as long as its previous life (size ==
// prevSize), bad bytes at the end with no valid record after them are that
// life's leftovers and end the segment, in any segment
// (Report.StaleBytes; cut in the last), as in RocksDB's recyclable log
// format. Anything else (a bad record followed by valid ones, a bad record
// anywhere in an earlier segment, a damaged header) is corruption: it is
// reported in Report.Corrupt, Stats.Corrupt and Logf, never silently
// skipped, one line and one count per corrupt region, the line stating
// the messages the region lost. Records after a corrupt region are kept if
// a valid frame can be found again (resync: only a frame that verifies
// with this segment's seed, so never one inside a client's body); otherwise
// the rest of that segment is lost and the report says the count is
// unknown. Done marks lost to corruption make their messages live again
// (redelivery, at-least-once). A last segment whose header is short or
// names another segment (a crash while its file was being created or
// recycled, before any record of it) is a torn tail too: it is replaced.
package journal
