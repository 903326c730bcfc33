package ingest

import (
	"bytes"
	"encoding/binary"
)

// Errors the request checks return; every one is nsqd's word for the same
// failure, except INVALID_ID and MISSING_ARG_ID, which are deferd's.
var (
	errMsgTooBig        = &Error{413, "MSG_TOO_BIG"}
	errBodyTooBig       = &Error{413, "BODY_TOO_BIG"}
	errBadBody          = &Error{413, "BAD_BODY"}
	errBadMessage       = &Error{413, "BAD_MESSAGE"}
	errMsgEmpty         = &Error{400, "MSG_EMPTY"}
	errInvalidRequest   = &Error{400, "INVALID_REQUEST"}
	errMissingTopic     = &Error{400, "MISSING_ARG_TOPIC"}
	errInvalidTopic     = &Error{400, "INVALID_TOPIC"}
	errInvalidDefer     = &Error{400, "INVALID_DEFER"}
	errInvalidID        = &Error{400, "INVALID_ID"}
	errMissingID        = &Error{400, "MISSING_ARG_ID"}
	errInternal         = &Error{500, "INTERNAL_ERROR"}
	errNotFound         = ErrNotFound
	errMethodNotAllowed = &Error{405, "METHOD_NOT_ALLOWED"}
)

// maxQueryParams is net/url's default limit on query parameters (GODEBUG
// urlmaxqueryparams), past which nsqd's url.ParseQuery fails.
const maxQueryParams = 10000

// validQuery reports whether url.ParseQuery, as nsqd calls it, accepts the
// raw query q: at most maxQueryParams parameters, no ';' in a parameter and
// every '%' followed by two hex digits. O(len(q)), no allocations.
func validQuery(q []byte) bool {
	if bytes.Count(q, []byte{'&'})+1 > maxQueryParams {
		return false
	}
	for len(q) > 0 {
		pair := q
		if i := bytes.IndexByte(q, '&'); i >= 0 {
			pair, q = q[:i], q[i+1:]
		} else {
			q = nil
		}
		if bytes.IndexByte(pair, ';') >= 0 {
			return false
		}
		for i := 0; i < len(pair); i++ {
			if pair[i] != '%' {
				continue
			}
			if i+2 >= len(pair) || !isHex(pair[i+1]) || !isHex(pair[i+2]) {
				return false
			}
			i += 2
		}
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// MaxIDLen is the longest client id /pub accepts.
const MaxIDLen = 128

// validID reports whether id is a valid client id: 1..MaxIDLen bytes, each
// printable ASCII from '!' to '~'.
func validID(id []byte) bool {
	if len(id) < 1 || len(id) > MaxIDLen {
		return false
	}
	for _, c := range id {
		if c < '!' || c > '~' {
			return false
		}
	}
	return true
}

// parseInt is strconv.ParseInt(string(b), 10, 64) without the allocation:
// an optional sign, then one or more decimal digits, in int64 range.
func parseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && (b[0] == '+' || b[0] == '-') {
		neg = b[0] == '-'
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, false
	}
	const cutoff = uint64(1 << 63)
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > cutoff/10 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
		if n > cutoff {
			return 0, false
		}
	}
	if !neg && n == cutoff {
		return 0, false
	}
	if neg {
		return -int64(n), true
	}
	return int64(n), true
}

// splitText appends the messages of a text /mpub body to dst the way nsqd
// 1.3.0 reads them through io.LimitReader(body, maxBody+1): one message per
// '\n'-terminated line, empty lines dropped, BODY_TOO_BIG once maxBody+1
// bytes are seen, MSG_TOO_BIG for a line over maxMsg, whichever comes first.
// body holds at most maxBody+1 bytes of the request. The messages alias body,
// each capped to its length. O(len(body)).
func splitText(dst [][]byte, body []byte, maxMsg, maxBody int64) ([][]byte, *Error) {
	readMax := maxBody + 1
	var total int64
	for len(body) > 0 {
		block := body
		if i := bytes.IndexByte(body, '\n'); i >= 0 {
			block, body = body[:i+1], body[i+1:]
		} else {
			body = nil
		}
		total += int64(len(block))
		if total == readMax {
			return dst, errBodyTooBig
		}
		if block[len(block)-1] == '\n' {
			block = block[:len(block)-1]
		}
		if len(block) == 0 {
			continue
		}
		if int64(len(block)) > maxMsg {
			return dst, errMsgTooBig
		}
		dst = append(dst, block[:len(block):len(block)])
	}
	return dst, nil
}

// splitBinary appends the messages of a binary /mpub body to dst, checking
// them as nsqd 1.3.0's readMPUB does (all errors are 413): BAD_BODY for a
// missing or out-of-range count, BAD_MESSAGE for a missing, non-positive or
// over-maxMsg size or a short body. Bytes after the counted messages are
// ignored, as nsqd ignores them. truncated says body is only the first
// maxBody+1 bytes of a longer request; running out of such a body is
// BODY_TOO_BIG (nsqd reads binary bodies without a total limit). The
// messages alias body, each capped to its length. O(len(body)).
func splitBinary(dst [][]byte, body []byte, maxMsg, maxBody int64, truncated bool) ([][]byte, *Error) {
	short := errBadMessage
	if truncated {
		short = errBodyTooBig
	}
	if len(body) < 4 {
		if truncated {
			return dst, errBodyTooBig
		}
		return dst, errBadBody
	}
	n := int32(binary.BigEndian.Uint32(body))
	if n <= 0 || int64(n) > (maxBody-4)/5 {
		return dst, errBadBody
	}
	p := body[4:]
	for i := int32(0); i < n; i++ {
		if len(p) < 4 {
			return dst, short
		}
		size := int32(binary.BigEndian.Uint32(p))
		if size <= 0 || int64(size) > maxMsg {
			return dst, errBadMessage
		}
		p = p[4:]
		if len(p) < int(size) {
			return dst, short
		}
		dst = append(dst, p[:size:size])
		p = p[size:]
	}
	return dst, nil
}

// ValidID reports whether id is a valid client id (1..MaxIDLen bytes of
// printable ASCII from '!' to '~'). O(len(id)); no allocation.
func ValidID(id string) bool { return validID([]byte(id)) }
