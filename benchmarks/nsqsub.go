package benchmarks

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
)

// nsqSub is the connection shared by Recorder and SoakConsumer: one TCP
// connection to nsqd speaking its V2 protocol (commands and framing from
// go-nsq), subscribed to one topic, and one goroutine that reads whatever
// nsqd has sent, hands each message to the caller's record function and
// answers with the FINs of the whole read in one write. go-nsq's Consumer
// flushes one write(2) per FIN, which made the consumer the bottleneck of
// the whole machine past ~100k msg/s. All messages decoded from one read
// share one receive time stamp: the time that read(2) returned, so
// lateness never counts time before a message had fully arrived.
type nsqSub struct {
	conn net.Conn
	done chan struct{}
	err  error // why the read loop ended; set before done closes
}

// nsqSubConfig is what tells one subscriber from another.
type nsqSubConfig struct {
	clientID, userAgent string // IDENTIFY's client_id (and hostname), user_agent
	channel             string
	// buffered lets nsqd buffer its writes to the subscriber (16 KiB or
	// 250 ms, nsqd's defaults for go-nsq); unbuffered measures lateness to
	// the millisecond at any rate but costs nsqd a write per message.
	buffered  bool
	readBuf   int    // the initial read buffer; it grows for a larger frame
	errPrefix string // of the handshake's errors
}

// subscribe connects to nsqd, subscribes to topic on cfg.channel with a
// RDY count of recorderInFlight and starts the read loop. record gets every
// message's body and the time the read that completed it returned. batch,
// if not nil, is held while the frames of one read are handled (record
// runs with it held); with nil, record does its own locking.
func subscribe(nsqdTCP, topic string, cfg nsqSubConfig, record func(body []byte, now int64), batch sync.Locker) (*nsqSub, error) {
	c, err := net.DialTimeout("tcp", nsqdTCP, 5*time.Second)
	if err != nil {
		return nil, err
	}
	ident := map[string]any{
		"client_id":           cfg.clientID,
		"hostname":            cfg.clientID,
		"user_agent":          cfg.userAgent,
		"feature_negotiation": true,
		"heartbeat_interval":  5000,
		"msg_timeout":         60000,
	}
	if cfg.buffered {
		ident["output_buffer_size"] = 16384
		ident["output_buffer_timeout"] = 250
	} else {
		ident["output_buffer_size"] = -1
		ident["output_buffer_timeout"] = -1
	}
	br := bufio.NewReaderSize(c, 1<<20)
	bw := bufio.NewWriterSize(c, 64<<10)
	fail := func(err error) (*nsqSub, error) {
		c.Close()
		return nil, fmt.Errorf("%s: %w", cfg.errPrefix, err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := bw.Write(nsq.MagicV2); err != nil {
		return fail(err)
	}
	cmd, err := nsq.Identify(ident)
	if err != nil {
		return fail(err)
	}
	for _, cmd := range []*nsq.Command{cmd, nsq.Subscribe(topic, cfg.channel)} {
		if _, err := cmd.WriteTo(bw); err != nil {
			return fail(err)
		}
		if err := bw.Flush(); err != nil {
			return fail(err)
		}
		typ, data, err := nsq.ReadUnpackedResponse(br)
		if err != nil {
			return fail(err)
		}
		if typ != nsq.FrameTypeResponse || !(bytes.Equal(data, []byte("OK")) || json.Valid(data)) {
			return fail(fmt.Errorf("%s: nsqd answered %d %q", cmd.Name, typ, data))
		}
	}
	if _, err := nsq.Ready(recorderInFlight).WriteTo(bw); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	c.SetDeadline(time.Time{})
	s := &nsqSub{conn: c, done: make(chan struct{})}
	// Bytes nsqd sent after SUB's answer may already sit in br.
	buf := make([]byte, max(cfg.readBuf, br.Buffered()))
	have, _ := br.Read(buf[:br.Buffered()])
	go s.readLoop(buf, have, bw, record, batch)
	return s, nil
}

// readLoop reads frames until the connection closes; it owns the
// connection's reads and bw.
func (s *nsqSub) readLoop(buf []byte, n int, bw *bufio.Writer, record func([]byte, int64), batch sync.Locker) {
	defer close(s.done)
	now := time.Now().UnixNano()
	start := 0
	for {
		if batch != nil {
			batch.Lock()
		}
		var err error
		buf, start, n, err = handleFrames(buf, start, n, now, bw, record)
		if batch != nil {
			batch.Unlock()
		}
		if err != nil {
			s.err = err
			return
		}
		// Answer everything handled in one write, then read more.
		if err := bw.Flush(); err != nil {
			s.err = err
			return
		}
		n = copy(buf, buf[start:n])
		start = 0
		m, err := s.conn.Read(buf[n:])
		now = time.Now().UnixNano()
		n += m
		if err != nil {
			s.err = err
			return
		}
	}
}

// handleFrames handles every complete frame in buf[start:n], received at
// now, writing the answers to bw, and returns the buffer (grown if the
// incomplete frame left at its end does not fit) and what of it is left.
func handleFrames(buf []byte, start, n int, now int64, bw *bufio.Writer, record func([]byte, int64)) ([]byte, int, int, error) {
	for n-start >= 8 {
		size := int(binary.BigEndian.Uint32(buf[start:]))
		if size < 4 || size > 64<<20 {
			return buf, start, n, fmt.Errorf("bad frame size %d", size)
		}
		if n-start < 4+size {
			if 4+size > len(buf) {
				nb := make([]byte, 4+size)
				n = copy(nb, buf[start:n])
				buf, start = nb, 0
			}
			break
		}
		typ := int32(binary.BigEndian.Uint32(buf[start+4:]))
		body := buf[start+8 : start+4+size]
		start += 4 + size
		switch typ {
		case nsq.FrameTypeMessage:
			// [8 timestamp][2 attempts][16 id][body]
			if len(body) < 26 {
				return buf, start, n, errors.New("short message frame")
			}
			record(body[26:], now)
			// nsq.Finish's command, written without allocating one per
			// message: FIN <16-byte id>\n.
			bw.WriteString("FIN ")
			bw.Write(body[10:26])
			bw.WriteByte('\n')
		case nsq.FrameTypeResponse:
			if bytes.Equal(body, []byte("_heartbeat_")) {
				nsq.Nop().WriteTo(bw)
			}
		case nsq.FrameTypeError:
			// E_FIN_FAILED and the like after a requeue: not fatal.
		}
	}
	return buf, start, n, nil
}

// Err returns why the connection to nsqd ended before Stop, or nil while it
// is up. Messages nsqd sent after that were not counted.
func (s *nsqSub) Err() error {
	select {
	case <-s.done:
		return s.err
	default:
		return nil
	}
}

// Stop disconnects from nsqd and waits for the read loop to end; messages
// still in flight go back to nsqd's queue.
func (s *nsqSub) Stop() {
	s.conn.Close()
	<-s.done
}
