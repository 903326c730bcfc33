package benchmarks

import (
	"math"
	"math/bits"
	"sync"
	"time"
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

	*nsqSub // Err, Stop
}

// NewSoakConsumer subscribes to topic (channel "soak") for messages with
// seq < n; minutes count from start. buffered is as Load.BufferedConsumer.
func NewSoakConsumer(nsqdTCP, topic string, n int, buffered bool, start time.Time) (*SoakConsumer, error) {
	c := &SoakConsumer{start: start, seen: make([]uint64, (n+63)/64)}
	s, err := subscribe(nsqdTCP, topic, nsqSubConfig{
		clientID: "deferd-soak", userAgent: "deferd-soak-consumer", channel: "soak",
		buffered: buffered, readBuf: 1 << 20, errPrefix: "soak consumer",
	}, c.record, &c.mu) // c.mu held over each read's frames
	if err != nil {
		return nil, err
	}
	c.nsqSub = s
	return c, nil
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
