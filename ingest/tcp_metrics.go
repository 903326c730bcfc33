package ingest

import (
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
)

// tcpMetrics are one TCPServer's counters, in its own metrics.Set.
type tcpMetrics struct {
	set       *metrics.Set
	commands  map[string]*metrics.Counter // by command name; unknown names count as "unknown"
	unknown   *metrics.Counter
	messages  *metrics.Counter
	bytes     *metrics.Counter
	accepted  *metrics.Counter
	refused   *metrics.Counter
	heartbeat *metrics.Counter
}

// tcpCommands are the commands counted by name: nsqd's V2 commands.
var tcpCommands = [...]string{"IDENTIFY", "AUTH", "PUB", "MPUB", "DPUB", "NOP", "SUB", "RDY", "FIN", "REQ", "TOUCH", "CLS"}

func (m *tcpMetrics) init(open *atomic.Int64) {
	m.set = metrics.NewSet()
	m.commands = make(map[string]*metrics.Counter, len(tcpCommands))
	for _, c := range tcpCommands {
		m.commands[c] = m.set.NewCounter(`deferd_ingest_requests_total{protocol="tcp",command="` + c + `"}`)
	}
	m.unknown = m.set.NewCounter(`deferd_ingest_requests_total{protocol="tcp",command="unknown"}`)
	m.messages = m.set.NewCounter(`deferd_ingest_messages_total{protocol="tcp"}`)
	m.bytes = m.set.NewCounter(`deferd_ingest_message_bytes_total{protocol="tcp"}`)
	m.accepted = m.set.NewCounter(`deferd_ingest_tcp_connections_total`)
	m.refused = m.set.NewCounter(`deferd_ingest_tcp_connections_refused_total`)
	m.heartbeat = m.set.NewCounter(`deferd_ingest_tcp_heartbeats_total`)
	m.set.NewGauge(`deferd_ingest_tcp_connections`, func() float64 { return float64(open.Load()) })
}

// command counts one command line; name aliases the read buffer.
func (m *tcpMetrics) command(name []byte) {
	if c, ok := m.commands[string(name)]; ok {
		c.Inc()
		return
	}
	m.unknown.Inc()
}

// error counts an error frame by its code (one of a fixed set of nsqd's).
func (m *tcpMetrics) error(code string) {
	m.set.GetOrCreateCounter(`deferd_ingest_errors_total{protocol="tcp",code="` + code + `"}`).Inc()
}
