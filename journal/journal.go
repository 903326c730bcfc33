package journal

import (
	"cmp"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
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

// Message is one delayed message as journaled.
type Message struct {
	ID    string // client id, may be ""
	Topic string
	Due   int64 // unix milliseconds
	Body  []byte
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
	Corrupt        []string      `json:"corrupt"`         // one line per corrupt region; never empty when data was lost
	Duration       time.Duration `json:"duration_ns"`
}

// Stats is a snapshot of counters, a plain value. See Journal.Stats.
type Stats struct {
	Segments     int    `json:"segments"`
	DiskBytes    int64  `json:"disk_bytes"`   // bytes written to segment files still present
	Live         int64  `json:"live"`         // live messages
	LiveBytes    int64  `json:"live_bytes"`   // estimated bytes of live message records
	Appends      uint64 `json:"appends"`      // message records written (Accept+Moved)
	DoneRecords  uint64 `json:"done_records"` // Done records written
	Groups       uint64 `json:"groups"`       // write groups (one write(2) per segment touched)
	Fsyncs       uint64 `json:"fsyncs"`
	WriteErrors  uint64 `json:"write_errors"`
	Corrupt      uint64 `json:"corrupt"` // corrupt regions found (recovery, ScanLive, Read)
	Deleted      uint64 `json:"deleted"` // segments deleted
	LastRecovery Report `json:"last_recovery"`
}

// segment is one segment file plus its liveness.
type segment struct {
	id uint32

	fmu sync.RWMutex // guards f against close during ReadAt
	f   *os.File     // nil until the flusher creates the file, and after deletion

	// Guarded by Journal.mu.
	end      int64    // logical end: bytes encoded for this segment
	nextOrd  uint32   // ordinals assigned
	written  int64    // bytes written to the OS
	count    uint32   // ordinals written (messages + lost)
	live     int64    // written messages not marked dead
	msgBytes int64    // bytes of written message frames
	dead     []uint64 // bit per ordinal
}

func (s *segment) isDead(ord uint32) bool {
	w := int(ord >> 6)
	return w < len(s.dead) && s.dead[w]&(1<<(ord&63)) != 0
}

// kill marks ord dead; it reports whether it was live.
func (s *segment) kill(ord uint32) bool {
	if ord >= s.count || s.isDead(ord) {
		return false
	}
	w := int(ord >> 6)
	for w >= len(s.dead) {
		s.dead = append(s.dead, 0)
	}
	s.dead[w] |= 1 << (ord & 63)
	s.live--
	return true
}

// liveBytes estimates the live bytes as the average message frame size
// times the live count (per-ordinal sizes are not kept, to keep liveness at
// one bit per message).
func (s *segment) liveBytes() int64 {
	if s.count == 0 || s.live <= 0 {
		return 0
	}
	return int64(float64(s.msgBytes) * float64(s.live) / float64(s.count))
}

// segTable is an immutable snapshot of the segment list, replaced
// copy-on-write under Journal.mu and read lock-free by Read.
type segTable struct {
	base uint32 // id of segs[0]
	segs []*segment
}

func (t *segTable) get(id uint32) *segment {
	if t == nil || id < t.base || int(id-t.base) >= len(t.segs) {
		return nil
	}
	return t.segs[id-t.base]
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

	kick    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	closeMu sync.Mutex

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
	syncMu     sync.Mutex
	lastErrLog time.Time

	// writeAt is the file write used by the flusher; tests inject errors.
	writeAt func(f *os.File, b []byte, off int64) (int, error)

	stats struct {
		appends, doneRecs, groups, fsyncs, writeErrs, corrupt, deleted atomic.Uint64
	}
	lastReport Report

	topics   atomic.Pointer[map[string]string] // interned topics, copy-on-write
	internMu sync.Mutex
	closeErr error // final flush/fsync error, set by the flusher before it stops
}

const (
	segSuffix       = ".seg"
	maxSegmentBytes = 1 << 31
)

func (j *Journal) segPath(id uint32) string {
	return filepath.Join(j.opts.Dir, fmt.Sprintf("%08d%s", id, segSuffix))
}

// Open creates Dir if needed, takes an exclusive flock on Dir/LOCK so that
// two processes cannot share it, and checks that Dir is writable. It does
// not read segments: call Recover next. Cost: a few syscalls.
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
	if err := probeWritable(opts.Dir); err != nil {
		lf.Close()
		return nil, fmt.Errorf("journal: dir %s not writable: %w", opts.Dir, err)
	}
	j := &Journal{
		opts:    opts,
		logf:    opts.Logf,
		lock:    lf,
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
		writeAt: func(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) },
	}
	if j.logf == nil {
		j.logf = log.Printf
	}
	j.cond = sync.NewCond(&j.mu)
	j.table.Store(&segTable{})
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

// listSegments returns the segment ids in Dir, ascending.
func listSegments(dir string) ([]uint32, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, segSuffix) || e.IsDir() {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimSuffix(name, segSuffix), 10, 32)
		if err != nil || id == 0 {
			continue
		}
		ids = append(ids, uint32(id))
	}
	sort.Slice(ids, func(a, b int) bool { return ids[a] < ids[b] })
	return ids, nil
}

// newGroupLocked installs a fresh current group starting at the writer's
// position. j.mu held.
func (j *Journal) newGroupLocked() {
	buf := j.spare
	j.spare = nil
	if cap(buf) < j.opts.GroupBytes {
		buf = make([]byte, 0, j.opts.GroupBytes)
	}
	j.cur = &group{buf: buf[:0], done: make(chan struct{})}
}

// placeLocked makes room for an n-byte frame in the current group, rolling
// the segment over if needed, and returns the group and its range for the
// frame. It does not wait. j.mu held.
func (j *Journal) placeLocked(n int) (*group, *rng) {
	s := j.active
	if s.end > 0 && s.end+int64(n) > j.opts.SegmentBytes {
		ns := &segment{id: s.id + 1}
		t := j.table.Load()
		nt := &segTable{base: t.base, segs: append(t.segs[:len(t.segs):len(t.segs)], ns)}
		if len(t.segs) == 0 {
			nt.base = ns.id
		}
		j.table.Store(nt)
		j.active = ns
		s = ns
	}
	g := j.cur
	if k := len(g.ranges); k == 0 || g.ranges[k-1].seg != s {
		g.ranges = append(g.ranges, rng{seg: s, start: len(g.buf), end: len(g.buf), off: s.end, ord0: s.nextOrd})
	}
	return g, &g.ranges[len(g.ranges)-1]
}

// roomLocked waits until the current group can take n more bytes (an
// empty group takes any size), then places the frame. j.mu held; it may be
// released while waiting.
func (j *Journal) roomLocked(n int) (*group, *rng, error) {
	for {
		if j.closing {
			return nil, nil, ErrClosed
		}
		if !j.recovered {
			return nil, nil, ErrNotRecovered
		}
		if len(j.cur.buf) == 0 || len(j.cur.buf)+n <= j.opts.GroupBytes {
			break
		}
		j.kickFlusher()
		j.cond.Wait()
	}
	g, r := j.placeLocked(n)
	return g, r, nil
}

func (j *Journal) kickFlusher() {
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// Append journals msgs, group-committing them with other callers' records
// into one write(2) per segment (and one fsync per group in FsyncAlways
// mode). It returns once they are written to the OS (FsyncAlways: on disk).
// pos[i] receives msgs[i]'s position; len(pos) must be >= len(msgs).
// Safe for concurrent use; the caller keeps ownership of msgs (they are
// copied). Cost: O(1) bookkeeping per message under j.mu, one memcpy and
// CRC per message outside it, plus waiting for the group. On a write error
// (e.g. ENOSPC) the partial write is truncated away and the error
// returned; both the failing group and the group being filled behind it
// fail, and the journal stays usable. msgs too big for one group are
// spread over several; if some of those were written and another failed,
// the written ones are marked Cancelled, so a failed Append leaves none of
// msgs live (pos is meaningless then). If Append returns ErrClosed (the
// journal closing while it waits for room or its groups), a prefix of msgs
// may already be journaled (their pos entries are set): at-least-once,
// never silent loss.
func (j *Journal) Append(msgs []Message, pos []Pos) error {
	if len(pos) < len(msgs) {
		return errors.New("journal: Append: len(pos) < len(msgs)")
	}
	for i := range msgs {
		if msgFrameLen(&msgs[i], false) > MaxRecordBytes {
			return ErrTooLarge
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	var (
		groups [4]*group
		chunks [4]chunk
	)
	gs, cs := groups[:0], chunks[:0]
	// Reserve room for as many frames as the current group takes without
	// waiting, then encode them (copy, CRC) with j.mu released, so
	// concurrent appenders encode in parallel; repeat for the rest. The
	// flusher writes a group only when its writers are done. A chunk never
	// waits for room while it holds a reservation (the flusher would wait
	// for it in turn).
	for i := 0; i < len(msgs); {
		j.mu.Lock()
		n := msgFrameLen(&msgs[i], false)
		g, r, err := j.roomLocked(n)
		if err != nil {
			j.mu.Unlock()
			j.waitGroups(gs) // earlier messages may be in flight; let them land
			return err
		}
		first, off := i, j.reserveLocked(g, n)
		for {
			s := r.seg
			pos[i] = Pos{Seg: s.id, Ord: s.nextOrd, Off: uint32(s.end), Len: uint32(n)}
			r.end = len(g.buf)
			r.nmsg++
			r.msgBytes += int64(n)
			s.end += int64(n)
			s.nextOrd++
			i++
			if i == len(msgs) {
				break
			}
			n = msgFrameLen(&msgs[i], false)
			if len(g.buf)+n > j.opts.GroupBytes {
				break
			}
			g, r = j.placeLocked(n) // same group; maybe a new segment
			j.reserveLocked(g, n)
		}
		g.writers.Add(1)
		buf := g.buf[off:len(g.buf)]
		j.mu.Unlock()

		for k := first; k < i; k++ {
			l := int(pos[k].Len)
			if f := appendMsgFrame(buf[:0:l], pos[k].Ord, nil, &msgs[k]); len(f) != l {
				panic("journal: frame size changed while encoding")
			}
			buf = buf[l:]
		}
		g.writers.Done()
		if len(gs) == 0 || gs[len(gs)-1] != g {
			gs = append(gs, g)
		}
		cs = append(cs, chunk{first, i, g})
	}
	j.kickFlusher()
	err := j.waitGroups(gs)
	if err != nil && len(cs) > 1 && !errors.Is(err, ErrClosed) {
		j.cancelWritten(cs, pos)
	}
	return err
}

// chunk is msgs[first:end] of one Append, encoded into group g.
type chunk struct {
	first, end int
	g          *group
}

// cancelWritten marks Cancelled the messages of cs whose groups were
// written, after another group of the same Append failed: the caller is
// told the Append failed, so none of it may stay live (pinning its segment
// and coming back after a restart).
func (j *Journal) cancelWritten(cs []chunk, pos []Pos) {
	var keys []Key
	for _, c := range cs {
		if c.g.err == nil {
			for _, p := range pos[c.first:c.end] {
				keys = append(keys, p.Key())
			}
		}
	}
	if len(keys) == 0 {
		return
	}
	if err := j.Done(Cancelled, keys); err != nil {
		j.logf("journal: cancelling %d messages written by an Append that failed: %v (they may be delivered after a restart)", len(keys), err)
	}
}

// reserveLocked extends g.buf by n bytes for a frame that its appender
// fills after releasing j.mu, and returns the frame's offset in g.buf. The
// buffer never moves while frames in it are being filled: every group is
// created with room for GroupBytes, roomLocked keeps a non-empty group
// within that, and only an empty group (no writers) is given a larger
// buffer. j.mu held.
func (j *Journal) reserveLocked(g *group, n int) int {
	off := len(g.buf)
	if off+n > cap(g.buf) {
		if off > 0 {
			panic("journal: group buffer full under writers")
		}
		g.buf = make([]byte, 0, max(n, j.opts.GroupBytes))
	}
	g.buf = g.buf[:off+n]
	return off
}

func (j *Journal) waitGroups(gs []*group) error {
	var first error
	for _, g := range gs {
		<-g.done
		if g.err != nil && first == nil {
			first = g.err
		}
	}
	return first
}

// AppendMoved rewrites m at the log head in one Moved record that also
// marks old dead (compaction). It returns once written, like Append; old is
// marked dead in memory only after the write succeeded. It returns
// ErrNotLive if old is not live (the caller must not Done old concurrently).
func (j *Journal) AppendMoved(old Key, m *Message) (Pos, error) {
	n := msgFrameLen(m, true)
	if n > MaxRecordBytes {
		return Pos{}, ErrTooLarge
	}
	j.mu.Lock()
	if olds := j.table.Load().get(old.Seg); olds == nil || old.Ord >= olds.count || olds.isDead(old.Ord) {
		j.mu.Unlock()
		return Pos{}, ErrNotLive
	}
	g, r, err := j.roomLocked(n)
	if err != nil {
		j.mu.Unlock()
		return Pos{}, err
	}
	s := r.seg
	p := Pos{Seg: s.id, Ord: s.nextOrd, Off: uint32(s.end), Len: uint32(n)}
	g.buf = appendMsgFrame(g.buf, s.nextOrd, &old, m)
	r.end = len(g.buf)
	r.nmsg++
	r.msgBytes += int64(n)
	s.end += int64(n)
	s.nextOrd++
	g.moved = append(g.moved, old)
	j.mu.Unlock()
	j.kickFlusher()
	<-g.done
	if g.err != nil {
		return Pos{}, g.err
	}
	return p, nil
}

// Done marks keys finished (in memory at once) and queues one Done record
// listing them, which goes out with the next group; it does not wait for
// the write, so a crash just after Done may redeliver (at-least-once).
// DoneWait waits for it (what a cancel acknowledged to a client needs).
// Idempotent per key: keys already dead, unknown, or in deleted segments
// are ignored. Safe for concurrent use. Cost: O(len(keys)) under j.mu; it
// waits only if the current group is full.
func (j *Journal) Done(kind DoneKind, keys []Key) error {
	_, err := j.done(kind, keys)
	return err
}

// DoneWait is Done, but it returns only once the Done records it queued are
// written to the OS (fsynced too in FsyncAlways mode), as Append does: a nil
// return means the marks of the keys it marked survive kill -9. Keys that
// were already dead are skipped as by Done, and DoneWait does not wait for
// another caller's record of them. A write error of their group is returned
// (the marks stay applied in memory and are re-queued into the next group,
// which a Close under way does not write).
func (j *Journal) DoneWait(kind DoneKind, keys []Key) error {
	gs, err := j.done(kind, keys)
	if werr := j.waitGroups(gs); err == nil {
		err = werr
	}
	return err
}

// done implements Done and returns the groups its records went into.
func (j *Journal) done(kind DoneKind, keys []Key) (gs []*group, _ error) {
	if kind != Published && kind != Cancelled {
		return nil, fmt.Errorf("journal: bad DoneKind %d", kind)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closing {
		return nil, ErrClosed
	}
	if !j.recovered {
		return nil, ErrNotRecovered
	}
	t := j.table.Load()
	var batch []Key
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		n := headerLen + 2 + 8*len(batch)
		g, r, err := j.roomLocked(n)
		if err != nil {
			return err
		}
		st := len(g.buf)
		g.buf = appendDoneFrame(g.buf, kind, batch)
		r.end = len(g.buf)
		r.ndone++
		r.seg.end += int64(n)
		g.dones = append(g.dones, [2]int{st, len(g.buf)})
		if len(gs) == 0 || gs[len(gs)-1] != g {
			gs = append(gs, g)
		}
		batch = batch[:0]
		return nil
	}
	for i, k := range keys {
		s := t.get(k.Seg)
		if s == nil || !s.kill(k.Ord) {
			continue
		}
		if batch == nil {
			batch = make([]Key, 0, min(len(keys)-i, maxDoneKeys))
		}
		batch = append(batch, k)
		if len(batch) == maxDoneKeys {
			if err := flush(); err != nil {
				j.kickFlusher()
				return gs, err
			}
			t = j.table.Load()
		}
	}
	err := flush()
	j.kickFlusher()
	return gs, err
}

// Read reads the record at p with one pread (page cache) into buf, grown if
// short, and decodes it. The returned Message's Body aliases the returned
// buffer; ID and Topic are ordinary strings. Safe for concurrent use,
// including with Append and segment deletion (a deleted segment gives
// ErrNotFound). Cost: one pread, one CRC, two small allocations.
func (j *Journal) Read(p Pos, buf []byte) (Message, []byte, error) {
	s := j.table.Load().get(p.Seg)
	if s == nil {
		return Message{}, buf, ErrNotFound
	}
	if p.Len < minMsgFrame || p.Len > MaxRecordBytes {
		return Message{}, buf, ErrBadPos
	}
	if cap(buf) < int(p.Len) {
		buf = make([]byte, p.Len)
	}
	buf = buf[:p.Len]
	s.fmu.RLock()
	if s.f == nil {
		s.fmu.RUnlock()
		if j.closed.Load() {
			return Message{}, buf, ErrClosed
		}
		return Message{}, buf, ErrNotFound
	}
	_, err := s.f.ReadAt(buf, int64(p.Off))
	s.fmu.RUnlock()
	if err != nil {
		return Message{}, buf, fmt.Errorf("journal: read segment %d at %d: %w", p.Seg, p.Off, err)
	}
	m, err := j.decodeAt(p, buf)
	return m, buf, err
}

// decodeAt decodes the message record of p from b, which holds exactly its
// frame. Body aliases b.
func (j *Journal) decodeAt(p Pos, b []byte) (Message, error) {
	typ, payload, n, err := decodeFrame(b)
	if err != nil || n != int(p.Len) || typ == recDone {
		if err == nil {
			err = ErrBadPos
		}
		j.stats.corrupt.Add(1)
		return Message{}, fmt.Errorf("journal: record at segment %d offset %d: %w", p.Seg, p.Off, err)
	}
	var r rawMsg
	if err := decodeMsg(typ, payload, &r); err != nil || r.ord != p.Ord {
		if err == nil {
			err = ErrBadPos
		}
		return Message{}, fmt.Errorf("journal: record at segment %d offset %d: %w", p.Seg, p.Off, err)
	}
	m := Message{Topic: j.intern(r.topic), Due: r.due, Body: r.body}
	if len(r.id) > 0 {
		m.ID = string(r.id)
	}
	return m, nil
}

// BatchReader holds ReadBatch's reusable memory. The zero value is ready to
// use; one BatchReader must not be used by two goroutines at once.
type BatchReader struct {
	idx []int32
	buf []byte
}

// Coalescing limits of ReadBatch: records of one segment closer than
// batchGap are read with one pread of at most batchSpan bytes.
const (
	batchGap  = 64 << 10
	batchSpan = 1 << 20
)

// ReadBatch reads the records at ps and calls fn once for each index i of
// ps, with its message or its error, in journal order (not the order of
// ps). Records of one segment that lie close together, as a due bucket's
// messages usually do, are read with one pread: a few syscalls for a
// thousand messages where Read would make a thousand. m.Body is valid only
// during fn. Safe for concurrent use with other calls, as Read.
func (j *Journal) ReadBatch(r *BatchReader, ps []Pos, fn func(i int, m Message, err error)) {
	r.idx = r.idx[:0]
	for i := range ps {
		r.idx = append(r.idx, int32(i))
	}
	slices.SortFunc(r.idx, func(a, b int32) int {
		pa, pb := &ps[a], &ps[b]
		if pa.Seg != pb.Seg {
			return cmp.Compare(pa.Seg, pb.Seg)
		}
		return cmp.Compare(pa.Off, pb.Off)
	})
	t := j.table.Load()
	for k := 0; k < len(r.idx); {
		first := ps[r.idx[k]]
		from, to := int64(first.Off), int64(first.Off)+int64(first.Len)
		e := k + 1
		for ; e < len(r.idx); e++ {
			p := ps[r.idx[e]]
			end := int64(p.Off) + int64(p.Len)
			if p.Seg != first.Seg || int64(p.Off) < to || int64(p.Off)-to > batchGap || end-from > batchSpan {
				break
			}
			to = end
		}
		run := r.idx[k:e]
		k = e
		err := j.readSpan(t, first.Seg, from, to, r)
		for _, i := range run {
			p := ps[i]
			if err != nil {
				fn(int(i), Message{}, err)
				continue
			}
			if p.Len < minMsgFrame || p.Len > MaxRecordBytes {
				fn(int(i), Message{}, ErrBadPos)
				continue
			}
			off := int64(p.Off) - from
			m, derr := j.decodeAt(p, r.buf[off:off+int64(p.Len)])
			fn(int(i), m, derr)
		}
	}
}

// readSpan preads bytes [from, to) of segment seg into r.buf.
func (j *Journal) readSpan(t *segTable, seg uint32, from, to int64, r *BatchReader) error {
	s := t.get(seg)
	if s == nil {
		return ErrNotFound
	}
	n := int(to - from)
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	r.buf = r.buf[:n]
	s.fmu.RLock()
	defer s.fmu.RUnlock()
	if s.f == nil {
		if j.closed.Load() {
			return ErrClosed
		}
		return ErrNotFound
	}
	if _, err := s.f.ReadAt(r.buf, from); err != nil {
		return fmt.Errorf("journal: read segment %d at %d: %w", seg, from, err)
	}
	return nil
}

// maxInterned bounds the topic intern table.
const maxInterned = 1024

// intern returns b as a string, shared for the first maxInterned distinct
// topics seen (lock-free read of a copy-on-write map; no allocation on a hit).
func (j *Journal) intern(b []byte) string {
	if t := j.topics.Load(); t != nil {
		if s, ok := (*t)[string(b)]; ok {
			return s
		}
	}
	s := string(b)
	j.internMu.Lock()
	defer j.internMu.Unlock()
	old := j.topics.Load()
	if old != nil {
		if v, ok := (*old)[s]; ok {
			return v
		}
		if len(*old) >= maxInterned {
			return s
		}
	}
	nm := make(map[string]string, 1)
	if old != nil {
		for k, v := range *old {
			nm[k] = v
		}
	}
	nm[s] = s
	j.topics.Store(&nm)
	return s
}

// Compactable returns a sealed segment worth compacting: the oldest sealed
// segment with live messages, provided total segment bytes exceed twice the
// (estimated) live bytes plus one segment of slack. ok is false when none.
// Cost: O(segments) under j.mu.
func (j *Journal) Compactable() (seg uint32, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.active == nil {
		return 0, false
	}
	var total, live int64
	var cand *segment
	for _, s := range j.table.Load().segs {
		if s == nil {
			continue
		}
		total += s.end
		live += s.liveBytes()
		if cand == nil && s != j.active && s.live > 0 {
			cand = s
		}
	}
	if cand == nil || total <= 2*live+j.opts.SegmentBytes {
		return 0, false
	}
	return cand.id, true
}

// ScanLive calls fn for each still-live message of sealed segment seg, in
// order. fn's Message is valid only during the call (Body aliases a scan
// buffer); fn may call AppendMoved and Done. Corrupt regions are skipped
// and reported (Logf, Stats.Corrupt). Cost: reads the whole segment.
func (j *Journal) ScanLive(seg uint32, fn func(p Pos, m *Message) error) error {
	j.mu.Lock()
	s := j.table.Load().get(seg)
	if s == nil {
		j.mu.Unlock()
		return ErrNotFound
	}
	if s == j.active {
		j.mu.Unlock()
		return fmt.Errorf("journal: segment %d is active, not sealed", seg)
	}
	size := s.written
	j.mu.Unlock()
	data := make([]byte, size)
	s.fmu.RLock()
	if s.f == nil {
		s.fmu.RUnlock()
		return ErrNotFound
	}
	_, err := s.f.ReadAt(data, 0)
	s.fmu.RUnlock()
	if err != nil {
		return fmt.Errorf("journal: scan segment %d: %w", seg, err)
	}
	var r rawMsg
	var m Message
	res := scanSegment(data, false, func(off, n int, typ byte, payload []byte) error {
		if typ == recDone {
			return nil
		}
		if err := decodeMsg(typ, payload, &r); err != nil {
			return err
		}
		j.mu.Lock()
		dead := s.isDead(r.ord) || r.ord >= s.count
		j.mu.Unlock()
		if dead {
			return nil
		}
		m = Message{ID: string(r.id), Topic: string(r.topic), Due: r.due, Body: r.body}
		return fn(Pos{Seg: seg, Ord: r.ord, Off: uint32(off), Len: uint32(n)}, &m)
	}, func(line string) {
		j.stats.corrupt.Add(1)
		j.logf("journal: CORRUPT (scan) segment %08d: %s", seg, line)
	})
	return res.err
}

// Stats returns a snapshot of the counters. Safe for concurrent use; cost
// O(segments) under j.mu.
func (j *Journal) Stats() Stats {
	var st Stats
	j.mu.Lock()
	for _, s := range j.table.Load().segs {
		if s == nil {
			continue
		}
		st.Segments++
		st.DiskBytes += s.written
		st.Live += s.live
		st.LiveBytes += s.liveBytes()
	}
	st.LastRecovery = j.lastReport
	j.mu.Unlock()
	st.Appends = j.stats.appends.Load()
	st.DoneRecords = j.stats.doneRecs.Load()
	st.Groups = j.stats.groups.Load()
	st.Fsyncs = j.stats.fsyncs.Load()
	st.WriteErrors = j.stats.writeErrs.Load()
	st.Corrupt = j.stats.corrupt.Load()
	st.Deleted = j.stats.deleted.Load()
	return st
}

// Close flushes pending records, fsyncs, closes the files and releases the
// LOCK. Idempotent and safe for concurrent use; Append, AppendMoved and
// Done after Close return ErrClosed, Read returns ErrClosed.
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
