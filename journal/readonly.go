package journal

import (
	"errors"
	"os"
	"sync/atomic"
	"syscall"
	"time"
)

// MaxHeldMarks bounds the published and cancelled marks a journal that
// cannot write keeps in memory to write later: 4Mi keys, 32 MiB of heap.
// Past it a mark still applies in memory (this process does not deliver
// or recover the message again) but is not kept for writing: after a
// restart its message is delivered again, as for every mark still held
// when the process ends. Stats.HeldMarksDropped counts them.
const MaxHeldMarks = 4 << 20

// roState is the journal's read-only state: entered when a group write
// fails (ENOSPC, EDQUOT or any other write error) or Open finds the disk
// full; left when the flusher's probe succeeds. Fields without their own
// synchronisation are guarded by Journal.mu.
type roState struct {
	cause   error                // why writing failed; nil while writable
	since   time.Time            // when it began
	held    [Cancelled + 1][]Key // by DoneKind: marks applied in memory, not yet written
	nheld   int                  // in held
	queued  int                  // taken from held into groups not yet written (or failed)
	maxHeld int                  // 0: MaxHeldMarks (tests lower it)
	epHeld  int                  // marks held this episode, for its log lines
	epDrop  int                  // of them, not kept
	warned  bool                 // the MaxHeldMarks line was logged this episode
	on      atomic.Bool          // cause != nil, for lock-free readers
	dropped atomic.Uint64        // marks not kept past MaxHeldMarks
}

// Writable reports whether the journal can write. It is false from the
// moment a group write fails (Append then returns the error; the disk
// is full, usually) or Open found the disk full, until the flusher's
// probe, run every ProbeInterval meanwhile, succeeds. The probe deletes
// the oldest segments whose messages are all finished (which is what
// frees space while pending messages are delivered), writes the held
// marks (as soon as they fit), then allocates a probe file of up to 1 MiB
// (so a disk with a few pages free does not flip the state at every
// request): a success makes the journal writable again. While it is not, every
// Append and DoneWait still tries to write (one that fits succeeds, and
// the state stays), while Done keeps its marks in memory (up to
// MaxHeldMarks) instead of queueing records. One line is logged on
// entering, one on leaving. Safe for concurrent use; O(1).
func (j *Journal) Writable() bool { return !j.ro.on.Load() }

// isNoSpace reports whether err is the filesystem being full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// enterReadOnlyLocked makes the journal read-only because of err, logging
// it once per episode. j.mu held (or j not yet shared).
func (j *Journal) enterReadOnlyLocked(err error) {
	if j.ro.cause != nil {
		return
	}
	j.ro.cause, j.ro.since, j.ro.warned = err, time.Now(), false
	j.ro.epHeld, j.ro.epDrop = 0, 0
	j.ro.on.Store(true)
	j.logf("journal: NOT WRITABLE: %v; new messages are refused, pending ones are still delivered, "+
		"their published marks are kept in memory (up to %d) and written when space returns; trying again every %v",
		err, MaxHeldMarks, j.opts.ProbeInterval)
}

// leaveReadOnlyLocked makes the journal writable again, logging it. j.mu
// held.
func (j *Journal) leaveReadOnlyLocked() {
	if j.ro.cause == nil {
		return
	}
	j.logf("journal: writable again after %v read-only; %d published/cancelled marks were held in memory meanwhile and are written now (%d not kept: their messages will be delivered again after a restart)",
		time.Since(j.ro.since).Round(time.Millisecond), j.ro.epHeld-j.ro.epDrop, j.ro.epDrop)
	j.ro.cause = nil
	j.ro.on.Store(false)
}

// holdLocked keeps key's mark in memory, to be written once the journal
// can write, unless MaxHeldMarks are held already. j.mu held.
func (j *Journal) holdLocked(kind DoneKind, k Key) {
	limit := j.ro.maxHeld
	if limit == 0 {
		limit = MaxHeldMarks
	}
	j.ro.epHeld++
	if j.ro.nheld >= limit {
		j.ro.epDrop++
		j.ro.dropped.Add(1)
		if !j.ro.warned {
			j.ro.warned = true
			j.logf("journal: %d marks held in memory, the bound: further published/cancelled marks are not kept; "+
				"their messages will be delivered again after a restart", limit)
		}
		return
	}
	j.ro.held[kind] = append(j.ro.held[kind], k)
	j.ro.nheld++
}

// holdFramesLocked keeps the marks of g's Done frames (g failed) in
// memory. j.mu held.
func (j *Journal) holdFramesLocked(g *group) {
	for _, d := range g.dones {
		frame := g.buf[d[0]:d[1]]
		kind, keys := DoneKind(frame[headerLen+1]), frame[headerLen+2:]
		for i := 0; i < len(keys)/8; i++ {
			j.holdLocked(kind, doneKey(keys, i))
		}
	}
	g.dones = nil
	j.ro.queued -= g.held
	g.held = 0
}

// queueHeldLocked moves held marks into Done frames of the current group,
// as many as it takes without growing past GroupBytes (it never waits, so
// the flusher may call it), skipping keys whose segment is gone, and
// returns how many it queued. j.mu held.
func (j *Journal) queueHeldLocked() int {
	perFrame := min(maxDoneKeys, max((j.opts.GroupBytes-headerLen-2)/8, 1))
	queued := 0
	for kind := Published; kind <= Cancelled; kind++ {
		held := j.ro.held[kind]
		for len(held) > 0 {
			t := j.table.Load()
			g := j.cur
			room := min(j.opts.GroupBytes, cap(g.buf)) - len(g.buf) - headerLen - 2
			n := min(len(held), perFrame, room/8)
			if n <= 0 {
				break
			}
			keys := held[:0:0]
			for _, k := range held[:n] {
				if t.get(k.Seg) != nil {
					keys = append(keys, k)
				}
			}
			held = held[n:]
			j.ro.nheld -= n
			if len(keys) == 0 {
				continue
			}
			size := headerLen + 2 + 8*len(keys)
			g, r := j.placeLocked(size)
			st := len(g.buf)
			g.buf = appendDoneFrame(g.buf, r.seg.seed, kind, keys)
			r.end = len(g.buf)
			r.ndone++
			r.seg.end += int64(size)
			g.dones = append(g.dones, [2]int{st, len(g.buf)})
			g.held += len(keys)
			queued += len(keys)
		}
		if len(held) == 0 {
			held = nil
		}
		j.ro.held[kind] = held
	}
	j.ro.queued += queued
	return queued
}

// afterWriteLocked runs after a group was written: in a writable journal
// marks still held (more than one group takes) are queued for the next
// group; it reports whether it queued any, for the flusher to go on.
// j.mu held.
func (j *Journal) afterWriteLocked() bool {
	return j.ro.cause == nil && j.ro.nheld > 0 && j.queueHeldLocked() > 0
}

// probe is the flusher's periodic try while read-only (see Writable):
// delete segments whose messages are all finished (their marks need not
// be written: they are gone), then write the held marks (one group's
// worth; a failure holds them again and ends the try), then allocate a
// probe file; a success makes the journal writable, and the rest of the
// held marks follow. Flusher only.
func (j *Journal) probe() {
	j.mu.Lock()
	dels := j.collectDeletableLocked()
	j.mu.Unlock()
	j.deleteSegments(dels)
	j.drainPool()
	j.mu.Lock()
	n := j.queueHeldLocked()
	j.mu.Unlock()
	if n > 0 {
		if _, err := j.flush(); err != nil {
			return
		}
	}
	if err := probeSpace(j.opts.Dir, min(j.opts.GroupBytes, 1<<20)); err != nil {
		return
	}
	j.mu.Lock()
	j.leaveReadOnlyLocked()
	more := j.afterWriteLocked()
	j.mu.Unlock()
	if more {
		j.kickFlusher()
	}
}

// probeSpace checks that size bytes can be allocated in dir: it creates a
// file, allocates size bytes (fallocate, or writing them where that is not
// supported) and removes it.
func probeSpace(dir string, size int) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	err = syscall.Fallocate(int(f.Fd()), 0, 0, int64(size))
	if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS) {
		_, err = f.Write(make([]byte, size))
	}
	return err
}

// readOnlyStatsLocked fills st's read-only fields. j.mu held.
func (j *Journal) readOnlyStatsLocked(st *Stats) {
	st.Writable = j.ro.cause == nil
	if !st.Writable {
		since := j.ro.since
		st.ReadOnlySince = &since
	}
	st.HeldMarks = j.ro.nheld + j.ro.queued
	st.HeldMarksDropped = j.ro.dropped.Load()
}
