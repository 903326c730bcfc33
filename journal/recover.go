package journal

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// Recover must be called exactly once, after Open and before any Append,
// AppendMoved or Done. It works in three steps.
//
// Scan: it reads every segment in id order, mmapped read-only (read(2) into
// one buffer reused from segment to segment where mmap fails), verifies
// every CRC, and:
//
//   - truncates a torn tail of the LAST segment to the last good record and
//     fsyncs it (Report.TornTails, TruncatedBytes, Logf);
//   - reports any other bad record loudly (Report.Corrupt, Stats.Corrupt,
//     Logf) and keeps going: records after a corrupt region of a segment
//     are recovered when a valid frame can be found again (they carry their
//     ordinal, so their Keys and the exact number of messages lost in the
//     region are known); if none can be found the rest of that segment is
//     lost (count unknown). Later segments are always scanned. Done marks
//     lost in a corrupt region mean their messages are redelivered;
//   - rebuilds liveness (Accept/Moved minus Done and Moved-away marks).
//
// Replay: it calls fn for each live message in log order, reading again
// only the segments with live messages. fn's Message is valid only during
// the call: Body aliases the segment's bytes (copy it to keep it); ID and
// Topic are ordinary strings (topics are interned). If fn returns an error
// Recover stops and returns it; the journal must then be closed.
//
// Activate: it installs the segments and starts the flusher goroutine,
// unless Close was called meanwhile: then it returns ErrClosed and starts
// nothing.
//
// On any error the segment files it opened are closed again; the Report
// returned describes what was done until then. Cost: two sequential reads
// of the journal (the second only of segments with live messages, with
// CRCs checked again only where the scan found corruption) and no
// per-record allocation besides ID strings. Memory: every segment stays
// mapped until the scan is done and those with live messages until the
// replay is done, so the address space used peaks at the journal's size
// (page cache, not heap); the heap holds one bit per message and, where
// mmap fails, one segment's buffer.
func (j *Journal) Recover(fn func(p Pos, m *Message) error) (Report, error) {
	j.mu.Lock()
	if j.recovered || j.closing {
		j.mu.Unlock()
		return Report{}, errors.New("journal: Recover called twice or after Close")
	}
	j.mu.Unlock()
	start := time.Now()
	rc := &recovery{j: j, t: &segTable{}}
	defer rc.unmap()
	err := rc.scan()
	if err == nil {
		err = rc.replay(fn)
	}
	if err == nil {
		err = rc.activate(start)
	}
	if err != nil {
		j.closeSegs(rc.t)
	}
	return rc.rep, err
}

// recovery is the state of one Recover.
type recovery struct {
	j     *Journal
	rep   Report
	ids   []uint32  // segment ids found, ascending
	t     *segTable // their segments; installed by activate
	maps  [][]byte  // by index in ids: the segment's mapping, nil if not mapped
	clean []bool    // by index in ids: the scan found no corruption
	buf   []byte    // read(2) buffer, reused, where mmap fails
	pool  []string  // recycled files found (*.free), for the flusher
}

// corrupt reports a corrupt region: Report.Corrupt, Stats.Corrupt, Logf.
// It is called once per region (a region's lost messages are in its line).
func (rc *recovery) corrupt(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	rc.rep.Corrupt = append(rc.rep.Corrupt, line)
	rc.j.stats.corrupt.Add(1)
	rc.j.logf("journal: CORRUPT %s", line)
}

// unmap unmaps the segments still mapped.
func (rc *recovery) unmap() {
	for i, d := range rc.maps {
		if d != nil {
			syscall.Munmap(d)
			rc.maps[i] = nil
		}
	}
}

// scan is Recover's first step: it lists the segments (reporting gaps in
// their ids), then opens, reads, verifies and accounts each in id order.
func (rc *recovery) scan() error {
	ids, err := listSegments(rc.j.opts.Dir)
	if err != nil {
		return fmt.Errorf("journal: list segments: %w", err)
	}
	rc.ids = ids
	free, err := listIDs(rc.j.opts.Dir, freeSuffix)
	if err != nil {
		return fmt.Errorf("journal: list recycled segments: %w", err)
	}
	for _, id := range free {
		if path := rc.j.freePath(id); len(rc.pool) < rc.j.recycleMax() {
			rc.pool = append(rc.pool, path)
		} else {
			os.Remove(path)
		}
	}
	if len(ids) > 0 {
		t := rc.t
		t.base = ids[0]
		t.segs = make([]*segment, ids[len(ids)-1]-ids[0]+1)
		prev := ids[0]
		for _, id := range ids {
			if id > prev+1 {
				rc.corrupt("segments %08d..%08d missing (messages lost, count unknown)", prev+1, id-1)
			}
			t.segs[id-t.base] = &segment{id: id}
			prev = id
		}
	}
	rc.maps = make([][]byte, len(ids))
	rc.clean = make([]bool, len(ids))
	for idx := range ids {
		if err := rc.scanOne(idx); err != nil {
			return err
		}
	}
	return nil
}

// scanOne opens segment ids[idx] (read-write if it is the last, whose torn
// tail it may truncate), maps or reads it, reads its header (none: v1) and
// accounts its records.
//
// A v2 header that is damaged makes the segment unreadable (corruption:
// its messages are lost, count unknown), except in the last segment when
// it is short or names another segment: the file was being created or
// recycled when the process stopped, before any record of its own was
// written, so it is a torn tail (truncated to 0; activate replaces it).
func (rc *recovery) scanOne(idx int) error {
	id := rc.ids[idx]
	s := rc.t.get(id)
	last := idx == len(rc.ids)-1
	flag := os.O_RDONLY
	if last {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(rc.j.segPath(id), flag, 0)
	if err != nil {
		return fmt.Errorf("journal: open segment %d: %w", id, err)
	}
	s.f = f
	data, mapped, err := loadSegment(f, rc.buf)
	if err != nil {
		return fmt.Errorf("journal: read segment %d: %w", id, err)
	}
	if mapped {
		rc.maps[idx] = data
	} else {
		rc.buf = data
	}
	rc.rep.Segments++
	rc.rep.Bytes += int64(len(data))
	size := int64(len(data))
	h, herr := parseHeader(data, id)
	switch {
	case herr == nil:
		s.ver, s.hdr, s.seed, s.start = segVersion, h, h.seed(), segHeaderLen
	case errors.Is(herr, errNoHeader):
		s.ver = 1
	case last && (size < segHeaderLen || errors.Is(herr, errOtherSeg)):
		// s.ver stays 0: no records; activate replaces the file.
		rc.j.logf("journal: segment %08d: %v: a segment file being created", id, herr)
		if err := rc.truncateTorn(s, size, 0); err != nil {
			return err
		}
		s.end, s.written, s.fileEnd = 0, 0, 0
		return nil
	default:
		s.corrupt++
		rc.corrupt("segment %08d: %v: the segment is unreadable (%d bytes; messages lost, count unknown)", id, herr, size)
		s.end, s.written, s.fileEnd = size, size, size
		return nil
	}
	res := scanSegment(data, s.layout(), last, true, func(r *record) error {
		rc.account(s, r)
		return nil
	}, func(line string) {
		s.corrupt++
		rc.corrupt("segment %08d: %s", id, line)
	})
	rc.rep.Records += res.records
	rc.clean[idx] = res.corrupt == 0
	switch {
	case res.stale:
		stale := size - int64(res.end)
		rc.rep.StaleBytes += stale
		what := "the end of the segment"
		if last {
			// Cut it, so that appends continue from a file that ends at
			// its last record.
			if err := rc.truncate(s, res.end); err != nil {
				return err
			}
			what = "truncated"
		}
		rc.j.logf("journal: segment %08d: the %d bytes after offset %d are the recycled file's previous life: %s", id, stale, res.end, what)
		size = int64(res.end)
	case res.torn:
		if err := rc.truncateTorn(s, size, res.end); err != nil {
			return err
		}
		size = int64(res.end)
	}
	s.end, s.written, s.nextOrd, s.fileEnd = size, size, s.count, size
	return nil
}

// account applies a record of segment s to liveness: a Done record kills
// its keys; a message record counts in s (ordinals it skipped are lost:
// the scan reported them with their corrupt region), and a Moved one kills
// its old copy.
func (rc *recovery) account(s *segment, r *record) {
	if r.typ == recDone {
		for i := 0; i < len(r.keys)/8; i++ {
			k := doneKey(r.keys, i)
			if ks := rc.t.get(k.Seg); ks != nil {
				ks.kill(k.Ord)
			}
		}
		return
	}
	m := &r.msg
	if m.ord > s.count {
		s.markLost(s.count, m.ord)
	}
	s.count = m.ord + 1
	s.live++
	s.msgBytes += int64(r.n)
	if m.moved {
		if olds := rc.t.get(m.old.Seg); olds != nil {
			olds.kill(m.old.Ord)
		}
	}
}

// truncateTorn cuts segment s, size bytes long, to end (the torn tail
// found by the scan) and fsyncs it, and reports it.
func (rc *recovery) truncateTorn(s *segment, size int64, end int) error {
	cut := size - int64(end)
	if err := rc.truncate(s, end); err != nil {
		return err
	}
	rc.rep.TornTails++
	rc.rep.TruncatedBytes += cut
	rc.j.logf("journal: segment %08d: torn tail: truncated %d bytes at offset %d", s.id, cut, end)
	return nil
}

// truncate cuts segment s to end bytes and fsyncs it.
func (rc *recovery) truncate(s *segment, end int) error {
	if err := s.f.Truncate(int64(end)); err != nil {
		return fmt.Errorf("journal: truncate segment %d: %w", s.id, err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("journal: fsync segment %d: %w", s.id, err)
	}
	return nil
}

// replay is Recover's second step: it unmaps the segments without live
// messages, then passes each live message to fn, in log order.
func (rc *recovery) replay(fn func(p Pos, m *Message) error) error {
	for idx, id := range rc.ids {
		if rc.t.get(id).live == 0 && rc.maps[idx] != nil {
			syscall.Munmap(rc.maps[idx])
			rc.maps[idx] = nil
		}
	}
	var m Message
	for idx, id := range rc.ids {
		s := rc.t.get(id)
		if s.live == 0 {
			continue
		}
		data, err := rc.segData(idx, s)
		if err != nil {
			return err
		}
		res := scanSegment(data, s.layout(), false, !rc.clean[idx], func(r *record) error {
			if r.typ == recDone || s.isDead(r.msg.ord) {
				return nil
			}
			m = rc.j.message(&r.msg)
			rc.rep.Live++
			return fn(Pos{Seg: id, Ord: r.msg.ord, Off: uint32(r.off), Len: uint32(r.n)}, &m)
		}, nil)
		if res.err != nil {
			return res.err
		}
	}
	return nil
}

// segData returns the written bytes of segment ids[idx]: its mapping, or
// else a read into rc.buf.
func (rc *recovery) segData(idx int, s *segment) ([]byte, error) {
	data := rc.maps[idx]
	if data == nil {
		if cap(rc.buf) < int(s.written) {
			rc.buf = make([]byte, s.written)
		}
		data = rc.buf[:s.written]
		if _, err := s.f.ReadAt(data, 0); err != nil {
			return nil, fmt.Errorf("journal: read segment %d: %w", s.id, err)
		}
	}
	return data[:s.written], nil
}

// activate is Recover's last step: unless Close ran meanwhile, it installs
// the segment table and the active segment, records the Report and starts
// the flusher. The active segment is the last one if it is v2; a new v2
// segment after it if it is v1 (or unreadable), so a v1 journal is only
// read; a fresh v2 segment of its id if it is empty and not v2 (a file
// being created when the process stopped); a fresh segment 1 if there was
// none.
func (rc *recovery) activate(start time.Time) error {
	j := rc.j
	j.mu.Lock()
	if j.closing {
		// Close ran during the replay: it did not see a started journal,
		// so nothing may start now; Recover closes the segments.
		j.mu.Unlock()
		return ErrClosed
	}
	t := rc.t
	var active *segment
	if n := len(rc.ids); n > 0 {
		last := t.get(rc.ids[n-1])
		switch {
		case last.ver == segVersion:
			active = last
		case last.written == 0:
			last.f.Close()
			last.f = nil
			os.Remove(j.segPath(last.id))
			active = newSegment(last.id)
			t.segs[len(t.segs)-1] = active
		default:
			active = newSegment(last.id + 1)
			t = &segTable{base: t.base, segs: append(t.segs, active)}
		}
	} else {
		active = newSegment(1)
		t = &segTable{base: 1, segs: []*segment{active}}
	}
	j.table.Store(t)
	j.active = active
	j.wseg = active
	j.pool = rc.pool
	j.poolFiles.Store(int32(len(rc.pool)))
	for _, free := range rc.pool {
		if fi, err := os.Stat(free); err == nil {
			j.poolBytes.Add(fi.Size())
		}
	}
	j.newGroupLocked()
	rc.rep.Duration = time.Since(start)
	j.lastReport = rc.rep
	j.recovered = true
	j.mu.Unlock()
	go j.run()
	return nil
}

// loadSegment maps f read-only (mapped=true; the caller munmaps), or if
// that fails reads it into buf (reused if large enough).
func loadSegment(f *os.File, buf []byte) (data []byte, mapped bool, err error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	if size := int(fi.Size()); size > 0 {
		if d, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED); err == nil {
			syscall.Madvise(d, syscall.MADV_SEQUENTIAL)
			return d, true, nil
		}
	}
	data, err = readAll(f, fi.Size(), buf)
	return data, false, err
}

// readAll reads size bytes of f from offset 0 into buf (reused if large
// enough).
func readAll(f *os.File, size64 int64, buf []byte) ([]byte, error) {
	size := int(size64)
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	n, err := f.ReadAt(buf, 0)
	if n == size {
		err = nil
	}
	return buf[:n], err
}
