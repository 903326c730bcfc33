package journal

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// The v2 segment header: its layout, the frames' CRC seed and how a v1
// segment differs are stated in the package doc (Files). prevSize is
// kept as a u32: a segment file is at most maxSegmentBytes plus one record.
const (
	segHeaderLen = 32
	segMagic     = "DEFERDJL"
	segVersion   = 2
)

var (
	errNoHeader  = errors.New("no segment header")
	errBadHeader = errors.New("segment header damaged")
	// errOtherSeg is a whole header naming another segment: a recycled
	// file renamed for this segment before its header was rewritten.
	errOtherSeg = errors.New("segment header of another segment")
)

// segHeader is a v2 segment's header.
type segHeader struct {
	id       uint32
	salt     uint64
	prevSize uint32 // 0: a new file; else the recycled file's size then
}

// encode returns the header's 32 bytes.
func (h segHeader) encode() []byte {
	b := make([]byte, segHeaderLen)
	copy(b, segMagic)
	binary.LittleEndian.PutUint32(b[8:], segVersion)
	binary.LittleEndian.PutUint32(b[12:], h.id)
	binary.LittleEndian.PutUint64(b[16:], h.salt)
	binary.LittleEndian.PutUint32(b[24:], h.prevSize)
	binary.LittleEndian.PutUint32(b[28:], crc32.Checksum(b[:28], crcTable))
	return b
}

// seed is the CRC-32C seed of the segment's frames: the CRC of its id and
// salt, as they are laid out in the header.
func (h segHeader) seed() uint32 {
	var b [12]byte
	binary.LittleEndian.PutUint32(b[0:], h.id)
	binary.LittleEndian.PutUint64(b[4:], h.salt)
	return crc32.Checksum(b[:], crcTable)
}

// parseHeader parses the header at the start of b. errNoHeader: b does not
// start with the magic (a v1 segment, or fewer than 8 bytes); errBadHeader
// (wrapped, with why): it does, but the header is short, fails its CRC, has
// another version; errOtherSeg: it names another segment than id.
func parseHeader(b []byte, id uint32) (segHeader, error) {
	if len(b) < len(segMagic) || string(b[:len(segMagic)]) != segMagic {
		return segHeader{}, errNoHeader
	}
	if len(b) < segHeaderLen {
		return segHeader{}, fmt.Errorf("%w: %d bytes", errBadHeader, len(b))
	}
	if crc32.Checksum(b[:28], crcTable) != binary.LittleEndian.Uint32(b[28:]) {
		return segHeader{}, fmt.Errorf("%w: crc mismatch", errBadHeader)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != segVersion {
		return segHeader{}, fmt.Errorf("%w: version %d", errBadHeader, v)
	}
	h := segHeader{
		id:       binary.LittleEndian.Uint32(b[12:]),
		salt:     binary.LittleEndian.Uint64(b[16:]),
		prevSize: binary.LittleEndian.Uint32(b[24:]),
	}
	if h.id != id {
		return segHeader{}, fmt.Errorf("%w: it names segment %d (a recycled file not yet rewritten)", errOtherSeg, h.id)
	}
	return h, nil
}

// newSalt returns a random, nonzero salt.
func newSalt() uint64 {
	var b [8]byte
	for {
		rand.Read(b[:]) // never fails (crypto/rand panics instead)
		if s := binary.LittleEndian.Uint64(b[:]); s != 0 {
			return s
		}
	}
}

// newSegment returns a new v2 segment id with a fresh salt, its file not
// yet created (the flusher creates it, writing the header, before the
// first write to it).
func newSegment(id uint32) *segment {
	h := segHeader{id: id, salt: newSalt()}
	return &segment{id: id, ver: segVersion, hdr: h, seed: h.seed(), start: segHeaderLen, end: segHeaderLen}
}
