package deferd

import (
	"net"

	"github.com/deferd/deferd/ingest"
)

// ListenTCP binds nsqd's V2 TCP protocol for producers (ingest.TCPServer)
// at Options.TCPAddress ("127.0.0.1:0" picks a free port; the first call
// serves on Options.TCPListener instead, if set): PUB, MPUB and
// DPUB from go-nsq, pynsq, nsqjs or any nsqd producer, unchanged, into the
// same journal, wheel and sink as HTTP (and the same direct path for
// messages due now). The caller runs Serve on the result and shuts it
// down before Close. Its metrics join WritePrometheus, its counts Stats
// (Ingest["tcp"]). Safe for concurrent use.
func (s *Scheduler) ListenTCP() (*ingest.TCPServer, error) {
	var ln net.Listener // Options.TCPListener: the first call's
	s.listenersMu.Lock()
	if !s.tcpListenerTaken {
		ln, s.tcpListenerTaken = s.opts.TCPListener, true
	}
	s.listenersMu.Unlock()
	srv, err := ingest.NewTCPServer(ingest.TCPOptions{
		Addr:        s.opts.TCPAddress,
		Listener:    ln,
		MaxMsgSize:  s.opts.MaxMsgSize,
		MaxBodySize: s.opts.MaxBodySize,
		MaxDefer:    s.opts.MaxDefer,
		Logf:        s.logf,
	}, &httpBackend{s: s, proto: protoTCP})
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, err
	}
	s.AddMetrics(srv.Metrics())
	s.listenersMu.Lock()
	s.listeners["tcp_address"] = srv.Addr()
	s.ingest = append(s.ingest, ingestSource{"tcp", srv.Stats})
	s.listenersMu.Unlock()
	return srv, nil
}
