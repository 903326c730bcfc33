package journal

import (
	"fmt"
	"time"
)

// Done marks keys finished (in memory at once) and queues one Done record
// listing them, which goes out with the next group, at the latest
// markDelay later; it does not wait for the write, so a crash within about
// markDelay after Done may redeliver (at-least-once).
// DoneWait waits for it (what a cancel acknowledged to a client needs).
// Idempotent per key: keys already dead, unknown, or in deleted segments
// are ignored. Safe for concurrent use. Cost: O(len(keys)) under j.mu; it
// waits only if the current group is full.
//
// While the journal is not Writable, Done queues no record and never
// waits: it keeps the marks in memory (up to MaxHeldMarks, then they are
// dropped and counted) and returns nil; they are written once a write
// succeeds again. A restart before that delivers their messages again.
func (j *Journal) Done(kind DoneKind, keys []Key) error {
	_, err := j.done(kind, keys, true)
	return err
}

// DoneWait is Done, but it returns only once the Done records it queued are
// written to the OS (fsynced too in FsyncAlways mode), as Append does: a nil
// return means the marks of the keys it marked survive kill -9. Keys that
// were already dead are skipped as by Done, and DoneWait does not wait for
// another caller's record of them. A write error of their group is returned
// (the marks stay applied in memory and are held to be written when a
// write succeeds again, as Done's while the journal is not Writable; a
// Close under way tries them once more). While the journal is not
// Writable DoneWait still queues its records and tries, as Append does.
func (j *Journal) DoneWait(kind DoneKind, keys []Key) error {
	gs, err := j.done(kind, keys, false)
	if werr := j.waitGroups(gs); err == nil {
		err = werr
	}
	return err
}

// done implements Done and returns the groups its records went into. With
// hold, while the journal is read-only, the marks are held in memory
// instead (no group).
func (j *Journal) done(kind DoneKind, keys []Key, hold bool) (gs []*group, _ error) {
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
	if hold && j.ro.cause != nil {
		for _, k := range keys {
			if s := t.get(k.Seg); s != nil && s.kill(k.Ord) {
				j.holdLocked(kind, k)
			}
		}
		return nil, nil
	}
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
		g.buf = appendDoneFrame(g.buf, r.seg.seed, kind, batch)
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
	switch {
	case err != nil || !hold:
		j.kickFlusher()
	case len(gs) > 0 && !j.marksArmed:
		// Not a kick per call: the records ride the next append's group,
		// or the timer's, so one write carries many tasks' marks.
		j.marksArmed = true
		j.marks.Reset(markDelay)
	}
	return gs, err
}

// markDelay bounds how long Done's records wait for a group write that
// an Append would make anyway. At 1,000 publish tasks a second, one write
// per markDelay instead of one per task.
const markDelay = 5 * time.Millisecond
