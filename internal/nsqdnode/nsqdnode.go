// Package nsqdnode runs a real nsqd (github.com/nsqio/nsq/nsqd) inside the
// current process. deferd uses it for its embedded default broker, and tests
// and benchmarks use it as the real broker they publish to.
package nsqdnode

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsqio/nsq/nsqd"
)

// Config says where an in-process nsqd listens and keeps its data. The zero
// value is not usable: DataPath is required.
type Config struct {
	// TCPAddress and HTTPAddress default to 127.0.0.1:0 (a free port).
	TCPAddress  string
	HTTPAddress string
	// DataPath is nsqd's --data-path. Required.
	DataPath string
	// MemQueueSize is nsqd's --mem-queue-size: messages per topic and per
	// channel kept in memory before nsqd spills to its disk queue. 0 means
	// DefaultMemQueueSize; MemQueueNone means nsqd's 0 (every message goes
	// to the disk queue).
	MemQueueSize int64
	// MaxMsgSize and MaxBodySize are nsqd's --max-msg-size and
	// --max-body-size; 0 keeps nsqd's defaults (1 MiB and 5 MiB).
	MaxMsgSize  int64
	MaxBodySize int64
	// Logger receives nsqd's log lines; nil discards them. The one ERROR
	// nsqd logs for every connected client when Exit closes the connection
	// under it ("failed to read command - ...: use of closed network
	// connection") is expected then, and dropped from the start of Exit on.
	Logger io.Writer
	// LogLevel is nsqd's log level ("debug", "info", "warn", "error",
	// "fatal"); "" means "warn".
	LogLevel string
	// LookupdTCPAddresses are nsqd's --lookupd-tcp-address: the
	// nsqlookupd it registers with (at start, then pinging every 15 s).
	// nil: none.
	LookupdTCPAddresses []string
	// BroadcastAddress is nsqd's --broadcast-address, the host it gives
	// nsqlookupd; "" means "127.0.0.1".
	BroadcastAddress string
}

// DefaultMemQueueSize is the --mem-queue-size deferd gives its embedded
// nsqd. nsqd's own default (10,000) makes a busy topic with no consumer spill
// to nsqd's disk queue, which costs about 6x in publish rate on this class of
// machine; 100,000 keeps a second or so of the reference load in memory per
// topic and channel.
const DefaultMemQueueSize = 100000

// MemQueueNone, as Config.MemQueueSize, gives nsqd --mem-queue-size=0: it
// keeps no message in memory, so none is lost when its process dies.
const MemQueueNone = -1

// Node is a running in-process nsqd. Its methods are safe for concurrent use.
type Node struct {
	NSQD     *nsqd.NSQD
	TCPAddr  string // host:port of the TCP protocol listener
	HTTPAddr string // host:port of the HTTP listener

	once    sync.Once
	done    chan struct{}
	mainErr error
	log     *exitQuietWriter
}

// Start binds and starts an nsqd with cfg. It returns once nsqd answers
// on its HTTP address; nsqd serves until Exit.
func Start(cfg Config) (*Node, error) {
	if cfg.DataPath == "" {
		return nil, fmt.Errorf("nsqdnode: DataPath is required")
	}
	if err := os.MkdirAll(cfg.DataPath, 0o755); err != nil {
		return nil, fmt.Errorf("nsqdnode: %w", err)
	}
	o := nsqd.NewOptions()
	o.TCPAddress = orDefault(cfg.TCPAddress, "127.0.0.1:0")
	o.HTTPAddress = orDefault(cfg.HTTPAddress, "127.0.0.1:0")
	o.HTTPSAddress = ""
	o.BroadcastAddress = orDefault(cfg.BroadcastAddress, "127.0.0.1")
	o.NSQLookupdTCPAddresses = append([]string(nil), cfg.LookupdTCPAddresses...)
	o.DataPath = cfg.DataPath
	switch {
	case cfg.MemQueueSize > 0:
		o.MemQueueSize = cfg.MemQueueSize
	case cfg.MemQueueSize < 0:
		o.MemQueueSize = 0
	default:
		o.MemQueueSize = DefaultMemQueueSize
	}
	if cfg.MaxMsgSize > 0 {
		o.MaxMsgSize = cfg.MaxMsgSize
	}
	if cfg.MaxBodySize > 0 {
		o.MaxBodySize = cfg.MaxBodySize
	}
	w := cfg.Logger
	if w == nil {
		w = io.Discard
	}
	lw := &exitQuietWriter{w: w}
	o.Logger = log.New(lw, "[nsqd] ", log.Ldate|log.Ltime|log.Lmicroseconds)
	if err := o.LogLevel.Set(orDefault(cfg.LogLevel, "warn")); err != nil {
		return nil, fmt.Errorf("nsqdnode: %w", err)
	}
	n, err := nsqd.New(o)
	if err != nil {
		return nil, fmt.Errorf("nsqdnode: %w", err)
	}
	node := &Node{
		NSQD:     n,
		TCPAddr:  n.RealTCPAddr().String(),
		HTTPAddr: n.RealHTTPAddr().String(),
		done:     make(chan struct{}),
		log:      lw,
	}
	go func() {
		node.mainErr = n.Main()
		close(node.done)
	}()
	if err := node.waitServing(10 * time.Second); err != nil {
		node.Exit()
		return nil, err
	}
	return node, nil
}

// waitServing returns once nsqd answers GET /ping. nsqd's Main starts its
// goroutines through a WaitGroup that Exit waits on; an Exit that comes
// before Main got that far races with it (nsqd v1.3.0), and leaves
// goroutines behind. An answered /ping proves Main is past that point.
func (n *Node) waitServing(timeout time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for {
		resp, err := c.Get("http://" + n.HTTPAddr + "/ping")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-n.done:
			return fmt.Errorf("nsqdnode: nsqd exited while starting: %v", n.mainErr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nsqdnode: nsqd not serving on %s after %v: %v", n.HTTPAddr, timeout, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitProducersGone waits up to d until no producer is connected to nsqd.
// A go-nsq Producer's Stop returns before its connection is fully closed;
// calling Exit right after would cut the connection under nsqd's reader,
// which nsqd logs as an ERROR. Consumers are not waited for. Safe for
// concurrent use; it polls nsqd's stats every 5 ms.
func (n *Node) WaitProducersGone(d time.Duration) {
	deadline := time.Now().Add(d)
	for len(n.NSQD.GetStats("", "", true).Producers) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

// Exit stops nsqd: it closes the listeners and persists in-memory messages
// and metadata to DataPath, as nsqd does on SIGTERM. It is idempotent.
func (n *Node) Exit() {
	n.once.Do(func() {
		n.log.exiting.Store(true)
		n.NSQD.Exit()
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
		}
	})
}

// Done is closed when nsqd's Main has returned.
func (n *Node) Done() <-chan struct{} { return n.done }

// exitQuietWriter is the writer under nsqd's log.Logger, which hands it
// one whole line per Write. Once exiting is set it drops the ERROR nsqd
// v1.3.0 logs for each client connection that its Exit closes (tcpServer.Close
// closes them under their IOLoop, whose read then fails):
//
//	ERROR: client(127.0.0.1:53412) - failed to read command - read tcp 127.0.0.1:4150->127.0.0.1:53412: use of closed network connection
//
// Every other line, and that one outside Exit, passes unchanged.
type exitQuietWriter struct {
	w       io.Writer
	exiting atomic.Bool
}

func (q *exitQuietWriter) Write(p []byte) (int, error) {
	if q.exiting.Load() && isExitCloseLine(p) {
		return len(p), nil
	}
	return q.w.Write(p)
}

// isExitCloseLine reports whether p is nsqd's log line for a client
// connection closed under its reader.
func isExitCloseLine(p []byte) bool {
	p = bytes.TrimSuffix(p, []byte("\n"))
	i := bytes.Index(p, []byte("ERROR: client("))
	if i < 0 || !bytes.HasSuffix(p, []byte(": use of closed network connection")) {
		return false
	}
	return bytes.Contains(p[i:], []byte(") - failed to read command - read tcp "))
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
