package deferd

import (
	"io"
	"maps"
	"net"
	"sync"

	"github.com/deferd/deferd/ingest"
)

// Version is deferd's version, reported by /info and cmd/deferd --version.
const Version = "0.2.0"

// ListenHTTP binds deferd's nsqd-compatible HTTP API (ingest.Server) at
// Options.HTTPAddress ("127.0.0.1:0" picks a free port): /pub, /mpub,
// /cancel, /ping, /info, /stats and /metrics (and the operator endpoints;
// with Options.UI, the status page at /). The caller runs Serve on the
// result and shuts it down before Close; requests arriving after Close
// answer 503 EXITING. Its metrics join WritePrometheus, its counts Stats
// (Ingest["http"]). It may be called more than once (one server each);
// safe for concurrent use.
func (s *Scheduler) ListenHTTP() (*ingest.Server, error) {
	b := &httpBackend{s: s, proto: protoHTTP}
	var ln net.Listener // Options.HTTPListener: the first call's
	s.listenersMu.Lock()
	if !s.httpListenerTaken {
		ln, s.httpListenerTaken = s.opts.HTTPListener, true
	}
	s.listenersMu.Unlock()
	backend, ln, err := s.clusterListen(b, ln) // cluster.go; no cluster: b, ln
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, err
	}
	o := s.httpServerOptions(ln)
	o.UI = s.opts.UI
	srv, err := ingest.NewServer(o, backend)
	if err != nil {
		if ln != nil {
			ln.Close()
		}
		return nil, err
	}
	b.addr = srv.Addr()
	s.AddMetrics(srv.Metrics())
	s.listenersMu.Lock()
	s.listeners["http_address"] = srv.Addr()
	s.ingest = append(s.ingest, ingestSource{"http", srv.Stats})
	s.listenersMu.Unlock()
	return srv, nil
}

// httpBackend is the Scheduler as ingest sees it: requests already parsed
// and validated by nsqd's rules go to the unexported publish path, and the
// sentinel errors come back for ingest to map to nsqd's answers.
type httpBackend struct {
	s     *Scheduler
	addr  string
	proto ingestProto // protoHTTP, or protoTCP for ListenTCP's
}

func (b *httpBackend) Publish(req *ingest.PubRequest) error {
	return b.s.publish(b.proto, req.Topic, req.Bodies, req.Due, req.ID)
}

func (b *httpBackend) Cancel(id string) error   { return b.s.Cancel(id) }
func (b *httpBackend) Stats() any               { return b.s.Stats() }
func (b *httpBackend) WriteMetrics(w io.Writer) { b.s.WritePrometheus(w) }

// WritesServerMetrics tells ingest that WriteMetrics already writes the
// Server's own set: ListenHTTP adds it with AddMetrics, so the families it
// shares with the TCP listener's set are written once, merged.
func (b *httpBackend) WritesServerMetrics() bool { return true }

func (b *httpBackend) Info() any {
	m := b.s.Info()
	b.s.listenersMu.Lock()
	maps.Copy(m, b.s.listeners)
	b.s.listenersMu.Unlock()
	return m
}

// listenerSet is the listeners' addresses for /info, and their counts for
// /stats.
type listenerSet struct {
	listenersMu sync.Mutex
	listeners   map[string]any
	ingest      []ingestSource // every listener made, in order; under listenersMu

	// httpListenerTaken: a ListenHTTP took Options.HTTPListener;
	// tcpListenerTaken: a ListenTCP took Options.TCPListener.
	httpListenerTaken bool
	tcpListenerTaken  bool

	// The cluster side (cluster.go), made by the first ListenHTTP with
	// Options.ClusterPeers; cluster under listenersMu.
	clusterOnce sync.Once
	cluster     *clusterNode
	clusterErr  error
}

// ingestSource is one listener's counts, by protocol ("http", "tcp").
type ingestSource struct {
	protocol string
	stats    func() ingest.IngestStats
}

// ingestStats returns the listeners' counts by protocol, those of several
// listeners of one protocol summed; nil if there are none.
func (s *Scheduler) ingestStats() map[string]ingest.IngestStats {
	s.listenersMu.Lock()
	src := s.ingest
	s.listenersMu.Unlock()
	if len(src) == 0 {
		return nil
	}
	m := make(map[string]ingest.IngestStats, 2)
	for _, l := range src {
		m[l.protocol] = m[l.protocol].Add(l.stats())
	}
	return m
}

// httpServerOptions is what an HTTP ingest server of s is given, on ln:
// the limits of Options (the public listener adds UI; the cluster's peer
// listener has none).
func (s *Scheduler) httpServerOptions(ln net.Listener) ingest.Options {
	return ingest.Options{
		Addr:                 s.opts.HTTPAddress,
		MaxMsgSize:           s.opts.MaxMsgSize,
		MaxBodySize:          s.opts.MaxBodySize,
		MaxDefer:             s.opts.MaxDefer,
		Logf:                 s.logf,
		MaxConns:             s.opts.HTTPMaxConns,
		HeaderTimeout:        s.opts.HTTPHeaderTimeout,
		BodyTimeout:          s.opts.HTTPBodyTimeout,
		IdleTimeout:          s.opts.HTTPIdleTimeout,
		MaxInflightBodyBytes: s.opts.MaxInflightBodyBytes,
		Listener:             ln,
	}
}
