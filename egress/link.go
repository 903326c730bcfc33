package egress

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/nsqio/go-nsq"
)

// maxKeptBuf is the largest MPUB buffer a link keeps between batches: a
// larger one (a batch of big bodies) is dropped after its write, so an
// idle link holds at most this much.
const maxKeptBuf = 1 << 20

// link is one TCP connection to an nsqd for MPUBs, made with go-nsq's Conn
// (dial, IDENTIFY, heartbeats, the read loop) rather than its Producer, so
// that each batch is encoded into the link's reused buffer instead of a
// fresh command per call, and nsqd's answer goes from go-nsq's read loop
// to the waiting sender directly.
//
// A link dials once, on first use (dial), and never redials: once its
// connection failed, closed or never came up it is lost, and its conn
// slot replaces it with a fresh link (Publisher.replace).
//
// MPUBs are pipelined: write encodes a batch, queues a waiter and writes
// the command in one critical section (wmu), so the waiters are in the
// order nsqd answers in, and each answer (OK, or an error frame) goes to
// the oldest. When go-nsq closes the connection (OnClose) the waiters
// left get nsq.ErrNotConnected. Safe for concurrent use.
type link struct {
	addr string
	cfg  *nsq.Config // shared, read-only: go-nsq's Conn only reads it
	logf func(format string, args ...any)

	lost atomic.Bool // failed, closed or never connected: replace before use
	used atomic.Bool // an MPUB on it was answered OK

	dialMu  sync.Mutex    // guards dialing
	dialing bool          // dial started (or stop ended it before one did)
	dialed  chan struct{} // closed when the dial ended; nc and dialErr are set before
	nc      *nsq.Conn     // nil if the dial failed
	dialErr error

	wmu   sync.Mutex  // serialises encode, queue and write: queue order is write order
	buf   []byte      // the MPUB body being written (count, then size and bytes per message)
	topic string      // the topic cmd.Name was built for
	cmd   nsq.Command // Name is "MPUB <topic>", Params empty: the bytes of go-nsq's MultiPublish

	qmu     sync.Mutex
	waiting []chan error // one per MPUB written and not yet answered; from head on
	head    int
	closed  bool          // go-nsq closed the connection: no answer will come
	done    chan struct{} // closed with closed
}

func newLink(addr string, cfg *nsq.Config, logf func(string, ...any)) *link {
	return &link{addr: addr, cfg: cfg, logf: logf, dialed: make(chan struct{}), done: make(chan struct{})}
}

// dial returns a channel closed once the link's dial ended, starting the
// dial on the first call on its own goroutine, so a caller can stop
// waiting for it (go-nsq's dial is bounded by DialTimeout, its IDENTIFY
// only by the read timeout). After a stop it never dials. Fast path for
// a dialled link: one receive from a closed channel in the caller.
func (l *link) dial() <-chan struct{} {
	l.dialMu.Lock()
	defer l.dialMu.Unlock()
	if !l.dialing {
		l.dialing = true
		go l.connect()
	}
	return l.dialed
}

func (l *link) connect() {
	nc := nsq.NewConn(l.addr, l.cfg, linkDelegate{l})
	nc.SetLogger(nsqLogger{logf: l.logf, addr: l.addr}, nsq.LogLevelWarning, "(%s)")
	if _, err := nc.Connect(); err != nil {
		nc.Close()
		l.lost.Store(true)
		l.dialErr = err
	} else {
		l.nc = nc
	}
	close(l.dialed)
}

// write sends one MPUB of bodies to topic on the dialled link (the
// caller waited for dial's channel) and returns the channel its answer
// arrives on: nil for OK, nsq.ErrProtocol for an error frame,
// nsq.ErrNotConnected if the connection closed first. The channel is
// buffered, so a caller may stop waiting. bodies are copied into the
// link's buffer and written before write returns; it keeps none of them.
// It blocks while other writes on the link are in progress (each bounded
// by go-nsq's WriteTimeout).
func (l *link) write(topic string, bodies [][]byte) (<-chan error, error) {
	if l.nc == nil {
		return nil, l.dialErr
	}
	ans := make(chan error, 1)
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if !l.enqueue(ans) {
		return nil, nsq.ErrNotConnected
	}
	l.encode(topic, bodies)
	// On an error go-nsq calls OnIOError, which closes the connection;
	// OnClose then fails ans with the others.
	err := l.nc.WriteCommand(&l.cmd)
	l.cmd.Body = nil
	if cap(l.buf) > maxKeptBuf {
		l.buf = nil
	}
	return ans, err
}

// encode builds the MPUB command for bodies in l.cmd, its body in l.buf:
// the same bytes as go-nsq's MultiPublish. Called with wmu held.
func (l *link) encode(topic string, bodies [][]byte) {
	if l.cmd.Name == nil || topic != l.topic {
		l.topic = topic
		l.cmd.Name = append([]byte("MPUB "), topic...)
	}
	size := 4
	for _, b := range bodies {
		size += 4 + len(b)
	}
	buf := slices.Grow(l.buf[:0], size)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(bodies)))
	for _, b := range bodies {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(b)))
		buf = append(buf, b...)
	}
	l.buf = buf
	l.cmd.Body = buf
}

// enqueue queues ans for the next answer, or reports false when the
// connection is already closed.
func (l *link) enqueue(ans chan error) bool {
	l.qmu.Lock()
	defer l.qmu.Unlock()
	if l.closed {
		return false
	}
	if l.head > 0 && 2*l.head >= len(l.waiting) {
		// Give back the answered slots: a link never idle never reaches
		// answer's reset, and the queue would keep one per MPUB sent.
		n := copy(l.waiting, l.waiting[l.head:])
		clear(l.waiting[n:])
		l.waiting, l.head = l.waiting[:n], 0
	}
	l.waiting = append(l.waiting, ans)
	return true
}

// answer gives err to the oldest waiter. An answer nobody waits for
// breaks the link (the stream is out of step): it is closed.
func (l *link) answer(c *nsq.Conn, err error) {
	l.qmu.Lock()
	var ans chan error
	if l.head < len(l.waiting) {
		ans = l.waiting[l.head]
		l.waiting[l.head] = nil
		if l.head++; l.head == len(l.waiting) {
			l.waiting, l.head = l.waiting[:0], 0
		}
	}
	l.qmu.Unlock()
	if ans == nil {
		l.lost.Store(true)
		l.logf("egress: nsqd %s: an answer to no MPUB (%v): closing the connection", l.addr, err)
		c.Close()
		return
	}
	ans <- err
}

// closeQueue fails every waiter left and every later write with
// nsq.ErrNotConnected: go-nsq closed the connection.
func (l *link) closeQueue() {
	l.lost.Store(true)
	l.qmu.Lock()
	left := l.waiting[l.head:]
	l.waiting, l.head, l.closed = nil, 0, true
	l.qmu.Unlock()
	for _, ans := range left {
		ans <- nsq.ErrNotConnected
	}
	close(l.done)
}

// stop closes the link's connection and waits until go-nsq's loops ended
// (OnClose, which fails the MPUBs still waiting), at most about 100 ms
// after a dial; a dial in progress is waited for first (DialTimeout, and
// up to the read timeout for an nsqd that never answers IDENTIFY). A link
// never dialled is not dialled after. Idempotent; safe for concurrent use.
func (l *link) stop() {
	l.dialMu.Lock()
	if !l.dialing {
		l.dialing = true
		l.lost.Store(true)
		l.dialErr = ErrStopped
		close(l.dialed)
	}
	l.dialMu.Unlock()
	<-l.dialed
	if l.nc == nil {
		return
	}
	l.nc.Close()
	<-l.done
}

// linkDelegate is a link's go-nsq ConnDelegate. go-nsq calls it on the
// connection's read loop (answers, read errors, OnClose) and, for a
// failed write, on the writer's goroutine; none of these block.
type linkDelegate struct{ l *link }

var errUnexpectedAnswer = errors.New("egress: nsqd answered an MPUB with neither OK nor an error")

// OnResponse is nsqd's answer to the oldest MPUB: OK. go-nsq answers
// heartbeats itself; they do not come here.
func (d linkDelegate) OnResponse(c *nsq.Conn, data []byte) {
	if string(data) != "OK" {
		d.l.lost.Store(true)
		d.l.answer(c, fmt.Errorf("%w: %q", errUnexpectedAnswer, data))
		c.Close()
		return
	}
	d.l.answer(c, nil)
}

// OnError is an error frame for the oldest MPUB (nsqd closes the
// connection after it).
func (d linkDelegate) OnError(c *nsq.Conn, data []byte) {
	d.l.lost.Store(true)
	d.l.answer(c, nsq.ErrProtocol{Reason: string(data)})
}

// OnIOError is a failed read or write: go-nsq logged it; the connection
// is closed so its loops end and OnClose fails the waiters.
func (d linkDelegate) OnIOError(c *nsq.Conn, _ error) {
	d.l.lost.Store(true)
	c.Close()
}

func (d linkDelegate) OnClose(*nsq.Conn) { d.l.closeQueue() }

// A publishing connection receives no messages and has no RDY state.
func (linkDelegate) OnMessage(*nsq.Conn, *nsq.Message)         {}
func (linkDelegate) OnMessageFinished(*nsq.Conn, *nsq.Message) {}
func (linkDelegate) OnMessageRequeued(*nsq.Conn, *nsq.Message) {}
func (linkDelegate) OnBackoff(*nsq.Conn)                       {}
func (linkDelegate) OnContinue(*nsq.Conn)                      {}
func (linkDelegate) OnResume(*nsq.Conn)                        {}
func (linkDelegate) OnHeartbeat(*nsq.Conn)                     {}

// nsqLogger routes go-nsq's log lines for one nsqd (warnings and errors)
// to Options.Logf.
type nsqLogger struct {
	logf func(format string, args ...any)
	addr string
}

func (l nsqLogger) Output(_ int, s string) error {
	l.logf("egress: nsqd %s: %s", l.addr, s)
	return nil
}
