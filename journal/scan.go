package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// scanResult is the outcome of scanning one segment's bytes.
type scanResult struct {
	end     int   // offset just past the last valid record
	torn    bool  // last segment: bad bytes at end[:] and no valid record after them
	stale   bool  // recycled segment: end[:] is the file's previous life (end of segment)
	records int   // valid frames passed on (to visit, or reported as malformed payloads)
	corrupt int   // corrupt regions reported
	err     error // from visit
}

// layout is what scanning a segment's bytes needs of its format.
type layout struct {
	start    int    // offset of the first frame: segHeaderLen (v2) or 0 (v1)
	seed     uint32 // the frames' CRC seed (0 in v1)
	prevSize int64  // v2 recycled file: its size when it was recycled; else 0
}

// layout returns s's layout.
func (s *segment) layout() layout {
	return layout{start: int(s.start), seed: s.seed, prevSize: int64(s.hdr.prevSize)}
}

// record is one valid record found by scanSegment. Its slices alias the
// segment's bytes, and scanSegment reuses it for the next record.
type record struct {
	off, n int  // offset and size of the frame in the segment
	typ    byte // recAccept, recMoved or recDone
	// typ recAccept or recMoved:
	msg rawMsg
	// typ recDone:
	kind DoneKind
	keys []byte // 8 bytes per key; see doneKey
}

// scanSegment walks the frames of data (a whole segment file, or its
// first bytes), from lay.start, decodes each valid one (frame, then
// payload) and calls visit with it. A frame is valid only if its CRC,
// seeded with lay.seed, matches: in a v2 segment the seed holds the
// segment's id and salt, so a frame of another segment, of an earlier
// life of a recycled file, or inside a client's body (which cannot know
// the salt) is never valid. verify=false skips the CRC check, only for a
// segment already scanned clean in this process. visit's error stops the
// scan and is returned in res.err.
//
// On a bad frame it looks for the next valid frame (resync). If there is
// none, the bad bytes are the segment's end when the segment is a recycled
// file still as long as its previous life (lay.prevSize: res.stale; the
// bytes are what that life left past this one's last record) or, in the
// last segment, a torn tail (a short record, a zero-filled or partially
// written end: res.torn); res.end is where the segment ends (where to
// truncate). Otherwise it is corruption: a line is added to res.corrupt
// and the scan continues at the next valid frame (records there keep their
// exact Key because message records carry their ordinal) or stops if there
// is none (the rest of a non-last segment is unreadable; the number of
// messages lost there is unknown). One corrupt region is one line: the
// messages it lost (the ordinals skipped by the next message record) are
// stated in the region's line, not in a line of their own.
//
// A record that fails its CRC is skipped by its length when a valid frame
// follows it, and is the last one when it ends the segment, so its body is
// not searched (in a v1 segment a client's bytes could hold a frame that
// passes the unseeded CRC). When its length is damaged too, or a frame runs
// past the end of the segment (a torn tail, or a damaged length), resync
// searches from the next byte.
//
// Message records whose ordinal does not increase are reported and skipped;
// so are payloads that fail to decode (counted in res.records, not passed
// to visit). Each corrupt region is passed to report (may be nil) once the
// next message record (or the end of the scan) tells how many messages it
// lost. It allocates nothing per record but the lines it reports.
func scanSegment(data []byte, lay layout, last, verify bool, visit func(r *record) error, report func(string)) scanResult {
	s := scanner{data: data, lay: lay, last: last, report: report, off: lay.start}
	s.res.end = min(lay.start, len(data))
	for s.off < len(data) {
		typ, payload, n, err := decodeFrame(data[s.off:], lay.seed, verify)
		if err == nil && typ != recDone && len(payload) < 4 {
			err = errBadBody
		}
		if err != nil {
			if !s.skipBad(err) {
				break
			}
			continue
		}
		if err := s.record(typ, payload, n, visit); err != nil {
			s.res.err = err
			break
		}
	}
	s.flush()
	return s.res
}

// scanner is scanSegment's state.
type scanner struct {
	data    []byte
	lay     layout
	last    bool
	report  func(string)
	off     int    // next frame
	nextOrd uint32 // lowest ordinal the next message record may carry
	pending string // a corrupt region's line, waiting for the messages it lost
	rec     record
	res     scanResult
}

// corrupt reports a corrupt region's line (after any pending one).
func (s *scanner) corrupt(line string) {
	s.flush()
	s.res.corrupt++
	if s.report != nil {
		s.report(line)
	}
}

// flush reports the pending region's line, if any, as it stands.
func (s *scanner) flush() {
	if line := s.pending; line != "" {
		s.pending = ""
		s.corrupt(line)
	}
}

// record handles the valid frame of n bytes at s.off: it decodes the
// payload and passes the record to visit, or reports and skips it. It
// returns visit's error.
func (s *scanner) record(typ byte, payload []byte, n int, visit func(r *record) error) error {
	off := s.off
	s.off += n
	r := &s.rec
	r.off, r.n, r.typ = off, n, typ
	var err error
	if typ == recDone {
		r.kind, r.keys, err = decodeDone(payload)
	} else {
		ord := binary.LittleEndian.Uint32(payload)
		if ord < s.nextOrd {
			s.corrupt(fmt.Sprintf("offset %d: message ordinal %d after %d; record skipped", off, ord, s.nextOrd-1))
			s.res.end = s.off
			return nil
		}
		if ord > s.nextOrd {
			lost := fmt.Sprintf("%d messages lost (ordinals %d..%d)", ord-s.nextOrd, s.nextOrd, ord-1)
			if s.pending != "" {
				s.pending += "; " + lost
			} else {
				s.pending = fmt.Sprintf("offset %d: %s before this record", off, lost)
			}
		}
		s.flush()
		s.nextOrd = ord + 1
		err = decodeMsg(typ, payload, &r.msg)
	}
	s.res.records++
	if err != nil {
		s.corrupt(fmt.Sprintf("offset %d: %v; record skipped", off, err))
	} else if err := visit(r); err != nil {
		return err
	}
	s.res.end = s.off
	return nil
}

// endHere handles bad bytes at s.off with no valid frame after them (err
// says why the first is bad; what is lost, if it is corruption): a
// recycled file's previous life (res.stale) or, in the last segment, a
// torn tail (res.torn) end the segment; otherwise it is corruption. The
// scan stops.
func (s *scanner) endHere(lost string) {
	switch {
	case s.lay.prevSize > 0 && int64(len(s.data)) == s.lay.prevSize:
		s.res.stale = true
	case s.last:
		s.res.torn = true
	default:
		s.corrupt(lost)
	}
}

// skipBad handles the bad frame at s.off (err says why) and reports whether
// the scan goes on, from the next valid frame. See scanSegment.
func (s *scanner) skipBad(err error) bool {
	data, off := s.data, s.off
	nxt := -1
	if errors.Is(err, errCRC) {
		// The length is plausible and inside the segment: if a valid
		// frame follows the damaged record, only the record was hit.
		// Resume there rather than search its body, which in a v1
		// segment could hold a valid-looking frame (a message's bytes
		// are a client's; in v2 the seed keeps them from passing).
		nn := off + headerLen + int(binary.LittleEndian.Uint32(data[off:]))
		if nn == len(data) {
			// The damaged record is the segment's last: nothing can
			// follow it, so nothing is searched for.
			s.endHere(fmt.Sprintf("offset %d: %v; the segment's last record is lost", off, err))
			return false
		}
		if nn+headerLen < len(data) && frameAt(data, nn, s.lay.seed, s.nextOrd, maxOrdFrom(data, nn, s.nextOrd)) {
			nxt = nn
		}
	}
	if nxt < 0 {
		nxt = resync(data, off+1, s.lay.seed, s.nextOrd)
	}
	if nxt < 0 {
		s.endHere(fmt.Sprintf("offset %d: %v; the remaining %d bytes of the segment are unreadable (records lost, count unknown)", off, err, len(data)-off))
		return false
	}
	s.flush()
	s.pending = fmt.Sprintf("offset %d: %v; skipped %d bytes to the next valid record at %d", off, err, nxt-off, nxt)
	s.off = nxt
	return true
}

// resync returns the offset of the first plausible valid frame (CRC seeded
// with seed) at or after from, or -1. A candidate must pass cheap
// structural checks (length in range, known type, a message ordinal not
// below minOrd and not beyond what the remaining bytes could hold, a
// well-formed Done kind) before its CRC is computed, so scanning garbage
// costs little more than reading it.
func resync(data []byte, from int, seed, minOrd uint32) int {
	maxOrd := maxOrdFrom(data, from, minOrd)
	for i := from; i+headerLen < len(data); i++ {
		if frameAt(data, i, seed, minOrd, maxOrd) {
			return i
		}
	}
	return -1
}

// maxOrdFrom is the highest ordinal a message record at or after from can
// carry when the next expected is minOrd: one more than the records the
// remaining bytes could hold.
func maxOrdFrom(data []byte, from int, minOrd uint32) uint64 {
	return uint64(minOrd) + uint64((len(data)-from)/minMsgFrame) + 1
}

// frameAt reports whether a valid frame (CRC seeded with seed) starts at
// data[i], a message record's ordinal in [minOrd, maxOrd].
// i+headerLen < len(data).
func frameAt(data []byte, i int, seed, minOrd uint32, maxOrd uint64) bool {
	l := int(binary.LittleEndian.Uint32(data[i:]))
	if l < 2 || l > MaxRecordBytes-headerLen || i+headerLen+l > len(data) {
		return false
	}
	switch data[i+headerLen] {
	case recAccept, recMoved, recAcceptT, recMovedT:
		if l < 1+12+2 {
			return false
		}
		ord := binary.LittleEndian.Uint32(data[i+headerLen+1:])
		if ord < minOrd || uint64(ord) > maxOrd {
			return false
		}
	case recDone:
		k := DoneKind(data[i+headerLen+1])
		if (l-2)%8 != 0 || (k != Published && k != Cancelled) {
			return false
		}
	default:
		return false
	}
	_, _, _, err := decodeFrame(data[i:], seed, true)
	return err == nil
}
