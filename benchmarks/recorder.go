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

// Recorder consumes a topic from nsqd and records, per message, whether and
// how late it arrived. It is safe for concurrent use.
//
// It is the measuring instrument shared by every design, so it is kept
// cheap: one TCP connection speaking nsqd's V2 protocol (commands and
// framing from go-nsq), one goroutine that reads whatever nsqd has sent,
// records it, and answers with the FINs of the whole read in one write.
// go-nsq's Consumer flushes one write(2) per FIN, which made the consumer
// the bottleneck of the whole machine past ~100k msg/s. All messages
// decoded from one read share one receive time stamp (the read returned
// them together).
type Recorder struct {
	mu          sync.Mutex
	counts      []uint8
	late        []int64
	dup, early  int
	first, last int64

	conn net.Conn
	done chan struct{}
	err  error // why the read loop ended; set before done closes
}

// recorderInFlight is the RDY count: how many unfinished messages nsqd may
// have out to the recorder (go-nsq's MaxInFlight).
const recorderInFlight = 2500

// recorderBuf is the initial read buffer; it grows for a larger frame.
var recorderBuf = 1 << 20

// NewRecorder subscribes to topic on nsqd (channel "bench") before anything
// is published, for messages with seq < n. buffered lets nsqd buffer its
// writes to the recorder (16 KiB or 250 ms, nsqd's defaults for go-nsq);
// unbuffered measures lateness to the millisecond at any rate but costs
// nsqd a write per message.
func NewRecorder(nsqdTCP, topic string, n int, buffered bool) (*Recorder, error) {
	r := &Recorder{counts: make([]uint8, n), late: make([]int64, 0, n), done: make(chan struct{})}
	c, err := net.DialTimeout("tcp", nsqdTCP, 5*time.Second)
	if err != nil {
		return nil, err
	}
	ident := map[string]any{
		"client_id":           "deferd-bench",
		"hostname":            "deferd-bench",
		"user_agent":          "deferd-bench-recorder",
		"feature_negotiation": true,
		"heartbeat_interval":  5000,
		"msg_timeout":         60000,
	}
	if buffered {
		ident["output_buffer_size"] = 16384
		ident["output_buffer_timeout"] = 250
	} else {
		ident["output_buffer_size"] = -1
		ident["output_buffer_timeout"] = -1
	}
	br := bufio.NewReaderSize(c, 1<<20)
	bw := bufio.NewWriterSize(c, 64<<10)
	fail := func(err error) (*Recorder, error) {
		c.Close()
		return nil, fmt.Errorf("recorder: %w", err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := bw.Write(nsq.MagicV2); err != nil {
		return fail(err)
	}
	cmd, err := nsq.Identify(ident)
	if err != nil {
		return fail(err)
	}
	for _, cmd := range []*nsq.Command{cmd, nsq.Subscribe(topic, "bench")} {
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
	r.conn = c
	// Bytes nsqd sent after SUB's answer may already sit in br.
	buf := make([]byte, max(recorderBuf, br.Buffered()))
	have, _ := br.Read(buf[:br.Buffered()])
	go r.readLoop(buf, have, bw)
	return r, nil
}

// readLoop reads frames until the connection closes; it owns the
// connection's reads and bw. Every frame completed by one read(2) is stamped
// with the time that read returned, so lateness never counts time before a
// message had fully arrived.
func (r *Recorder) readLoop(buf []byte, n int, bw *bufio.Writer) {
	defer close(r.done)
	now := time.Now().UnixNano()
	start := 0
	for {
		// Handle every complete frame in buf[start:n].
		for n-start >= 8 {
			size := int(binary.BigEndian.Uint32(buf[start:]))
			if size < 4 || size > 64<<20 {
				r.err = fmt.Errorf("bad frame size %d", size)
				return
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
					r.err = errors.New("short message frame")
					return
				}
				r.record(body[26:], now)
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
		// Answer everything handled in one write, then read more.
		if err := bw.Flush(); err != nil {
			r.err = err
			return
		}
		n = copy(buf, buf[start:n])
		start = 0
		m, err := r.conn.Read(buf[n:])
		now = time.Now().UnixNano()
		n += m
		if err != nil {
			r.err = err
			return
		}
	}
}

// record counts one received body.
func (r *Recorder) record(b []byte, now int64) {
	due, seq, err := DecodeBody(b)
	if err != nil || seq >= uint64(len(r.counts)) {
		return // not ours; finished anyway
	}
	r.mu.Lock()
	if r.counts[seq] > 0 {
		r.dup++
	} else {
		if r.first == 0 {
			r.first = now
		}
		l := now - due
		if l < 0 {
			r.early++
		}
		r.late = append(r.late, l)
	}
	if r.counts[seq] < 255 {
		r.counts[seq]++
	}
	r.last = now
	r.mu.Unlock()
}

// Delivered returns how many distinct messages arrived so far.
func (r *Recorder) Delivered() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.late)
}

// Err returns why the connection to nsqd ended before Stop, or nil while it
// is up. Messages nsqd sent after that were not counted.
func (r *Recorder) Err() error {
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// Stop disconnects from nsqd and waits for the read loop to end; messages
// still in flight go back to nsqd's queue.
func (r *Recorder) Stop() {
	r.conn.Close()
	<-r.done
}
