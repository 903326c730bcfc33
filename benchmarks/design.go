package benchmarks

import (
	"context"
	"fmt"
	"io"
	"log"

	"github.com/nsqio/go-nsq"
)

// Env is what a design is given for one run: where nsqd is and which topic
// to publish due messages to.
type Env struct {
	NSQDTCPAddr  string
	NSQDHTTPAddr string
	Topic        string
	// TempDir is a fresh directory the design may use for data files.
	TempDir string
	// Logf receives progress and diagnostics; nil discards them.
	Logf func(format string, args ...any)
}

func (e Env) logf(format string, args ...any) {
	if e.Logf != nil {
		e.Logf(format, args...)
	}
}

// Design is a delayed-message design under test. Start, Submit and Stop are
// called by one harness goroutine at a time, except that Submit may be
// called from several sender goroutines at once and Crash from another.
type Design interface {
	// Name is the design's short name in tables and charts.
	Name() string
	// Start prepares the design to publish due messages to env.Topic.
	Start(env Env) error
	// Submit hands msgs over in order. It returns how many of them (a
	// prefix) the design accepted; it blocks while the design applies
	// backpressure, and returns ctx's error if ctx ends first.
	Submit(ctx context.Context, msgs []Msg) (int, error)
	// Stop stops the design and frees what Start made; messages still
	// pending are dropped.
	Stop() error
	// External lists the PIDs of processes outside this one that do the
	// design's work (nil when it runs entirely in-process); their CPU is
	// counted from /proc.
	External() []int
	// Memory reports the bytes the design holds now and how that number is
	// measured (for Result.MemNote). The harness takes it once after Start
	// as the baseline and once with the messages pending, and divides the
	// difference by their count, so both readings must be taken the same
	// way: in-process designs after the same GC (SelfRSS), external ones by
	// the same counter of the same process.
	Memory() (int64, string)
}

// Crasher is a design that can be crashed mid-run and restarted: what a
// SIGKILL does to it. Crash returns once the design accepts messages again.
// Note describes what the crash does.
type Crasher interface {
	Crash() error
	CrashNote() string
}

// ErrNotRunnable reports that a design cannot run on this machine (for
// example a binary that does not build yet); the runner skips it and says so.
type ErrNotRunnable struct{ Reason string }

func (e *ErrNotRunnable) Error() string { return "not runnable: " + e.Reason }

// quietLogger discards go-nsq's log lines below error.
var quietLogger = log.New(io.Discard, "", 0)

func newProducer(addr string) (*nsq.Producer, error) {
	cfg := nsq.NewConfig()
	p, err := nsq.NewProducer(addr, cfg)
	if err != nil {
		return nil, err
	}
	p.SetLogger(quietLogger, nsq.LogLevelError)
	if err := p.Ping(); err != nil {
		p.Stop()
		return nil, fmt.Errorf("nsqd %s: %w", addr, err)
	}
	return p, nil
}

var extraDesigns = map[string]func() Design{}

// registerDesign adds a design by name for cmd/compare (see wheeldesign.go).
func registerDesign(name string, f func() Design) { extraDesigns[name] = f }

// ExtraDesign returns a design registered by an optional file, if built.
func ExtraDesign(name string) (Design, bool) {
	f, ok := extraDesigns[name]
	if !ok {
		return nil, false
	}
	return f(), true
}
