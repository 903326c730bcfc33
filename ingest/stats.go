package ingest

import (
	"maps"
	"strconv"
	"strings"

	"github.com/VictoriaMetrics/metrics"
)

// IngestStats are one listener's counts since it was created (or the sum
// of several listeners' of one protocol, see Add): what its metrics.Set
// exports, as a value for a /stats body.
type IngestStats struct {
	// Requests counts requests by HTTP path (/pub, /mpub, /cancel) or
	// commands by TCP command name (IDENTIFY, PUB, MPUB, DPUB, ... and
	// "unknown"); every name is present, zero or not.
	Requests map[string]uint64 `json:"requests"`
	// Messages and MessageBytes count the message bodies accepted by the
	// parser and handed to the Backend (whatever it answered).
	Messages     uint64 `json:"messages"`
	MessageBytes uint64 `json:"message_bytes"`
	// Errors counts the error answers sent, by answer: for HTTP "<status>
	// <message>" (e.g. "400 MSG_TOO_BIG"), for TCP nsqd's error code (e.g.
	// "E_BAD_TOPIC"). Only answers sent at least once are present.
	Errors map[string]uint64 `json:"errors"`
	// Connections is the TCP listener's connections; nil for HTTP.
	Connections *ConnStats `json:"connections,omitempty"`
}

// ConnStats are a TCP listener's connection counts.
type ConnStats struct {
	Open       int64  `json:"open"`       // now
	Accepted   uint64 `json:"accepted"`   // since start
	Refused    uint64 `json:"refused"`    // closed at once: beyond MaxConns
	Heartbeats uint64 `json:"heartbeats"` // heartbeats sent
}

// Stats returns the Server's counts since NewServer: requests by path,
// messages and bytes, errors by "<status> <message>". It reads the
// Server's metrics.Set, so it costs O(series). Safe for concurrent use,
// also after Shutdown.
func (s *Server) Stats() IngestStats {
	return IngestStats{
		Requests:     map[string]uint64{"/pub": s.m.pub.Get(), "/mpub": s.m.mpub.Get(), "/cancel": s.m.cancel.Get()},
		Messages:     s.m.messages.Get(),
		MessageBytes: s.m.messageBytes.Get(),
		Errors: errorCounts(s.m.set, func(l map[string]string) string {
			return l["code"] + " " + l["message"]
		}),
	}
}

// Stats returns the server's counts since NewTCPServer: commands by name,
// messages and bytes, error frames by nsqd code, connections. It reads
// the server's metrics.Set, so it costs O(series). Safe for concurrent
// use, also after Shutdown.
func (s *TCPServer) Stats() IngestStats {
	m := &s.m
	req := make(map[string]uint64, len(m.commands)+1)
	for name, c := range m.commands {
		req[name] = c.Get()
	}
	req["unknown"] = m.unknown.Get()
	return IngestStats{
		Requests:     req,
		Messages:     m.messages.Get(),
		MessageBytes: m.bytes.Get(),
		Errors:       errorCounts(m.set, func(l map[string]string) string { return l["code"] }),
		Connections: &ConnStats{
			Open:       s.open.Load(),
			Accepted:   m.accepted.Get(),
			Refused:    m.refused.Get(),
			Heartbeats: m.heartbeat.Get(),
		},
	}
}

// errorFamily is the error counters' family in both listeners' sets.
const errorFamily = "deferd_ingest_errors_total"

// errorCounts returns set's error counters by key(labels), summed over
// series with the same key. Series whose labels do not parse are
// skipped (the sets' own series always parse).
func errorCounts(set *metrics.Set, key func(labels map[string]string) string) map[string]uint64 {
	out := map[string]uint64{}
	for _, name := range set.ListMetricNames() {
		rest, ok := strings.CutPrefix(name, errorFamily+"{")
		if !ok {
			continue
		}
		labels, ok := parseLabels(rest)
		if !ok {
			continue
		}
		out[key(labels)] += set.GetOrCreateCounter(name).Get()
	}
	return out
}

// parseLabels parses `a="x",b="y"}` (the end of a series name after its
// '{'), values in Go's quoted syntax as strconv.Quote writes them.
func parseLabels(s string) (map[string]string, bool) {
	m := map[string]string{}
	for s != "}" {
		name, rest, ok := strings.Cut(s, "=")
		if !ok {
			return nil, false
		}
		q, err := strconv.QuotedPrefix(rest)
		if err != nil {
			return nil, false
		}
		v, err := strconv.Unquote(q)
		if err != nil {
			return nil, false
		}
		m[name] = v
		switch s = rest[len(q):]; {
		case s == "}":
		case strings.HasPrefix(s, ",") && len(s) > 2:
			s = s[1:]
		default:
			return nil, false
		}
	}
	return m, true
}

// Add returns the sum of a and b (maps and Connections are new; neither
// argument is modified).
func (a IngestStats) Add(b IngestStats) IngestStats {
	sum := IngestStats{
		Requests:     maps.Clone(a.Requests),
		Messages:     a.Messages + b.Messages,
		MessageBytes: a.MessageBytes + b.MessageBytes,
		Errors:       maps.Clone(a.Errors),
	}
	if sum.Requests == nil {
		sum.Requests = map[string]uint64{}
	}
	if sum.Errors == nil {
		sum.Errors = map[string]uint64{}
	}
	for k, v := range b.Requests {
		sum.Requests[k] += v
	}
	for k, v := range b.Errors {
		sum.Errors[k] += v
	}
	if a.Connections != nil || b.Connections != nil {
		var x, y ConnStats
		if a.Connections != nil {
			x = *a.Connections
		}
		if b.Connections != nil {
			y = *b.Connections
		}
		sum.Connections = &ConnStats{
			Open:       x.Open + y.Open,
			Accepted:   x.Accepted + y.Accepted,
			Refused:    x.Refused + y.Refused,
			Heartbeats: x.Heartbeats + y.Heartbeats,
		}
	}
	return sum
}
