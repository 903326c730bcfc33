package journal

import (
	"cmp"
	"fmt"
	"slices"
)

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
	m, err := j.decodeAt(p, s.seed, buf)
	return m, buf, err
}

// decodeAt decodes the message record of p from b, which holds exactly its
// frame, its CRC seeded with seed (its segment's). Body aliases b.
func (j *Journal) decodeAt(p Pos, seed uint32, b []byte) (Message, error) {
	typ, payload, n, err := decodeFrame(b, seed, true)
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
	return j.message(&r), nil
}

// message makes the Message of a decoded record: Body aliases r's frame,
// ID is a new string (none if empty), Topic comes from j.topics. Safe for
// concurrent use.
func (j *Journal) message(r *rawMsg) Message {
	return Message{ID: string(r.id), Topic: j.topics.Get(r.topic), Due: r.due, Body: r.body, Origin: r.origin, Accepted: r.accepted}
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
// thousand messages where Read would make a thousand. m.Body aliases r's
// memory and stays valid until the next ReadBatch with r, so a caller can
// keep the bodies of one call without copying them. Safe for concurrent
// use with other calls, as Read.
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
	if cap(r.buf) > maxKeptBatchBuf {
		r.buf = nil // one call's rare big batch is not kept for all later ones
	}
	r.buf = r.buf[:0]
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
		base := len(r.buf)
		seed, err := j.readSpan(t, first.Seg, from, to, r)
		// The run's records are moved down over the gaps between them
		// (other records), so r keeps the records, not the whole span,
		// until its next call. w <= off: a record is moved only onto
		// bytes already passed.
		w := int64(base)
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
			off := int64(base) + int64(p.Off) - from
			if off != w {
				copy(r.buf[w:w+int64(p.Len)], r.buf[off:off+int64(p.Len)])
			}
			m, derr := j.decodeAt(p, seed, r.buf[w:w+int64(p.Len):w+int64(p.Len)])
			w += int64(p.Len)
			fn(int(i), m, derr)
		}
		r.buf = r.buf[:w]
	}
}

// maxKeptBatchBuf is the largest buffer a BatchReader keeps between calls.
const maxKeptBatchBuf = 2 * MaxRecordBytes

// readSpan preads bytes [from, to) of segment seg onto the end of r.buf
// (bytes already there keep their offsets; a buffer that must grow is
// copied, and the old one stays as it was for the bodies aliasing it) and
// returns the segment's CRC seed.
func (j *Journal) readSpan(t *segTable, seg uint32, from, to int64, r *BatchReader) (uint32, error) {
	s := t.get(seg)
	if s == nil {
		return 0, ErrNotFound
	}
	base := len(r.buf)
	r.buf = slices.Grow(r.buf, int(to-from))[:base+int(to-from)]
	dst := r.buf[base:]
	s.fmu.RLock()
	defer s.fmu.RUnlock()
	if s.f == nil {
		if j.closed.Load() {
			return 0, ErrClosed
		}
		return 0, ErrNotFound
	}
	if _, err := s.f.ReadAt(dst, from); err != nil {
		return 0, fmt.Errorf("journal: read segment %d at %d: %w", seg, from, err)
	}
	return s.seed, nil
}
