// Command deferd is a delayed-message scheduler in front of nsqd: the
// github.com/deferd/deferd package with its HTTP API, flags and signals.
//
// With no flags it listens on 127.0.0.1:4180, keeps its journal under
// ./deferd-data and starts an embedded nsqd on 127.0.0.1:4150 (TCP) and
// 127.0.0.1:4151 (HTTP). With --nsqd-tcp-address it publishes to those nsqd
// instead and starts none; with --lookupd-http-address, to the nsqd those
// nsqlookupd list (as well). See README.md.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/deferd/deferd"
	"github.com/deferd/deferd/ingest"
)

// config is deferd's command line: the library's Options (one flag per
// tagged field, defaults from deferd.NewOptions) and --version.
type config struct {
	deferd.Options
	version bool
}

func newFlagSet(c *config) *flag.FlagSet {
	fs := flag.NewFlagSet("deferd", flag.ContinueOnError)
	c.Options = deferd.NewOptions()
	bindOptions(fs, &c.Options)
	fs.BoolVar(&c.version, "version", false, "print version and exit")
	return fs
}

// validate is the library's validation, with the daemon's choice of sink:
// the given nsqd and those the given nsqlookupd list, else an embedded one.
func (c *config) validate() error {
	c.EmbeddedNSQD = len(c.NSQDTCPAddresses) == 0 && len(c.LookupdHTTPAddresses) == 0
	return c.Options.Validate()
}

func main() {
	var c config
	fs := newFlagSet(&c)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if c.version {
		fmt.Println("deferd", deferd.Version)
		return
	}
	logger := log.New(os.Stderr, "[deferd] ", log.Ldate|log.Ltime|log.Lmicroseconds)
	if err := run(c, logger, signalChan()); err != nil {
		logger.Printf("FATAL: %v", err)
		os.Exit(1)
	}
}

// bindListeners binds --http-address into c.HTTPListener and
// --tcp-address (unless "") into c.TCPListener; ListenHTTP and ListenTCP
// serve on them. On error nothing stays bound.
func bindListeners(c *config) error {
	ln, err := net.Listen("tcp", c.HTTPAddress)
	if err != nil {
		return fmt.Errorf("--http-address: %w", err)
	}
	if c.TCPAddress != "" {
		tln, err := net.Listen("tcp", c.TCPAddress)
		if err != nil {
			ln.Close()
			return fmt.Errorf("--tcp-address: %w", err)
		}
		c.TCPListener = tln
	}
	c.HTTPListener = ln
	return nil
}

// closeListeners closes what bindListeners bound, for a start that fails
// before a server took it (closing a listener twice is harmless).
func closeListeners(c *config) {
	c.HTTPListener.Close()
	if c.TCPListener != nil {
		c.TCPListener.Close()
	}
}

func signalChan() <-chan os.Signal {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	return ch
}

// run starts deferd and blocks until a signal arrives on sig or the HTTP
// server fails; then it stops in order: stop taking requests (within the
// grace), then deferd.Scheduler.Close (publishes, journal, embedded nsqd).
func run(c config, logger *log.Logger, sig <-chan os.Signal) error {
	if err := c.validate(); err != nil {
		return err
	}
	c.Logf = logger.Printf
	// Listeners first: a port in use is found before the embedded nsqd
	// starts and the journal is replayed.
	if err := bindListeners(&c); err != nil {
		return err
	}
	s, err := deferd.New(c.Options)
	if err != nil {
		closeListeners(&c)
		return err
	}
	srv, err := s.ListenHTTP()
	if err != nil {
		closeListeners(&c)
		s.Close(c.ShutdownGrace)
		return err
	}
	var tsrv *ingest.TCPServer
	if c.TCPAddress != "" {
		if tsrv, err = s.ListenTCP(); err != nil {
			srv.Shutdown()
			s.Close(c.ShutdownGrace)
			return err
		}
	}
	if a := s.EmbeddedNSQDHTTPAddress(); a != "" {
		logger.Printf("embedded nsqd: TCP %s, HTTP %s", s.NSQDTCPAddresses()[0], a)
	}
	logger.Printf("deferd %s: HTTP %s, data %s (fsync %s), publishing to %s",
		deferd.Version, srv.Addr(), c.DataPath, c.Fsync, strings.Join(s.NSQDTCPAddresses(), ","))

	serveErr := make(chan error, 2)
	go func() { serveErr <- srv.Serve() }()
	if tsrv != nil {
		logger.Printf("TCP (nsqd protocol for producers) %s", tsrv.Addr())
		go func() { serveErr <- tsrv.Serve() }()
	}
	select {
	case sg := <-sig:
		logger.Printf("%v: shutting down (a second signal exits at once)", sg)
	case err = <-serveErr:
		logger.Printf("listener: %v", err)
	}
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case sg := <-sig:
			// What was acknowledged is in the journal (or in nsqd); only
			// an embedded nsqd's in-memory messages are lost.
			logger.Printf("%v again: exiting now", sg)
			os.Exit(1)
		case <-stopped:
		}
	}()
	// Requests get up to the grace (a client stalled mid-request would
	// hold an unbounded wait forever), then Close gives publishes as long.
	var tcpDone sync.WaitGroup
	if tsrv != nil { // alongside HTTP's: the grace bounds both
		tcpDone.Add(1)
		go func() { defer tcpDone.Done(); tsrv.ShutdownWithin(c.ShutdownGrace) }()
	}
	if serr := srv.ShutdownWithin(c.ShutdownGrace); serr != nil {
		logger.Printf("HTTP shutdown: %v (requests still in flight get 503 EXITING)", serr)
	}
	tcpDone.Wait()
	pending := s.Pending()
	if serr := s.Close(c.ShutdownGrace); serr != nil {
		logger.Printf("close: %v", serr)
		if err == nil {
			err = serr
		}
	}
	logger.Printf("stopped; %d messages pending in the journal", pending)
	return err
}
