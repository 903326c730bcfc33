package journal

import (
	"fmt"
	"os"
	"runtime"
	"time"
)

// run is the flusher goroutine: it swaps the current group out, writes it
// (one write(2) per segment touched), fsyncs per mode, updates liveness,
// releases the group's waiters and deletes dead segments oldest-first.
// While the journal is read-only it also runs probe every ProbeInterval
// (its ticker exists only then). It is started by Recover and stopped by
// Close.
func (j *Journal) run() {
	defer close(j.stopped)
	defer j.marks.Stop()
	var probeT *time.Ticker // non-nil while read-only
	defer func() {
		if probeT != nil {
			probeT.Stop()
		}
	}()
	var tick <-chan time.Time
	if j.opts.Fsync == FsyncInterval {
		t := time.NewTicker(j.opts.FsyncInterval)
		defer t.Stop()
		tick = t.C
		// The periodic fsync runs on its own goroutine: a slow fsync (a
		// busy disk can take seconds) must not stop writes, or appenders
		// and Done callers (publish tasks) queue behind it.
		syncerDone := make(chan struct{})
		go j.syncLoop(syncerDone)
		defer func() { <-syncerDone }()
	}
	for {
		// The state changes only on this goroutine (fail, probe, a write)
		// or before it starts (Open), so checking here is enough.
		var probeC <-chan time.Time
		if ro := !j.Writable(); ro && probeT == nil {
			probeT = time.NewTicker(j.opts.ProbeInterval)
		} else if !ro && probeT != nil {
			probeT.Stop()
			probeT = nil
		}
		if probeT != nil {
			probeC = probeT.C
		}
		select {
		case <-j.kick:
			j.flush()
		case <-j.marks.C:
			j.flush()
		case <-tick:
			j.flush()
		case <-probeC:
			j.probe()
		case <-j.stop:
			// Flush what is pending, held marks included (one more try
			// on a full disk); give up after one failed group (its
			// waiters and the group behind it get the error).
			var err error
			for wrote := true; wrote && err == nil; {
				j.mu.Lock()
				j.queueHeldLocked()
				j.mu.Unlock()
				wrote, err = j.flush()
			}
			j.mu.Lock()
			if n := j.ro.nheld; n > 0 || j.ro.dropped.Load() > 0 {
				j.logf("journal: closing with %d published/cancelled marks not written (%d more not kept): "+
					"their messages will be delivered again after a restart", n, j.ro.dropped.Load())
			}
			j.mu.Unlock()
			if j.opts.Fsync == FsyncInterval {
				j.syncOwed()
			}
			j.cutStale(j.wseg)
			if serr := j.syncDirty(); err == nil {
				err = serr
			}
			j.closeErr = err
			return
		}
	}
}

// flush writes the current group, if any; it reports whether it did and
// the group's write error.
func (j *Journal) flush() (bool, error) {
	// The appender that kicked us usually makes us runnable next on its P,
	// ahead of the other appenders; yield once so they can join this group.
	runtime.Gosched()
	j.mu.Lock()
	g := j.cur
	if len(g.buf) == 0 {
		j.mu.Unlock()
		return false, nil
	}
	j.newGroupLocked()
	if j.marksArmed { // g carries the marks the timer was armed for
		j.marksArmed = false
		j.marks.Stop()
	}
	j.cond.Broadcast()
	j.mu.Unlock()
	g.writers.Wait() // appenders still encoding into their reservations

	if err := j.writeGroup(g); err != nil {
		j.fail(g, err)
		// A full disk must not pin dead segments: the oldest segments whose
		// messages are all published, cancelled or moved can go even though
		// the Done records saying so could not be written (nothing in them
		// is recovered any more), and deleting them is what frees space.
		j.mu.Lock()
		dels := j.collectDeletableLocked()
		j.mu.Unlock()
		j.deleteSegments(dels)
		j.drainPool()
		return true, err
	}

	j.mu.Lock()
	var nmsg, ndone uint64
	for i := range g.ranges {
		r := &g.ranges[i]
		s := r.seg
		s.written = r.off + int64(r.end-r.start)
		s.count += r.nmsg
		s.live += int64(r.nmsg)
		s.msgBytes += r.msgBytes
		nmsg += uint64(r.nmsg)
		ndone += r.ndone
	}
	t := j.table.Load()
	for _, k := range g.moved {
		if s := t.get(k.Seg); s != nil {
			s.kill(k.Ord)
		}
	}
	j.ro.queued -= g.held
	more := j.afterWriteLocked() // the rest of the held marks go next
	dels := j.collectDeletableLocked()
	if cap(g.buf) <= 2*j.opts.GroupBytes {
		j.spare = g.buf[:0]
	}
	j.mu.Unlock()
	if more {
		j.kickFlusher()
	}
	j.stats.appends.Add(nmsg)
	j.stats.doneRecs.Add(ndone)
	j.stats.groups.Add(1)
	close(g.done)
	j.deleteSegments(dels)
	return true, nil
}

// writeGroup writes g's ranges and fsyncs per mode. Flusher only.
func (j *Journal) writeGroup(g *group) error {
	for i := range g.ranges {
		r := &g.ranges[i]
		s := r.seg
		if s != j.wseg {
			// Rolling over. A recycled file's previous life past the
			// sealed segment's end is cut first, so that a sealed segment
			// ends at its last record. FsyncAlways: make the sealed
			// segment durable before this group's reply. FsyncInterval:
			// the periodic fsync owes it one; the flusher does not wait
			// for the disk.
			j.cutStale(j.wseg)
			switch j.opts.Fsync {
			case FsyncAlways:
				if err := j.syncDirty(); err != nil {
					return err
				}
			case FsyncInterval:
				if j.wseg != nil && j.dirty {
					j.sealedMu.Lock()
					j.sealed = append(j.sealed, j.wseg)
					j.sealedMu.Unlock()
				}
			}
			j.wseg, j.dirty = s, false
		}
		if s.f == nil {
			if err := j.createSegment(s); err != nil {
				return err
			}
		}
		if r.end > r.start {
			j.dirty = true
			if _, err := j.writeAt(s.f, g.buf[r.start:r.end], r.off); err != nil {
				return fmt.Errorf("journal: write segment %d at %d: %w", s.id, r.off, err)
			}
			s.fileEnd = r.off + int64(r.end-r.start)
			if j.opts.Fsync == FsyncInterval {
				j.toSync.Store(s)
			}
		}
	}
	if j.opts.Fsync == FsyncAlways {
		return j.syncDirty()
	}
	return nil
}

// createSegment creates segment s's file and writes its header: it reuses
// (renames to s's name and overwrites from the start) a deleted segment's
// file from the pool if there is one, else it creates a new file. The
// header records the reused file's size (prevSize), so that recovery reads
// the previous life's bytes past this life's end as the end of the segment,
// never as records (their CRCs have another seed) nor as corruption. On
// error nothing is left open or named s's. Flusher only.
func (j *Journal) createSegment(s *segment) error {
	path := j.segPath(s.id)
	var f *os.File
	var prev int64
	if n := len(j.pool); n > 0 {
		free := j.pool[n-1]
		j.pool = j.pool[:n-1]
		j.poolFiles.Add(-1)
		if fi, err := os.Stat(free); err == nil {
			j.poolBytes.Add(-fi.Size())
			prev = fi.Size()
		}
		if err := os.Rename(free, path); err != nil {
			j.logf("journal: recycle %s as segment %d: %v", free, s.id, err)
			os.Remove(free)
		} else if f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
			j.logf("journal: recycle %s as segment %d: %v", free, s.id, err)
			f = nil
		}
	}
	if f == nil || prev <= segHeaderLen || prev > maxSegmentBytes+MaxRecordBytes {
		if f != nil {
			f.Close()
		}
		var err error
		prev = 0
		if f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
			return fmt.Errorf("journal: create segment %d: %w", s.id, err)
		}
	}
	s.hdr.prevSize = uint32(prev)
	if _, err := f.WriteAt(s.hdr.encode(), 0); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("journal: write segment %d header: %w", s.id, err)
	}
	if prev > 0 {
		j.stats.recycled.Add(1)
	}
	s.fileEnd, s.stale = segHeaderLen, prev
	s.fmu.Lock()
	s.f = f
	s.fmu.Unlock()
	if j.opts.Fsync != FsyncNever {
		syncDir(j.opts.Dir)
	}
	return nil
}

// cutStale truncates s's file to the end of what this life wrote if a
// previous life (a recycled file) left bytes past it, and marks s dirty if
// it is the segment last written (the flusher fsyncs it). Errors are
// logged: recovery reads those bytes as the end of the segment anyway.
// Flusher only.
func (j *Journal) cutStale(s *segment) {
	if s == nil || s.f == nil || s.stale <= s.fileEnd {
		return
	}
	if err := s.f.Truncate(s.fileEnd); err != nil {
		j.logf("journal: segment %d: cut the recycled file's previous life at %d: %v", s.id, s.fileEnd, err)
		return
	}
	s.stale = 0
	if s == j.wseg {
		j.dirty = true
	}
}

// recycleMax is how many deleted segment files are kept for reuse.
func (j *Journal) recycleMax() int {
	if j.recycle != 0 {
		return max(j.recycle, 0)
	}
	return defaultRecycle
}

// drainPool removes the files kept for reuse (the journal cannot write:
// deleting them frees space). Flusher only.
func (j *Journal) drainPool() {
	for _, free := range j.pool {
		if err := os.Remove(free); err != nil && !os.IsNotExist(err) {
			j.logf("journal: remove %s: %v", free, err)
		}
	}
	j.pool = nil
	j.poolFiles.Store(0)
	j.poolBytes.Store(0)
}

// syncLoop fsyncs, every FsyncInterval, the segment the flusher last wrote
// to (FsyncInterval mode). It stops when the journal stops and closes done.
func (j *Journal) syncLoop(done chan<- struct{}) {
	defer close(done)
	t := time.NewTicker(j.opts.FsyncInterval)
	defer t.Stop()
	for {
		select {
		case <-j.stop:
			return
		case <-t.C:
		}
		j.syncOwed()
	}
}

// syncOwed fsyncs the segments rolled over since the last call, then the
// one last written (FsyncInterval mode). The syncer calls it every
// interval; the flusher before deleting segments and at Close. It returns
// only when every fsync owed at the time of the call is done, including
// those another caller took first (syncMu is held throughout), so the
// flusher never deletes old segments while the records that superseded
// them are not yet on disk.
func (j *Journal) syncOwed() {
	j.syncMu.Lock()
	defer j.syncMu.Unlock()
	j.sealedMu.Lock()
	owed := j.sealed
	j.sealed = nil
	j.sealedMu.Unlock()
	if s := j.toSync.Swap(nil); s != nil {
		owed = append(owed, s)
	}
	for _, s := range owed {
		s.fmu.RLock() // deletion waits; writes and reads do not
		if s.f != nil {
			if err := s.f.Sync(); err != nil {
				j.logf("journal: fsync segment %d: %v", s.id, err)
			} else {
				j.stats.fsyncs.Add(1)
			}
		}
		s.fmu.RUnlock()
	}
}

// syncDirty fsyncs the segment last written if it has unsynced writes.
// Flusher only.
func (j *Journal) syncDirty() error {
	if j.wseg == nil || !j.dirty || j.wseg.f == nil {
		return nil
	}
	if err := j.wseg.f.Sync(); err != nil {
		j.logf("journal: fsync segment %d: %v", j.wseg.id, err)
		return fmt.Errorf("journal: fsync segment %d: %w", j.wseg.id, err)
	}
	j.dirty = false
	j.stats.fsyncs.Add(1)
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// fail handles a failed group write: it makes the journal read-only (see
// Writable; logged once per episode, every failure is counted), truncates
// the partial write away, rewinds the writer to the group's start, fails
// the group being filled behind it (its positions assumed g's bytes),
// holds the marks of the Done records of both in memory, and releases both
// groups' waiters with err. Flusher only.
func (j *Journal) fail(g *group, err error) {
	j.stats.writeErrs.Add(1)
	j.mu.Lock()
	j.enterReadOnlyLocked(err)
	next := j.cur // the group being filled behind g
	r0 := g.ranges[0]
	rs := r0.seg
	t := j.table.Load()
	var drop []*segment
	keep := t.segs
	for i, s := range t.segs {
		if s != nil && s.id > rs.id {
			drop = append(drop, t.segs[i:]...)
			keep = t.segs[:i:i]
			break
		}
	}
	if len(drop) > 0 {
		j.table.Store(&segTable{base: t.base, segs: keep})
	}
	rs.end, rs.nextOrd = r0.off, r0.ord0
	j.active = rs
	if rs.f != nil {
		if terr := rs.f.Truncate(r0.off); terr != nil {
			j.logf("journal: truncate segment %d to %d after write error: %v", rs.id, r0.off, terr)
		} else {
			rs.fileEnd, rs.stale = r0.off, 0
		}
	}
	for _, s := range drop {
		s.fmu.Lock()
		if s.f != nil {
			s.f.Close()
			s.f = nil
			os.Remove(j.segPath(s.id))
		}
		s.fmu.Unlock()
	}
	j.wseg, j.dirty = rs, true

	// Hold the Done records' marks (already applied in memory): they are
	// written once a write succeeds, not retried at every group.
	j.newGroupLocked()
	j.holdFramesLocked(g)
	if next != g {
		j.holdFramesLocked(next)
	}
	j.cond.Broadcast()
	j.mu.Unlock()

	g.err = err
	close(g.done)
	if next != g {
		next.err = err
		close(next.done)
	}
	// Held marks go out after the next successful write (an Append, a
	// DoneWait, the probe or Close); kicking now would spin on a full disk.
}

// collectDeletableLocked removes from the table the oldest segments that are
// sealed, fully written and have no live message, stopping at the first
// that is not (oldest-first: a newer segment may hold the Done marks of an
// older one). j.mu held.
func (j *Journal) collectDeletableLocked() []*segment {
	t := j.table.Load()
	i := 0
	for i < len(t.segs) {
		s := t.segs[i]
		if s != nil && (s == j.active || s.live > 0 || s.written != s.end) {
			break
		}
		i++
	}
	if i == 0 {
		return nil
	}
	var dels []*segment
	for _, s := range t.segs[:i] {
		if s != nil {
			dels = append(dels, s)
		}
	}
	j.table.Store(&segTable{base: t.base + uint32(i), segs: t.segs[i:]})
	return dels
}

// deleteSegments closes dels and unlinks them, or keeps them for reuse
// (renamed to <id>.free; at most recycleMax, none while the journal is not
// Writable: then deleting is what frees space), after making the head
// durable (so Moved records that killed their messages cannot be lost
// while the old copies are gone). A kept file is never read again: it
// becomes a new segment with a new header and salt (createSegment). It
// waits for concurrent Reads of those segments. Flusher only.
func (j *Journal) deleteSegments(dels []*segment) {
	if len(dels) == 0 {
		return
	}
	if j.opts.Fsync == FsyncInterval {
		j.syncOwed() // segments rolled over but not yet fsynced
	}
	if j.opts.Fsync != FsyncNever {
		j.syncDirty()
	}
	for _, s := range dels {
		s.fmu.Lock()
		if s.f != nil {
			s.f.Close()
			s.f = nil
		}
		s.fmu.Unlock()
		if len(j.pool) < j.recycleMax() && j.Writable() {
			free := j.freePath(s.id)
			if err := os.Rename(j.segPath(s.id), free); err == nil {
				j.pool = append(j.pool, free)
				j.poolFiles.Add(1)
				if fi, err := os.Stat(free); err == nil {
					j.poolBytes.Add(fi.Size())
				}
				j.stats.deleted.Add(1)
				continue
			}
		}
		if err := os.Remove(j.segPath(s.id)); err != nil && !os.IsNotExist(err) {
			j.logf("journal: delete segment %d: %v", s.id, err)
			continue
		}
		j.stats.deleted.Add(1)
	}
}
