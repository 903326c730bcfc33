package journal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
)

// Frames, their CRC seed and the segment header are laid out as the
// package doc (Files) states; the seed passed around below is 0 for a v1
// segment.
//
// Payloads:
//
//	Accept: [u32 ord][i64 due][uvarint len(id)][id][uvarint len(topic)][topic][body...]
//	Moved:  [u32 ord][u32 oldSeg][u32 oldOrd][i64 due][uvarint len(id)][id][uvarint len(topic)][topic][body...]
//	Done:   [u8 kind]{[u32 seg][u32 ord]}*
//	AcceptT: [u32 ord][i64 accepted][i64 due][uvarint len(id)][id][uvarint len(topic)][topic][body...]
//	MovedT:  [u32 ord][u32 oldSeg][u32 oldOrd][u32 originSeg][u32 originOrd][i64 accepted][i64 due][id][topic][body...] (lengths as above)
//
// AcceptT and MovedT are Accept and Moved with the message's Accepted time
// and (MovedT) Origin key: they are written for a Message that has either
// set, so a record without them keeps its old, smaller frame.
//
// A message record carries its own ordinal so that records found after a
// corrupt region (by resynchronising on the next valid frame) keep their
// exact Key, and the number of lost messages in the region is known.
const (
	recAccept  byte = 1
	recDone    byte = 2
	recMoved   byte = 3
	recAcceptT byte = 4
	recMovedT  byte = 5

	headerLen = 8
	// minMsgFrame is the smallest possible message frame: header, type,
	// ord, due, two empty uvarint lengths.
	minMsgFrame = headerLen + 1 + 4 + 8 + 1 + 1

	// MaxRecordBytes bounds one frame (header included). Append rejects a
	// message whose record would be larger with ErrTooLarge; the decoder
	// treats a larger length as corruption.
	MaxRecordBytes = 8 << 20

	// maxDoneKeys bounds the keys in one Done record (512 KiB payload).
	maxDoneKeys = 64 << 10
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var (
	errShort   = errors.New("short record")
	errZeroLen = errors.New("zero length")
	errBadLen  = errors.New("length out of range")
	errCRC     = errors.New("crc mismatch")
	errBadType = errors.New("unknown record type")
	errBadBody = errors.New("malformed payload")
)

func uvarintLen(x int) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// RecordLen is the size in the journal of an accepted message m: what
// Append takes on disk for it and what Pos.Len reports. O(1), pure.
func RecordLen(m *Message) int { return msgFrameLen(m, false) }

// msgFrameLen returns the frame size of a message record for m. O(1).
func msgFrameLen(m *Message, moved bool) int {
	n := headerLen + 1 + 4 + 8 + uvarintLen(len(m.ID)) + len(m.ID) +
		uvarintLen(len(m.Topic)) + len(m.Topic) + len(m.Body)
	if moved {
		n += 8
	}
	if timed(m, moved) {
		n += 8 // accepted
		if moved {
			n += 8 // origin
		}
	}
	return n
}

// timed reports whether m's record is an AcceptT or MovedT (it has an
// Accepted time or, moved, an Origin).
func timed(m *Message, moved bool) bool {
	return m.Accepted != 0 || moved && m.Origin != (Key{})
}

// appendMsgFrame appends an Accept (old == nil) or Moved frame to dst, its
// CRC seeded with seed (the segment's; 0 writes a v1 frame).
func appendMsgFrame(dst []byte, seed, ord uint32, old *Key, m *Message) []byte {
	start := len(dst)
	t := timed(m, old != nil)
	typ := recAccept
	switch {
	case old != nil && t:
		typ = recMovedT
	case old != nil:
		typ = recMoved
	case t:
		typ = recAcceptT
	}
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0, typ)
	dst = binary.LittleEndian.AppendUint32(dst, ord)
	if old != nil {
		dst = binary.LittleEndian.AppendUint32(dst, old.Seg)
		dst = binary.LittleEndian.AppendUint32(dst, old.Ord)
		if t {
			dst = binary.LittleEndian.AppendUint32(dst, m.Origin.Seg)
			dst = binary.LittleEndian.AppendUint32(dst, m.Origin.Ord)
		}
	}
	if t {
		dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Accepted))
	}
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Due))
	dst = binary.AppendUvarint(dst, uint64(len(m.ID)))
	dst = append(dst, m.ID...)
	dst = binary.AppendUvarint(dst, uint64(len(m.Topic)))
	dst = append(dst, m.Topic...)
	dst = append(dst, m.Body...)
	finishFrame(dst[start:], seed)
	return dst
}

// appendDoneFrame appends a Done frame listing keys to dst, its CRC seeded
// with seed (the segment's; 0 writes a v1 frame).
func appendDoneFrame(dst []byte, seed uint32, kind DoneKind, keys []Key) []byte {
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0, recDone, byte(kind))
	for _, k := range keys {
		dst = binary.LittleEndian.AppendUint32(dst, k.Seg)
		dst = binary.LittleEndian.AppendUint32(dst, k.Ord)
	}
	finishFrame(dst[start:], seed)
	return dst
}

// finishFrame fills in frame's length and CRC (seeded with seed).
func finishFrame(frame []byte, seed uint32) {
	body := frame[headerLen:]
	binary.LittleEndian.PutUint32(frame[0:], uint32(len(body)))
	binary.LittleEndian.PutUint32(frame[4:], crc32.Update(seed, crcTable, body))
}

// decodeFrame checks the frame at the start of b (its CRC, seeded with
// seed, the segment's, only if verify: false is for bytes already verified
// in this process) and returns its type, payload (aliasing b) and total
// size. It is the journal's one frame decoder. O(len(frame)); it never
// allocates.
func decodeFrame(b []byte, seed uint32, verify bool) (typ byte, payload []byte, n int, err error) {
	if len(b) < headerLen {
		return 0, nil, 0, errShort
	}
	l := binary.LittleEndian.Uint32(b)
	if l == 0 {
		return 0, nil, 0, errZeroLen
	}
	if l > MaxRecordBytes-headerLen {
		return 0, nil, 0, errBadLen
	}
	n = headerLen + int(l)
	if n > len(b) {
		return 0, nil, 0, errShort
	}
	body := b[headerLen:n]
	if verify && crc32.Update(seed, crcTable, body) != binary.LittleEndian.Uint32(b[4:]) {
		return 0, nil, 0, errCRC
	}
	typ = body[0]
	switch typ {
	case recAccept, recMoved, recDone, recAcceptT, recMovedT:
	default:
		return 0, nil, 0, errBadType
	}
	return typ, body[1:], n, nil
}

// rawMsg is a decoded message record whose slices alias the frame.
type rawMsg struct {
	ord      uint32
	moved    bool
	old      Key
	origin   Key   // MovedT only
	accepted int64 // AcceptT and MovedT only
	due      int64
	id       []byte
	topic    []byte
	body     []byte
}

// decodeMsg decodes an Accept or Moved payload into r, whose slices then
// alias p. It is the journal's one message decoder (Journal.message makes
// the Message). It never allocates.
func decodeMsg(typ byte, p []byte, r *rawMsg) error {
	hdr := 12
	switch typ {
	case recMoved:
		hdr = 20
	case recAcceptT:
		hdr = 20
	case recMovedT:
		hdr = 36
	}
	if len(p) < hdr+2 {
		return errBadBody
	}
	r.ord = binary.LittleEndian.Uint32(p)
	r.moved = typ == recMoved || typ == recMovedT
	r.old, r.origin, r.accepted = Key{}, Key{}, 0
	if r.moved {
		r.old = Key{binary.LittleEndian.Uint32(p[4:]), binary.LittleEndian.Uint32(p[8:])}
	}
	switch typ {
	case recAcceptT:
		r.accepted = int64(binary.LittleEndian.Uint64(p[4:]))
	case recMovedT:
		r.origin = Key{binary.LittleEndian.Uint32(p[12:]), binary.LittleEndian.Uint32(p[16:])}
		r.accepted = int64(binary.LittleEndian.Uint64(p[20:]))
	}
	r.due = int64(binary.LittleEndian.Uint64(p[hdr-8:]))
	p = p[hdr:]
	var ok bool
	if r.id, p, ok = lenPrefixed(p); !ok {
		return errBadBody
	}
	if r.topic, p, ok = lenPrefixed(p); !ok {
		return errBadBody
	}
	r.body = p
	return nil
}

func lenPrefixed(p []byte) (v, rest []byte, ok bool) {
	l, n := binary.Uvarint(p)
	if n <= 0 || l > uint64(len(p)-n) {
		return nil, nil, false
	}
	end := n + int(l)
	return p[n:end:end], p[end:], true
}

// decodeDone validates a Done payload and returns its kind and raw keys
// (8 bytes each, aliasing p; see doneKey). It never allocates.
func decodeDone(p []byte) (DoneKind, []byte, error) {
	if len(p) < 1 || (len(p)-1)%8 != 0 {
		return 0, nil, errBadBody
	}
	k := DoneKind(p[0])
	if k != Published && k != Cancelled {
		return 0, nil, errBadBody
	}
	return k, p[1:], nil
}

func doneKey(keys []byte, i int) Key {
	return Key{binary.LittleEndian.Uint32(keys[i*8:]), binary.LittleEndian.Uint32(keys[i*8+4:])}
}
