package benchmarks

import (
	"encoding/binary"
	"errors"
	"time"
)

// BodyHeader is the size of the header every benchmark body starts with: the
// due time (unix ns, big endian) and the sequence number within a run.
const BodyHeader = 16

// Msg is one message the harness offers to a design. Due is unix ns, always
// a whole millisecond so that designs with millisecond APIs (at=UNIX_MS,
// ZSET scores) are never early by rounding. Body carries Due and Seq; a
// design must publish Body unchanged.
type Msg struct {
	Seq  uint64
	Due  int64
	Body []byte
}

// DueTime is m.Due as a time.Time.
func (m Msg) DueTime() time.Time { return time.Unix(0, m.Due) }

// NewMsg builds a message of size bytes (at least BodyHeader) due at due,
// truncated to the millisecond.
func NewMsg(seq uint64, due time.Time, size int) Msg {
	if size < BodyHeader {
		size = BodyHeader
	}
	d := due.UnixNano() / 1e6 * 1e6
	b := make([]byte, size)
	binary.BigEndian.PutUint64(b[0:8], uint64(d))
	binary.BigEndian.PutUint64(b[8:16], seq)
	for i := BodyHeader; i < size; i++ {
		b[i] = 'x'
	}
	return Msg{Seq: seq, Due: d, Body: b}
}

var errShortBody = errors.New("benchmarks: body shorter than header")

// DecodeBody reads the due time (unix ns) and sequence number from a body.
func DecodeBody(b []byte) (due int64, seq uint64, err error) {
	if len(b) < BodyHeader {
		return 0, 0, errShortBody
	}
	return int64(binary.BigEndian.Uint64(b[0:8])), binary.BigEndian.Uint64(b[8:16]), nil
}
