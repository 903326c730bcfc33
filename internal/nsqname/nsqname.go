// Package nsqname holds nsqd's rule for topic names, shared by ingest
// (which refuses a bad one as nsqd does) and egress (which never sends
// one). It owns nothing else.
package nsqname

// ValidTopic reports whether name is a valid nsqd topic name: 1 to 64
// bytes of [.a-zA-Z0-9_-], the last 10 of which may be "#ephemeral" after
// at least one of those (nsqd's protocol.IsValidTopicName, without its
// regexp). O(len(name)); no allocation; safe for concurrent use.
func ValidTopic[T ~string | ~[]byte](name T) bool {
	const eph = "#ephemeral"
	n := len(name)
	if n < 1 || n > 64 {
		return false
	}
	if n >= len(eph) && string(name[n-len(eph):]) == eph {
		n -= len(eph)
		if n == 0 {
			return false
		}
	}
	for i := range n {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
