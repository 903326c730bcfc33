package ingest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"
)

// Frame types of nsqd's V2 protocol.
const (
	frameResponse int32 = 0
	frameError    int32 = 1
)

// tcpReadBuffer is nsqd's client read buffer: a command line longer than
// it ends the connection without an answer, as in nsqd.
const tcpReadBuffer = 16 << 10

// keepBodyBuf is the largest body buffer a connection keeps between
// commands; a larger one is dropped once its command is answered.
const keepBodyBuf = 64 << 10

// After a fatal error the connection is half-closed and what the client
// still sends is read and dropped for this long, at most this much, so the
// error frame reaches it rather than a reset.
const (
	tcpLingerTimeout  = time.Second
	tcpLingerMaxBytes = 8 << 20
)

var (
	magicV2        = []byte("  V2")
	heartbeatBytes = []byte("_heartbeat_")
)

// tcpConn is one client connection. The serve goroutine owns the read side
// and the fields marked so; the heartbeat goroutine only writes frames.
type tcpConn struct {
	s *TCPServer
	c net.Conn
	r *bufio.Reader

	// wmu serializes frame writes; it also guards hb, which the serve
	// goroutine changes (under wmu) and write deadlines read.
	wmu  sync.Mutex
	wbuf []byte
	hb   time.Duration // HeartbeatInterval: 0 = heartbeats off

	// mu guards busy and closing, for Shutdown.
	mu      sync.Mutex
	busy    bool // a command is being read or executed
	closing bool // Shutdown was called

	// Owned by the serve goroutine.
	lenBuf     [4]byte
	body       []byte
	ends       []int // MPUB: end offset of each message in body
	bodies     [][]byte
	params     [][]byte
	req        PubRequest
	ident      tcpIdentity
	hbSet      chan time.Duration // the first IDENTIFY's interval, to the heartbeat goroutine
	hbStop     chan struct{}
	hbDone     chan struct{}
	identified int // IDENTIFY commands accepted
}

func newTCPConn(s *TCPServer, c net.Conn) *tcpConn {
	return &tcpConn{
		s:      s,
		c:      c,
		r:      bufio.NewReaderSize(c, tcpReadBuffer),
		hb:     s.hb,
		ident:  tcpIdentity{msgTimeout: s.msgTimeout, outBufSize: tcpReadBuffer, outBufTimeout: nsqdOutputBufferTimeout},
		hbSet:  make(chan time.Duration, 1),
		hbStop: make(chan struct{}),
		hbDone: make(chan struct{}),
	}
}

// serve runs the connection until the client leaves, a fatal error, a
// deadline or Shutdown; then it closes it and stops its heartbeats.
func (tc *tcpConn) serve() {
	defer tc.s.untrack(tc)
	defer tc.c.Close()
	defer func() {
		if p := recover(); p != nil {
			tc.s.logf("ingest: panic in TCP connection %s: %v", tc.c.RemoteAddr(), p)
		}
	}()
	if !tc.setIdle() { // nsqd waits for the magic without a deadline
		return
	}
	var magic [4]byte
	if _, err := io.ReadFull(tc.r, magic[:]); err != nil {
		return
	}
	if !bytes.Equal(magic[:], magicV2) {
		tc.s.m.error("E_BAD_PROTOCOL")
		tc.writeFrame(frameError, []byte("E_BAD_PROTOCOL"))
		tc.linger()
		return
	}
	go tc.heartbeats(tc.s.hb)
	defer func() {
		close(tc.hbStop)
		<-tc.hbDone
	}()
	for tc.next() {
	}
}

// next reads and answers one command; false ends the connection.
func (tc *tcpConn) next() bool {
	if !tc.setIdle() {
		return false
	}
	if _, err := tc.r.Peek(1); err != nil {
		return false
	}
	if !tc.setBusy() {
		return false // Shutdown came as the command began: it is not answered
	}
	defer tc.releaseBuffers()
	line, err := tc.r.ReadSlice('\n')
	if err != nil {
		return false // EOF, a line over 16 KiB, a deadline: nsqd closes without a word
	}
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	tc.params = splitParams(tc.params[:0], line)
	tc.s.m.command(tc.params[0])
	resp, e := tc.exec()
	if e != nil {
		tc.s.m.error(e.code)
		if tc.writeFrame(frameError, e.frame()) == nil {
			tc.linger()
		}
		return false // every error deferd can send is fatal in nsqd
	}
	if resp != nil && tc.writeFrame(frameResponse, resp) != nil {
		return false
	}
	return true
}

// splitParams is bytes.Split(line, " ") into dst: nsqd's command words,
// empty ones included.
func splitParams(dst [][]byte, line []byte) [][]byte {
	for {
		i := bytes.IndexByte(line, ' ')
		if i < 0 {
			return append(dst, line)
		}
		dst = append(dst, line[:i])
		line = line[i+1:]
	}
}

// setIdle marks the connection as waiting for a command (or the magic)
// and sets the read deadline nsqd sets before a command: two heartbeat
// intervals, none with heartbeats off. It reports false if Shutdown was
// called.
func (tc *tcpConn) setIdle() bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.closing {
		return false
	}
	tc.busy = false
	var dl time.Time
	if tc.hb > 0 {
		dl = time.Now().Add(2 * tc.hb)
	}
	tc.c.SetReadDeadline(dl)
	return true
}

// setBusy marks a command as begun. With heartbeats on, the deadline set
// while idle covers the whole command, as in nsqd; with heartbeats off
// (where nsqd has none) the rest of the command must come within two
// MaxHeartbeatIntervals, so a client stalled mid-frame is closed.
func (tc *tcpConn) setBusy() bool {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	if tc.closing {
		return false
	}
	tc.busy = true
	if tc.hb == 0 {
		tc.c.SetReadDeadline(time.Now().Add(2 * tc.s.maxHB))
	}
	return true
}

// wake is Shutdown's: an idle connection's read fails at once; a busy one
// ends after its command.
func (tc *tcpConn) wake() {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	tc.closing = true
	if !tc.busy {
		tc.c.SetReadDeadline(time.Now())
	}
}

// setHeartbeat changes the interval deadlines use (IDENTIFY).
func (tc *tcpConn) setHeartbeat(d time.Duration) {
	tc.wmu.Lock()
	tc.hb = d
	tc.wmu.Unlock()
}

// writeFrame sends one [size][type][data] frame. The write deadline is the
// heartbeat interval, as in nsqd (with heartbeats off, where nsqd has none,
// MaxHeartbeatInterval). Safe for concurrent use.
func (tc *tcpConn) writeFrame(typ int32, data []byte) error {
	tc.wmu.Lock()
	defer tc.wmu.Unlock()
	d := tc.hb
	if d <= 0 {
		d = tc.s.maxHB
	}
	tc.c.SetWriteDeadline(time.Now().Add(d))
	b := binary.BigEndian.AppendUint32(tc.wbuf[:0], uint32(len(data))+4)
	b = binary.BigEndian.AppendUint32(b, uint32(typ))
	b = append(b, data...)
	tc.wbuf = b
	_, err := tc.c.Write(b)
	if cap(tc.wbuf) > keepBodyBuf {
		tc.wbuf = nil
	}
	return err
}

// heartbeats sends `_heartbeat_` frames every d, and from the first
// IDENTIFY on at the interval it negotiated (none for -1); later IDENTIFYs
// change only the deadlines, as in nsqd, whose message pump takes one
// IDENTIFY event. It ends on hbStop, or closes the connection if a write
// fails.
func (tc *tcpConn) heartbeats(d time.Duration) {
	defer close(tc.hbDone)
	t := time.NewTicker(d)
	defer func() { t.Stop() }()
	tick, set := t.C, tc.hbSet
	for {
		select {
		case <-tc.hbStop:
			return
		case d := <-set:
			set = nil
			t.Stop()
			tick = nil
			if d > 0 {
				t = time.NewTicker(d)
				tick = t.C
			}
		case <-tick:
			tc.s.m.heartbeat.Inc()
			if err := tc.writeFrame(frameResponse, heartbeatBytes); err != nil {
				tc.c.Close()
				return
			}
		}
	}
}

// linger half-closes the connection and drops what the client still
// sends, until it closes, tcpLingerTimeout or tcpLingerMaxBytes; the
// caller then closes it. nsqd closes at once, which resets the connection
// if the client had sent more, and can destroy the error frame.
func (tc *tcpConn) linger() {
	cw, ok := tc.c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	tc.c.SetReadDeadline(time.Now().Add(tcpLingerTimeout))
	io.CopyN(io.Discard, tc.r, tcpLingerMaxBytes)
}

// releaseBuffers drops a large body buffer once its command is answered.
func (tc *tcpConn) releaseBuffers() {
	if cap(tc.body) > keepBodyBuf {
		tc.body = nil
	}
	if cap(tc.ends) > keepBodyBuf/8 {
		tc.ends, tc.bodies = nil, nil
	}
	clear(tc.bodies[:cap(tc.bodies)])
	tc.req = PubRequest{}
}

// readLen reads a 4-byte big-endian length as nsqd's readLen: an int32.
func (tc *tcpConn) readLen() (int32, error) {
	if _, err := io.ReadFull(tc.r, tc.lenBuf[:]); err != nil {
		return 0, err
	}
	return int32(binary.BigEndian.Uint32(tc.lenBuf[:])), nil
}

// readN appends the next n bytes to tc.body, growing it only as bytes
// arrive (at most doubling what came, plus 64 KiB), so a client that
// declares a large body and stalls holds little memory.
func (tc *tcpConn) readN(n int) error {
	for n > 0 {
		l := len(tc.body)
		if l == cap(tc.body) {
			nb := make([]byte, l, l+min(n, max(l, keepBodyBuf)))
			copy(nb, tc.body)
			tc.body = nb
		}
		k := min(n, cap(tc.body)-l)
		if _, err := io.ReadFull(tc.r, tc.body[l:l+k]); err != nil {
			return err
		}
		tc.body = tc.body[:l+k]
		n -= k
	}
	return nil
}
