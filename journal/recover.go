package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// scanResult is the outcome of scanning one segment's bytes.
type scanResult struct {
	end     int   // offset just past the last valid record
	torn    bool  // last segment: bad bytes at end[:] and no valid record after them
	corrupt int   // corrupt regions reported
	err     error // from visit
}

// scanSegment walks the frames of data and calls visit for each valid one.
//
// On a bad frame it looks for the next valid frame (resync). If there is
// none and last is set, the bad bytes are a torn tail (a short record, a
// zero-filled or partially written end): res.torn, and res.end is where to
// truncate. Otherwise it is corruption: a line is added to res.corrupt and
// the scan continues at the next valid frame (records there keep their
// exact Key because message records carry their ordinal) or stops if there
// is none (the rest of a non-last segment is unreadable; the number of
// messages lost there is unknown).
//
// A record that fails its CRC is skipped by its length when a valid frame
// follows it, and is the last one when it ends the segment, so its body (a
// client's bytes, which may hold a valid-looking frame) is not searched.
// When its length is damaged too, or a frame runs past the end of the
// segment (a torn tail, or a damaged length), resync searches from the
// next byte.
//
// Message records whose ordinal does not increase are reported and skipped;
// so are message payloads that fail to decode (visit returns errBadBody).
// Each corrupt region is passed to report (may be nil) as it is found.
func scanSegment(data []byte, last bool, visit func(off, n int, typ byte, payload []byte) error, report func(string)) scanResult {
	return scanSegmentCRC(data, last, true, visit, report)
}

// scanSegmentCRC is scanSegment with the CRC check optional (verify=false
// only for a segment already scanned clean in this process).
func scanSegmentCRC(data []byte, last, verify bool, visit func(off, n int, typ byte, payload []byte) error, report func(string)) scanResult {
	var res scanResult
	addCorrupt := func(line string) {
		res.corrupt++
		if report != nil {
			report(line)
		}
	}
	off := 0
	nextOrd := uint32(0)
	for off < len(data) {
		typ, payload, n, err := decodeFrameCRC(data[off:], verify)
		if err == nil && typ != recDone {
			if len(payload) < 4 {
				err = errBadBody
			} else if ord := binary.LittleEndian.Uint32(payload); ord < nextOrd {
				addCorrupt(fmt.Sprintf("offset %d: message ordinal %d after %d; record skipped", off, ord, nextOrd-1))
				off += n
				res.end = off
				continue
			} else {
				nextOrd = ord + 1
			}
		}
		if err == nil {
			if verr := visit(off, n, typ, payload); verr != nil {
				if !errors.Is(verr, errBadBody) {
					res.err = verr
					return res
				}
				addCorrupt(fmt.Sprintf("offset %d: %v; record skipped", off, verr))
			}
			off += n
			res.end = off
			continue
		}
		nxt := -1
		if errors.Is(err, errCRC) {
			// The length is plausible and inside the segment: if a valid
			// frame follows the damaged record, only the record was hit.
			// Resume there rather than search its body, which could hold
			// a valid-looking frame (a message's bytes are a client's).
			nn := off + headerLen + int(binary.LittleEndian.Uint32(data[off:]))
			if nn == len(data) {
				// The damaged record is the segment's last: nothing can
				// follow it, so nothing is searched for.
				if last {
					res.torn = true
					return res
				}
				addCorrupt(fmt.Sprintf("offset %d: %v; the segment's last record is lost", off, err))
				return res
			}
			if nn+headerLen < len(data) && frameAt(data, nn, nextOrd, maxOrdFrom(data, nn, nextOrd)) {
				nxt = nn
			}
		}
		if nxt < 0 {
			nxt = resync(data, off+1, nextOrd)
		}
		if nxt < 0 {
			if last {
				res.torn = true
				return res
			}
			addCorrupt(fmt.Sprintf("offset %d: %v; the remaining %d bytes of the segment are unreadable (records lost, count unknown)", off, err, len(data)-off))
			return res
		}
		addCorrupt(fmt.Sprintf("offset %d: %v; skipped %d bytes to the next valid record at %d", off, err, nxt-off, nxt))
		off = nxt
	}
	return res
}

// Recover must be called exactly once, after Open and before any Append,
// AppendMoved or Done. It reads every segment in id order (whole file into
// one reused buffer, so peak memory is about one segment), verifies CRCs,
// and:
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
// Then it calls fn for each live message in log order. fn's Message is
// valid only during the call: Body aliases an internal buffer (copy it to
// keep it); ID and Topic are ordinary strings (topics are interned). If fn
// returns an error Recover stops and returns it; the journal must then be
// closed. Recover starts the flusher goroutine, unless Close was called
// meanwhile: then it returns ErrClosed and starts nothing. Cost: two
// sequential reads of the journal (the second only of segments with live
// messages) and one CRC pass per read; no per-record allocation besides ID
// strings.
func (j *Journal) Recover(fn func(p Pos, m *Message) error) (Report, error) {
	j.mu.Lock()
	if j.recovered || j.closing {
		j.mu.Unlock()
		return Report{}, errors.New("journal: Recover called twice or after Close")
	}
	j.mu.Unlock()
	start := time.Now()
	var rep Report
	corrupt := func(format string, args ...any) {
		line := fmt.Sprintf(format, args...)
		rep.Corrupt = append(rep.Corrupt, line)
		j.stats.corrupt.Add(1)
		j.logf("journal: CORRUPT %s", line)
	}

	ids, err := listSegments(j.opts.Dir)
	if err != nil {
		return rep, fmt.Errorf("journal: list segments: %w", err)
	}
	t := &segTable{}
	if len(ids) > 0 {
		t.base = ids[0]
		t.segs = make([]*segment, ids[len(ids)-1]-ids[0]+1)
		prev := ids[0]
		for _, id := range ids {
			if id > prev+1 {
				corrupt("segments %08d..%08d missing (messages lost, count unknown)", prev+1, id-1)
			}
			t.segs[id-t.base] = &segment{id: id}
			prev = id
		}
	}

	// Pass 1: verify, truncate a torn tail, rebuild liveness. Segments are
	// mmapped (read(2) into one reused buffer if mmap fails) and stay mapped
	// for pass 2 if they have live messages.
	var buf []byte
	maps := make([][]byte, len(ids))
	clean := make([]bool, len(ids))
	defer func() {
		for _, d := range maps {
			if d != nil {
				syscall.Munmap(d)
			}
		}
	}()
	var r rawMsg
	for idx, id := range ids {
		s := t.get(id)
		last := idx == len(ids)-1
		flag := os.O_RDONLY
		if last {
			flag = os.O_RDWR
		}
		f, err := os.OpenFile(j.segPath(id), flag, 0)
		if err != nil {
			j.closeSegs(t)
			return rep, fmt.Errorf("journal: open segment %d: %w", id, err)
		}
		s.f = f
		data, mapped, err := loadSegment(f, buf)
		if err != nil {
			j.closeSegs(t)
			return rep, fmt.Errorf("journal: read segment %d: %w", id, err)
		}
		if mapped {
			maps[idx] = data
		} else {
			buf = data
		}
		rep.Segments++
		rep.Bytes += int64(len(data))
		res := scanSegment(data, last, func(off, n int, typ byte, payload []byte) error {
			rep.Records++
			if typ == recDone {
				_, keys, err := decodeDone(payload)
				if err != nil {
					return err
				}
				for i := 0; i < len(keys)/8; i++ {
					k := doneKey(keys, i)
					if ks := t.get(k.Seg); ks != nil {
						ks.kill(k.Ord)
					}
				}
				return nil
			}
			if err := decodeMsg(typ, payload, &r); err != nil {
				return err
			}
			if r.ord > s.count {
				corrupt("segment %08d: %d messages lost (ordinals %d..%d) before offset %d", id, r.ord-s.count, s.count, r.ord-1, off)
				s.markLost(s.count, r.ord)
			}
			s.count = r.ord + 1
			s.live++
			s.msgBytes += int64(n)
			if r.moved {
				if olds := t.get(r.old.Seg); olds != nil {
					olds.kill(r.old.Ord)
				}
			}
			return nil
		}, func(line string) { corrupt("segment %08d: %s", id, line) })
		clean[idx] = res.corrupt == 0
		size := int64(len(data))
		if res.torn {
			cut := size - int64(res.end)
			if err := f.Truncate(int64(res.end)); err != nil {
				j.closeSegs(t)
				return rep, fmt.Errorf("journal: truncate torn tail of segment %d: %w", id, err)
			}
			if err := f.Sync(); err != nil {
				j.closeSegs(t)
				return rep, fmt.Errorf("journal: fsync segment %d: %w", id, err)
			}
			rep.TornTails++
			rep.TruncatedBytes += cut
			size = int64(res.end)
			j.logf("journal: segment %08d: torn tail: truncated %d bytes at offset %d", id, cut, res.end)
		}
		s.end, s.written, s.nextOrd = size, size, s.count
	}

	// Pass 2: hand live messages to fn, in log order.
	topics := make(map[string]string)
	var m Message
	for idx, id := range ids {
		s := t.get(id)
		if s.live == 0 {
			if maps[idx] != nil {
				syscall.Munmap(maps[idx])
				maps[idx] = nil
			}
			continue
		}
	}
	for idx, id := range ids {
		s := t.get(id)
		if s.live == 0 {
			continue
		}
		data := maps[idx]
		if data == nil {
			if cap(buf) < int(s.written) {
				buf = make([]byte, s.written)
			}
			data = buf[:s.written]
			if _, err := s.f.ReadAt(data, 0); err != nil {
				j.closeSegs(t)
				return rep, fmt.Errorf("journal: read segment %d: %w", id, err)
			}
		}
		data = data[:s.written]
		res := scanSegmentCRC(data, false, !clean[idx], func(off, n int, typ byte, payload []byte) error {
			if typ == recDone {
				return nil
			}
			if err := decodeMsg(typ, payload, &r); err != nil {
				return err
			}
			if s.isDead(r.ord) {
				return nil
			}
			topic, ok := topics[string(r.topic)]
			if !ok {
				topic = string(r.topic)
				if len(topics) < 4096 {
					topics[topic] = topic
				}
			}
			m = Message{Topic: topic, Due: r.due, Body: r.body}
			if len(r.id) > 0 {
				m.ID = string(r.id)
			}
			rep.Live++
			return fn(Pos{Seg: id, Ord: r.ord, Off: uint32(off), Len: uint32(n)}, &m)
		}, nil)
		if res.err != nil {
			j.closeSegs(t)
			return rep, res.err
		}
	}

	j.mu.Lock()
	if j.closing {
		// Close ran during the replay: it did not see a started journal,
		// so nothing may start now; the segments are ours to close.
		j.mu.Unlock()
		j.closeSegs(t)
		return rep, ErrClosed
	}
	var active *segment
	if len(ids) > 0 {
		active = t.get(ids[len(ids)-1])
	} else {
		active = &segment{id: 1}
		t = &segTable{base: 1, segs: []*segment{active}}
	}
	j.table.Store(t)
	j.active = active
	j.wseg = active
	j.newGroupLocked()
	rep.Duration = time.Since(start)
	j.lastReport = rep
	j.recovered = true
	j.mu.Unlock()
	go j.run()
	return rep, nil
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
