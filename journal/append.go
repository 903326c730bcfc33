package journal

import (
	"errors"
)

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
	if s.end > s.start && s.end+int64(n) > j.opts.SegmentBytes {
		ns := newSegment(s.id + 1)
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
		g, end, err := j.appendChunk(msgs, pos, i)
		if err != nil {
			j.waitGroups(gs) // earlier messages may be in flight; let them land
			return err
		}
		if len(gs) == 0 || gs[len(gs)-1] != g {
			gs = append(gs, g)
		}
		cs = append(cs, chunk{i, end, g})
		i = end
	}
	j.kickFlusher()
	err := j.waitGroups(gs)
	if err != nil && len(cs) > 1 && !errors.Is(err, ErrClosed) {
		j.cancelWritten(cs, pos)
	}
	return err
}

// appendChunk places msgs[i:] into the current group, as many as it takes
// (at least one, waiting for room for it), encodes them there with j.mu
// released, and returns the group and the index past the last one placed.
// It sets pos for those messages.
func (j *Journal) appendChunk(msgs []Message, pos []Pos, i int) (*group, int, error) {
	j.mu.Lock()
	n := msgFrameLen(&msgs[i], false)
	g, r, err := j.roomLocked(n)
	if err != nil {
		j.mu.Unlock()
		return nil, i, err
	}
	first, off := i, j.reserveLocked(g, n)
	// The seeds of the segments the chunk's frames go to, by the index of
	// the first frame of each (placeLocked may roll over in between).
	var runsBuf [4]seedRun
	runs := append(runsBuf[:0], seedRun{i, r.seg.seed})
	for {
		s := r.seg
		if s.seed != runs[len(runs)-1].seed {
			runs = append(runs, seedRun{i, s.seed})
		}
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
		for len(runs) > 1 && runs[1].from <= k {
			runs = runs[1:]
		}
		l := int(pos[k].Len)
		if f := appendMsgFrame(buf[:0:l], runs[0].seed, pos[k].Ord, nil, &msgs[k]); len(f) != l {
			panic("journal: frame size changed while encoding")
		}
		buf = buf[l:]
	}
	g.writers.Done()
	return g, i, nil
}

// seedRun says that the frames of a chunk from index from on go to a
// segment whose CRC seed is seed.
type seedRun struct {
	from int
	seed uint32
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
// Safe for concurrent use otherwise. Cost: as Append for one message.
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
	g.buf = appendMsgFrame(g.buf, s.seed, s.nextOrd, &old, m)
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
