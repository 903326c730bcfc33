package journal

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/deferd/deferd/internal/intern"
)

// Key identifies an accepted message: its segment id and its ordinal among
// that segment's message records (Accept and Moved). The zero Key is never
// assigned (segment ids start at 1).
type Key struct{ Seg, Ord uint32 }

// Pos is where a message record lives: its Key plus the byte offset and
// length of its frame in the segment file. It is pointer-free (16 bytes) so
// the timing wheel can hold millions of them without GC cost.
type Pos struct{ Seg, Ord, Off, Len uint32 }

// Key returns the message's key.
func (p Pos) Key() Key { return Key{p.Seg, p.Ord} }

// Message is one delayed message as journaled, a plain value (the zero
// Message has no ID, an empty topic, due 0 and no body).
type Message struct {
	ID    string // client id, may be ""
	Topic string
	Due   int64 // unix milliseconds
	Body  []byte
	// Accepted (unix ms) is when the message was first accepted, and
	// Origin the Key of its first record (zero if this record is it): a
	// Moved copy keeps both. 0 and zero when not recorded (records
	// written without them, which stay as small as before).
	Accepted int64
	Origin   Key
}

// FsyncMode says when appended records are fsynced. The zero value is
// FsyncInterval.
type FsyncMode uint8

const (
	// FsyncInterval fsyncs, every Options.FsyncInterval, the active
	// segment if it was written and the segments rolled over since (the
	// writer never waits for the disk); Append returns once data is in
	// the OS.
	FsyncInterval FsyncMode = iota
	// FsyncAlways fsyncs every group before Append returns.
	FsyncAlways
	// FsyncNever leaves flushing to the OS (Close still fsyncs).
	FsyncNever
)

// ParseFsyncMode parses "always", "interval" or "never".
func ParseFsyncMode(s string) (FsyncMode, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "interval", "":
		return FsyncInterval, nil
	case "always":
		return FsyncAlways, nil
	case "never":
		return FsyncNever, nil
	}
	return 0, fmt.Errorf("journal: fsync mode %q: want always, interval or never", s)
}

// String returns "interval", "always" or "never".
func (m FsyncMode) String() string {
	switch m {
	case FsyncInterval:
		return "interval"
	case FsyncAlways:
		return "always"
	case FsyncNever:
		return "never"
	}
	return "FsyncMode(" + strconv.Itoa(int(m)) + ")"
}

// DoneKind is why a message is finished. The zero value is invalid.
type DoneKind uint8

const (
	Published DoneKind = 1 // delivered to nsqd
	Cancelled DoneKind = 2 // cancelled by the producer
)

// Options configures Open. The zero value of each field but Dir selects its
// default.
type Options struct {
	Dir           string                           // required; created if missing
	SegmentBytes  int64                            // roll over past this size; default 64 MiB
	Fsync         FsyncMode                        // default FsyncInterval
	FsyncInterval time.Duration                    // default 100ms (FsyncInterval mode)
	Logf          func(format string, args ...any) // nil = log.Printf

	// GroupBytes caps one write group's buffer; appenders wait while the
	// group is full. Default 4 MiB. Memory use is about twice this.
	GroupBytes int

	// ProbeInterval is how often a journal that cannot write (the disk is
	// full) tries again by itself; default 1s. See Journal.Writable.
	ProbeInterval time.Duration
}

// Errors returned by the journal. Write errors are returned wrapped (use
// errors.Is, e.g. with syscall.ENOSPC).
var (
	ErrClosed       = errors.New("journal: closed")
	ErrTooLarge     = errors.New("journal: record larger than MaxRecordBytes")
	ErrNotLive      = errors.New("journal: message is not live")
	ErrNotFound     = errors.New("journal: segment not found (deleted)")
	ErrNotRecovered = errors.New("journal: Recover must be called once before appending")
	ErrBadPos       = errors.New("journal: position does not hold a message record")
)

// Report describes one recovery (see Recover). It is a plain value.
type Report struct {
	Segments       int           `json:"segments"`        // segment files scanned
	Records        int           `json:"records"`         // valid records (all types)
	Live           int           `json:"live"`            // live messages passed to fn
	Bytes          int64         `json:"bytes"`           // bytes scanned
	TornTails      int           `json:"torn_tails"`      // torn tails truncated (last segment only)
	TruncatedBytes int64         `json:"truncated_bytes"` // bytes removed by truncation
	StaleBytes     int64         `json:"stale_bytes"`     // recycled files: bytes of their previous life past a segment's end (truncated in the last)
	Corrupt        []string      `json:"corrupt"`         // one line per corrupt region; never empty when data was lost
	Duration       time.Duration `json:"duration_ns"`
}

// Stats is a snapshot of counters, a plain value. See Journal.Stats.
type Stats struct {
	Segments    int    `json:"segments"`
	DiskBytes   int64  `json:"disk_bytes"`   // bytes written to segment files still present
	Live        int64  `json:"live"`         // live messages
	LiveBytes   int64  `json:"live_bytes"`   // estimated bytes of live message records
	Appends     uint64 `json:"appends"`      // message records written (Accept+Moved)
	DoneRecords uint64 `json:"done_records"` // Done records written
	Groups      uint64 `json:"groups"`       // write groups (one write(2) per segment touched)
	Fsyncs      uint64 `json:"fsyncs"`
	WriteErrors uint64 `json:"write_errors"`
	Corrupt     uint64 `json:"corrupt"`  // corrupt regions found (recovery, ScanLive, Read), each once
	Deleted     uint64 `json:"deleted"`  // segments deleted
	Recycled    uint64 `json:"recycled"` // segments created by reusing a deleted segment's file
	// SpareFiles are deleted segments' files kept to be reused (at most
	// 2; none while the journal is not Writable), SpareBytes their size.
	SpareFiles int   `json:"spare_files"`
	SpareBytes int64 `json:"spare_bytes"`
	// Writable is false while the journal cannot write (see
	// Journal.Writable); ReadOnlySince is when that began (nil while
	// writable). HeldMarks are the published and cancelled marks kept in
	// memory meanwhile, to be written when writing works again;
	// HeldMarksDropped counts those not kept past MaxHeldMarks (their
	// messages are delivered again after a restart).
	Writable         bool       `json:"writable"`
	ReadOnlySince    *time.Time `json:"read_only_since,omitempty"`
	HeldMarks        int        `json:"held_marks"`
	HeldMarksDropped uint64     `json:"held_marks_dropped"`
	// LastRecovery is Recover's report. It is left out of JSON: the
	// scheduler's /stats carries it once, as "recovery".
	LastRecovery Report `json:"-"`
}

// rng is a run of a group's buffer that goes to one segment.
type rng struct {
	seg        *segment
	start, end int   // in group.buf
	off        int64 // file offset of start
	nmsg       uint32
	msgBytes   int64
	ndone      uint64
	ord0       uint32 // seg.nextOrd when the range began
}

// group is one group commit: records encoded by many callers, written by
// the flusher with one write(2) per segment touched.
type group struct {
	buf []byte
	// writers counts appenders encoding frames into space they reserved
	// in buf with j.mu released; the flusher waits for it before writing.
	writers sync.WaitGroup
	ranges  []rng
	dones   [][2]int // Done frames in buf, re-queued if the group fails
	moved   []Key    // old keys to mark dead once written
	held    int      // keys of its Done frames taken from held marks
	done    chan struct{}
	err     error
}

// Journal is a durable, segmented, group-committed log. All methods are
// safe for concurrent use. Use Open, then Recover once, then the rest; the
// zero value is not usable. It owns one flusher goroutine (started by
// Recover, stopped by Close) and one open file per segment.
type Journal struct {
	opts   Options
	logf   func(string, ...any)
	lock   *os.File
	table  atomic.Pointer[segTable]
	closed atomic.Bool

	mu        sync.Mutex
	cond      *sync.Cond // signalled when cur is swapped or the journal closes
	cur       *group
	spare     []byte
	active    *segment
	recovered bool
	closing   bool

	kick chan struct{}
	// marks fires markDelay after Done queued a record into a group that
	// no write has taken yet (marksArmed, guarded by mu): the flusher then
	// writes it, unless an append's kick wrote it first.
	marks      *time.Timer
	marksArmed bool
	stop       chan struct{}
	stopped    chan struct{}
	closeMu    sync.Mutex

	// Flusher-owned.
	wseg  *segment // segment last written
	dirty bool     // wseg written since its last fsync
	// toSync is the segment the periodic fsync (FsyncInterval) is owed to;
	// set by the flusher after a write, taken by syncOwed.
	toSync atomic.Pointer[segment]
	// sealedMu guards sealed: segments rolled over in FsyncInterval mode
	// with writes not yet fsynced, owed to the periodic fsync as well.
	sealedMu sync.Mutex
	sealed   []*segment
	// syncMu serialises syncOwed, so a call waits for fsyncs of owed
	// segments that a concurrent call has taken but not finished.
	syncMu sync.Mutex
	ro     roState // not writable: since when, why, the marks held meanwhile
	// pool holds the paths of deleted segments' files kept for reuse
	// (*.free), at most recycleMax; poolBytes their total size (read by
	// Stats). recycle overrides defaultRecycle (tests, benchmarks; < 0:
	// no recycling).
	pool      []string
	poolBytes atomic.Int64
	poolFiles atomic.Int32
	recycle   int

	// writeAt is the file write used by the flusher; tests inject errors.
	writeAt func(f *os.File, b []byte, off int64) (int, error)

	stats struct {
		appends, doneRecs, groups, fsyncs, writeErrs, corrupt, deleted, recycled atomic.Uint64
	}
	lastReport Report

	topics   intern.Table // topic names of the messages Read, ReadBatch, ScanLive and Recover return
	closeErr error        // final flush/fsync error, set by the flusher before it stops
}

// Open creates Dir if needed, takes an exclusive flock on Dir/LOCK so that
// two processes cannot share it, and checks that Dir is writable. It does
// not read segments: call Recover next. Cost: a few syscalls.
//
// A Dir on a full disk (the check fails with ENOSPC or EDQUOT) is not an
// error: the journal opens read-only (Writable false), so that Recover can
// replay it and what is pending can be delivered; Append fails, Done keeps
// its marks in memory, and the journal tries again every ProbeInterval
// and becomes writable by itself when space returns. Any other failure
// of the check (permissions, a read-only filesystem) is returned.
func Open(opts Options) (*Journal, error) {
	if opts.Dir == "" {
		return nil, errors.New("journal: Options.Dir is required")
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = 64 << 20
	}
	if opts.SegmentBytes > maxSegmentBytes {
		return nil, fmt.Errorf("journal: SegmentBytes %d must be <= %d (Pos.Off is 32 bits)", opts.SegmentBytes, int64(maxSegmentBytes))
	}
	if opts.FsyncInterval <= 0 {
		opts.FsyncInterval = 100 * time.Millisecond
	}
	if opts.GroupBytes <= 0 {
		opts.GroupBytes = 4 << 20
	}
	if opts.Fsync > FsyncNever {
		return nil, fmt.Errorf("journal: bad fsync mode %d", opts.Fsync)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("journal: create dir: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(opts.Dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("journal: dir %s not writable: %w", opts.Dir, err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("journal: dir %s is in use by another process (LOCK held)", opts.Dir)
		}
		return nil, fmt.Errorf("journal: lock %s: %w", opts.Dir, err)
	}
	if opts.ProbeInterval <= 0 {
		opts.ProbeInterval = time.Second
	}
	probeErr := probeWritable(opts.Dir)
	if probeErr != nil && !isNoSpace(probeErr) {
		lf.Close()
		return nil, fmt.Errorf("journal: dir %s not writable: %w", opts.Dir, probeErr)
	}
	j := &Journal{
		opts:    opts,
		logf:    opts.Logf,
		lock:    lf,
		kick:    make(chan struct{}, 1),
		marks:   time.NewTimer(time.Hour),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
		writeAt: func(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) },
	}
	if j.logf == nil {
		j.logf = log.Printf
	}
	j.marks.Stop()
	j.cond = sync.NewCond(&j.mu)
	j.table.Store(&segTable{})
	if probeErr != nil {
		j.enterReadOnlyLocked(fmt.Errorf("journal: dir %s not writable: %w", opts.Dir, probeErr))
	}
	return j, nil
}

func probeWritable(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	defer os.Remove(name)
	if _, err := f.Write([]byte{0}); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Close flushes pending records, fsyncs, closes the files and releases the
// LOCK. Idempotent and safe for concurrent use; Append, AppendMoved and
// Done after Close return ErrClosed, Read returns ErrClosed. Cost: writing
// what is pending and fsyncing what is not yet on disk; it waits for the
// flusher to stop.
func (j *Journal) Close() error {
	j.closeMu.Lock()
	defer j.closeMu.Unlock()
	if j.closed.Load() {
		return nil
	}
	j.mu.Lock()
	j.closing = true
	j.cond.Broadcast()
	started := j.recovered
	j.mu.Unlock()
	var err error
	if started {
		close(j.stop)
		<-j.stopped
		err = j.closeErr
	}
	j.closed.Store(true)
	for _, s := range j.table.Load().segs {
		if s == nil {
			continue
		}
		s.fmu.Lock()
		if s.f != nil {
			if e := s.f.Close(); e != nil && err == nil {
				err = e
			}
			s.f = nil
		}
		s.fmu.Unlock()
	}
	j.lock.Close()
	return err
}
