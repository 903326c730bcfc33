package benchmarks

import "sync"

// Recorder consumes a topic from nsqd and records, per message, whether and
// how late it arrived. It is safe for concurrent use.
//
// It is the measuring instrument shared by every design, so it is kept
// cheap: it reads through an nsqSub (one V2-protocol connection, the FINs
// of a read in one write; see there). All messages decoded from one read
// share one receive time stamp (the read returned them together).
type Recorder struct {
	mu          sync.Mutex
	counts      []uint8
	late        []int64
	dup, early  int
	first, last int64

	*nsqSub // Err, Stop
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
	r := &Recorder{counts: make([]uint8, n), late: make([]int64, 0, n)}
	s, err := subscribe(nsqdTCP, topic, nsqSubConfig{
		clientID: "deferd-bench", userAgent: "deferd-bench-recorder", channel: "bench",
		buffered: buffered, readBuf: recorderBuf, errPrefix: "recorder",
	}, r.record, nil) // record locks r.mu per message
	if err != nil {
		return nil, err
	}
	r.nsqSub = s
	return r, nil
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
