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
	records int   // valid frames passed on (to visit, or reported as malformed payloads)
	corrupt int   // corrupt regions reported
	err     error // from visit
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

// scanSegment walks the frames of data, decodes each valid one (frame,
// then payload) and calls visit with it. verify=false skips the CRC check,
// only for a segment already scanned clean in this process. visit's error
// stops the scan and is returned in res.err.
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
// so are payloads that fail to decode (counted in res.records, not passed
// to visit). Each corrupt region is passed to report (may be nil) as it is
// found. It allocates nothing per record.
func scanSegment(data []byte, last, verify bool, visit func(r *record) error, report func(string)) scanResult {
	s := scanner{data: data, last: last, report: report}
	for s.off < len(data) {
		typ, payload, n, err := decodeFrame(data[s.off:], verify)
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
	return s.res
}

// scanner is scanSegment's state.
type scanner struct {
	data    []byte
	last    bool
	report  func(string)
	off     int    // next frame
	nextOrd uint32 // lowest ordinal the next message record may carry
	rec     record
	res     scanResult
}

func (s *scanner) corrupt(line string) {
	s.res.corrupt++
	if s.report != nil {
		s.report(line)
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

// skipBad handles the bad frame at s.off (err says why) and reports whether
// the scan goes on, from the next valid frame. See scanSegment.
func (s *scanner) skipBad(err error) bool {
	data, off := s.data, s.off
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
			if s.last {
				s.res.torn = true
				return false
			}
			s.corrupt(fmt.Sprintf("offset %d: %v; the segment's last record is lost", off, err))
			return false
		}
		if nn+headerLen < len(data) && frameAt(data, nn, s.nextOrd, maxOrdFrom(data, nn, s.nextOrd)) {
			nxt = nn
		}
	}
	if nxt < 0 {
		nxt = resync(data, off+1, s.nextOrd)
	}
	if nxt < 0 {
		if s.last {
			s.res.torn = true
			return false
		}
		s.corrupt(fmt.Sprintf("offset %d: %v; the remaining %d bytes of the segment are unreadable (records lost, count unknown)", off, err, len(data)-off))
		return false
	}
	s.corrupt(fmt.Sprintf("offset %d: %v; skipped %d bytes to the next valid record at %d", off, err, nxt-off, nxt))
	s.off = nxt
	return true
}

// resync returns the offset of the first plausible valid frame at or after
// from, or -1. A candidate must pass cheap structural checks (length in
// range, known type, a message ordinal not below minOrd and not beyond what
// the remaining bytes could hold, a well-formed Done kind) before its CRC is
// computed, so scanning garbage costs little more than reading it.
func resync(data []byte, from int, minOrd uint32) int {
	maxOrd := maxOrdFrom(data, from, minOrd)
	for i := from; i+headerLen < len(data); i++ {
		if frameAt(data, i, minOrd, maxOrd) {
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

// frameAt reports whether a valid frame starts at data[i], a message
// record's ordinal in [minOrd, maxOrd]. i+headerLen < len(data).
func frameAt(data []byte, i int, minOrd uint32, maxOrd uint64) bool {
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
	_, _, _, err := decodeFrame(data[i:], true)
	return err == nil
}
