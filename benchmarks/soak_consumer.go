package benchmarks

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"net"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
)

// LatHist is a lateness histogram in microseconds with buckets about 1.6%
// wide (64 per power of two; exact below 128 µs). The zero value is empty.
type LatHist struct {
	Counts []uint64 // by histIndex; grown as needed
	N      uint64
	MaxUS  int64
}

const histSub = 64

// histIndex is the bucket of v µs (v >= 0).
func histIndex(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	e := bits.Len64(v) - 7 // v>>e in [64, 128)
	return (e+1)*histSub + int(v>>e) - histSub
}

// histUpper is the largest value (µs) in bucket i.
func histUpper(i int) int64 {
	if i < 2*histSub {
		return int64(i)
	}
	e := i/histSub - 1
	m := int64(i%histSub + histSub)
	return (m+1)<<e - 1
}

// Add counts one lateness of us microseconds (negative: counted at 0).
func (h *LatHist) Add(us int64) {
	v := uint64(max(us, 0))
	i := histIndex(v)
	if i >= len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, i+1-len(h.Counts))...)
	}
	h.Counts[i]++
	h.N++
	h.MaxUS = max(h.MaxUS, us)
}

// Merge adds o's counts to h.
func (h *LatHist) Merge(o *LatHist) {
	if len(o.Counts) > len(h.Counts) {
		h.Counts = append(h.Counts, make([]uint64, len(o.Counts)-len(h.Counts))...)
	}
	for i, c := range o.Counts {
		h.Counts[i] += c
	}
	h.N += o.N
	h.MaxUS = max(h.MaxUS, o.MaxUS)
}

// Quantile is the upper bound (µs) of the bucket holding quantile q, or
// the exact maximum for q >= 1; 0 when empty.
func (h *LatHist) Quantile(q float64) int64 {
	if h.N == 0 {
		return 0
	}
	if q >= 1 {
		return h.MaxUS
	}
	rank := uint64(max(math.Ceil(q*float64(h.N))-1, 0)) // 0-based
	rank = min(rank, h.N-1)
	var seen uint64
	for i, c := range h.Counts {
		seen += c
		if seen > rank {
			return min(histUpper(i), h.MaxUS)
		}
	}
	return h.MaxUS
}

// SoakConsumer consumes a topic from nsqd for the soak and keeps, per
// message, only whether it arrived (a bit per sequence number), and per
// minute of receive time (since Start) a lateness histogram, so that hours
// of load fit in a few tens of MB. It speaks nsqd's V2 protocol on one
// connection and answers every read's FINs in one write, as Recorder does.
type SoakConsumer struct {
	start time.Time

	mu         sync.Mutex
	seen       []uint64
	delivered  uint64
	dup, early uint64
	minutes    []LatHist

	conn net.Conn
	done chan struct{}
	err  error
}

// NewSoakConsumer subscribes to topic (channel "soak") for messages with
// seq < n; minutes count from start. buffered is as Load.BufferedConsumer.
func NewSoakConsumer(nsqdTCP, topic string, n int, buffered bool, start time.Time) (*SoakConsumer, error) {
	c := &SoakConsumer{start: start, seen: make([]uint64, (n+63)/64), done: make(chan struct{})}
	conn, err := net.DialTimeout("tcp", nsqdTCP, 5*time.Second)
	if err != nil {
		return nil, err
	}
	ident := map[string]any{
		"client_id": "deferd-soak", "hostname": "deferd-soak", "user_agent": "deferd-soak-consumer",
		"feature_negotiation": true, "heartbeat_interval": 5000, "msg_timeout": 60000,
		"output_buffer_size": -1, "output_buffer_timeout": -1,
	}
	if buffered {
		ident["output_buffer_size"], ident["output_buffer_timeout"] = 16384, 250
	}
	br := bufio.NewReaderSize(conn, 1<<20)
	bw := bufio.NewWriterSize(conn, 64<<10)
	fail := func(err error) (*SoakConsumer, error) {
		conn.Close()
		return nil, fmt.Errorf("soak consumer: %w", err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := bw.Write(nsq.MagicV2); err != nil {
		return fail(err)
	}
	idc, err := nsq.Identify(ident)
	if err != nil {
		return fail(err)
	}
	for _, cmd := range []*nsq.Command{idc, nsq.Subscribe(topic, "soak")} {
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
	conn.SetDeadline(time.Time{})
	c.conn = conn
	buf := make([]byte, max(1<<20, br.Buffered()))
	have, _ := br.Read(buf[:br.Buffered()])
	go c.readLoop(buf, have, bw)
	return c, nil
}

func (c *SoakConsumer) readLoop(buf []byte, n int, bw *bufio.Writer) {
	defer close(c.done)
	now := time.Now().UnixNano()
	start := 0
	for {
		c.mu.Lock()
		for n-start >= 8 {
			size := int(binary.BigEndian.Uint32(buf[start:]))
			if size < 4 || size > 64<<20 {
				c.err = fmt.Errorf("bad frame size %d", size)
				c.mu.Unlock()
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
				if len(body) < 26 {
					c.err = errors.New("short message frame")
					c.mu.Unlock()
					return
				}
				c.record(body[26:], now)
				bw.WriteString("FIN ")
				bw.Write(body[10:26])
				bw.WriteByte('\n')
			case nsq.FrameTypeResponse:
				if bytes.Equal(body, []byte("_heartbeat_")) {
					nsq.Nop().WriteTo(bw)
				}
			}
		}
		c.mu.Unlock()
		if err := bw.Flush(); err != nil {
			c.err = err
			return
		}
		n = copy(buf, buf[start:n])
		start = 0
		m, err := c.conn.Read(buf[n:])
		now = time.Now().UnixNano()
		n += m
		if err != nil {
			c.err = err
			return
		}
	}
}

// record counts one body received at now (c.mu held).
func (c *SoakConsumer) record(b []byte, now int64) {
	due, seq, err := DecodeBody(b)
	if err != nil || seq >= uint64(len(c.seen))*64 {
		return
	}
	w, bit := seq/64, uint64(1)<<(seq%64)
	if c.seen[w]&bit != 0 {
		c.dup++
		return
	}
	c.seen[w] |= bit
	c.delivered++
	l := now - due
	if l < 0 {
		c.early++
	}
	m := max(0, int((now-c.start.UnixNano())/int64(time.Minute)))
	for len(c.minutes) <= m {
		c.minutes = append(c.minutes, LatHist{})
	}
	c.minutes[m].Add(l / 1e3)
}

// Counts returns the distinct messages received, duplicates and early ones.
func (c *SoakConsumer) Counts() (delivered, dup, early uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.delivered, c.dup, c.early
}

// Minutes returns a copy of the per-minute lateness histograms.
func (c *SoakConsumer) Minutes() []LatHist {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]LatHist, len(c.minutes))
	for i := range c.minutes {
		out[i].Merge(&c.minutes[i])
	}
	return out
}

// Missing counts the sequence numbers set in accepted that never arrived.
func (c *SoakConsumer) Missing(accepted []uint64) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n uint64
	for i, a := range accepted {
		if i < len(c.seen) {
			a &^= c.seen[i]
		}
		n += uint64(bits.OnesCount64(a))
	}
	return n
}

// Err is why the connection ended before Stop (nil while it is up).
func (c *SoakConsumer) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Stop disconnects and waits for the read loop.
func (c *SoakConsumer) Stop() {
	c.conn.Close()
	<-c.done
}
