package benchmarks

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Load is one scenario step: what the harness offers a design.
type Load struct {
	Scenario string
	// Rate is the offered rate in msg/s (open loop); 0 offers as fast as
	// the design accepts.
	Rate float64
	// Count is how many messages to offer.
	Count int
	// Size is the body size in bytes (default 500).
	Size int
	// MinDelay and MaxDelay bound each message's delay, uniform between
	// them; equal for a fixed delay.
	MinDelay, MaxDelay time.Duration
	// DueAfter, if set, makes every message due at the same millisecond,
	// this long after the load starts (burst); it overrides the delays.
	DueAfter time.Duration
	// Grace is how long after the last due time the harness waits for
	// stragglers before counting the rest lost (default 15 s).
	Grace time.Duration
	// CrashAfter, if set, crashes and restarts the design (Crasher) this
	// long after the load starts.
	CrashAfter time.Duration
	// Hold offers the messages and measures memory while they are pending
	// instead of waiting for delivery (capacity). A Submit that blocks for
	// a second ends the offer: the design is full.
	Hold bool
	// Batch is the most messages per Submit (default: what 5 ms of Rate
	// makes, at most 500).
	Batch int
	// Senders is the number of goroutines calling Submit (default 4).
	Senders int
	// BufferedConsumer lets nsqd buffer its writes to the measuring
	// consumer (go-nsq's defaults: 16 KiB or 250 ms). Unbuffered (false)
	// measures lateness to the millisecond at any rate but costs nsqd a
	// write(2) per message, which caps every design near 85k msg/s on 2
	// cores; at such rates the buffer fills in well under a millisecond,
	// so buffered is the setting for throughput.
	BufferedConsumer bool
}

// Result is one row of the comparison table.
type Result struct {
	Design, Scenario string
	Offered          float64 // target msg/s; 0 = as fast as accepted
	OfferedActual    float64 // msg/s actually handed to Submit
	Offer, Accepted  int
	Rejected         int // Submit errors (the producer knows these failed)
	Delivered        int // distinct messages received
	Lost             int // accepted, never received within the grace
	Dup, Early       int
	Sustained        float64 // delivered / (last receive - first receive)
	P50, P99, Max    time.Duration
	// Lateness holds every first delivery's lateness, sorted (ns).
	Lateness []int64
	// CPUTotal is all CPU per million delivered messages (this process +
	// the design's external processes); CPUExt is the external part.
	CPUTotal, CPUExt float64
	HasExt           bool
	// MemPerMsg is bytes per pending message (Hold only): Design.Memory
	// with the messages pending minus its baseline after Start, divided by
	// Accepted. It is negative when more was freed meanwhile than the
	// messages hold (WriteTable shows that as 0 and flags it).
	MemPerMsg float64
	MemNote   string
	// Span is last receive minus due (burst) and IngestTime the time to
	// submit every message.
	Span, IngestTime time.Duration
	Note             string
	Skipped          string
}

// Harness runs loads against designs with one nsqd.
type Harness struct {
	NSQDTCPAddr, NSQDHTTPAddr string
	// DeleteTopic frees a topic in nsqd after a run (may be nil).
	DeleteTopic func(topic string)
	TempDir     string
	// Progress receives a line every ProgressEvery while a run lasts.
	Progress      func(format string, args ...any)
	ProgressEvery time.Duration

	runs atomic.Int64
}

func (h *Harness) progress(format string, args ...any) {
	if h.Progress != nil {
		h.Progress(format, args...)
	}
}

// Run offers l to d and returns the measured result. A design that cannot
// run yields a Result with Skipped set and a nil error.
func (h *Harness) Run(d Design, l Load) (Result, error) {
	if l.Size <= 0 {
		l.Size = 500
	}
	if l.Grace <= 0 {
		l.Grace = 15 * time.Second
	}
	if l.Senders <= 0 {
		l.Senders = 4
	}
	if l.Batch <= 0 {
		l.Batch = 500
		if l.Rate > 0 {
			l.Batch = max(1, min(500, int(l.Rate*0.005)))
		}
	}
	res := Result{Design: d.Name(), Scenario: l.Scenario, Offered: l.Rate, Offer: l.Count}
	n := h.runs.Add(1)
	topic := fmt.Sprintf("b%d_%s_%d", n, d.Name(), time.Now().UnixNano()%1e6)
	dir, err := tempDir(h.TempDir, "run-*")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	rec, err := NewRecorder(h.NSQDTCPAddr, topic, l.Count, l.BufferedConsumer)
	if err != nil {
		return res, err
	}
	defer func() {
		rec.Stop()
		if h.DeleteTopic != nil {
			h.DeleteTopic(topic)
		}
	}()
	env := Env{NSQDTCPAddr: h.NSQDTCPAddr, NSQDHTTPAddr: h.NSQDHTTPAddr, Topic: topic, TempDir: dir, Logf: h.Progress}
	if err := d.Start(env); err != nil {
		var nr *ErrNotRunnable
		if errors.As(err, &nr) {
			res.Skipped = nr.Reason
			return res, nil
		}
		return res, fmt.Errorf("%s: start: %w", d.Name(), err)
	}
	stopped := false
	defer func() {
		if !stopped {
			d.Stop()
		}
	}()

	var mem0 int64
	if l.Hold {
		mem0, res.MemNote = d.Memory()
	}
	cpu0, ext0 := h.cpu(d)

	// Open-loop producer feeding Senders goroutines.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	batches := make(chan []Msg, 256)
	var accepted, rejected atomic.Int64
	var maxDue atomic.Int64
	acceptedSeq := make([]bool, l.Count)
	var full atomic.Bool
	var lastTake atomic.Int64 // unix ns when a sender last took a batch to Submit
	var swg sync.WaitGroup
	for range l.Senders {
		swg.Add(1)
		go func() {
			defer swg.Done()
			for b := range batches {
				if full.Load() {
					continue
				}
				lastTake.Store(time.Now().UnixNano())
				sctx, scancel := ctx, context.CancelFunc(func() {})
				if l.Hold {
					sctx, scancel = context.WithTimeout(ctx, time.Second)
				}
				k, err := d.Submit(sctx, b)
				scancel()
				for _, m := range b[:k] {
					acceptedSeq[m.Seq] = true
					for {
						cur := maxDue.Load()
						if m.Due <= cur || maxDue.CompareAndSwap(cur, m.Due) {
							break
						}
					}
				}
				accepted.Add(int64(k))
				if err != nil {
					if l.Hold && errors.Is(err, context.DeadlineExceeded) {
						full.Store(true)
						continue
					}
					rejected.Add(int64(len(b) - k))
				}
			}
		}()
	}
	var crashErr atomic.Pointer[error] // a failed restart after the crash
	if l.CrashAfter > 0 {
		c, ok := d.(Crasher)
		if !ok {
			res.Note = "cannot crash this design"
		} else {
			res.Note = c.CrashNote()
			t := time.AfterFunc(l.CrashAfter, func() {
				h.progress("  %s: crash at +%s", d.Name(), l.CrashAfter)
				if err := c.Crash(); err != nil {
					h.progress("  %s: restart after crash failed: %v", d.Name(), err)
					crashErr.Store(&err)
				}
			})
			defer t.Stop()
		}
	}

	rng := rand.New(rand.NewPCG(uint64(n), 42))
	start := time.Now()
	lastProgress := start
	var dueAt time.Time
	if l.DueAfter > 0 {
		dueAt = start.Add(l.DueAfter).Truncate(time.Millisecond)
	}
	sent := 0
	for sent < l.Count && !full.Load() {
		target := l.Count
		if l.Rate > 0 {
			target = min(l.Count, int(l.Rate*time.Since(start).Seconds())+1)
		}
		for sent < target && !full.Load() {
			k := min(l.Batch, target-sent)
			b := make([]Msg, k)
			now := time.Now()
			for i := range b {
				due := dueAt
				if due.IsZero() {
					dl := l.MinDelay
					if l.MaxDelay > l.MinDelay {
						dl += time.Duration(rng.Int64N(int64(l.MaxDelay - l.MinDelay)))
					}
					due = now.Add(dl)
				}
				b[i] = NewMsg(uint64(sent+i), due, l.Size)
			}
			batches <- b
			sent += k
		}
		if time.Since(lastProgress) >= h.ProgressEvery && h.ProgressEvery > 0 {
			lastProgress = time.Now()
			h.progress("  %s/%s: offered %d/%d, accepted %d, delivered %d", d.Name(), l.Scenario, sent, l.Count, accepted.Load(), rec.Delivered())
		}
		if l.Rate > 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	offerDur := time.Since(start)
	close(batches)
	swg.Wait()
	res.IngestTime = time.Since(start)
	// What was actually offered: the messages handed to Submit over the
	// time until the last of them was. (sent/offerDur would count the
	// batches still queued for the senders when the producer finished,
	// up to 256 of them, as offered.)
	if t := time.Duration(lastTake.Load() - start.UnixNano()); t > 0 {
		offerDur = max(offerDur, t)
	}
	res.OfferedActual = float64(sent) / offerDur.Seconds()
	res.Accepted = int(accepted.Load())
	res.Rejected = int(rejected.Load())

	if l.Hold {
		time.Sleep(500 * time.Millisecond) // let the design settle its writes
		mem1, _ := d.Memory()
		if res.Accepted > 0 {
			res.MemPerMsg = float64(mem1-mem0) / float64(res.Accepted)
		}
		res.Note = fmt.Sprintf("held %d pending", res.Accepted)
		if full.Load() {
			res.Note += " (full: Submit blocked)"
		}
		cpu1, ext1 := h.cpu(d)
		res.CPUTotal = perMillion(cpu1-cpu0, res.Accepted)
		res.CPUExt = perMillion(ext1-ext0, res.Accepted)
		res.HasExt = d.External() != nil
		stopped = true
		d.Stop()
		return res, nil
	}

	// Wait for every accepted message, or the grace after the last due.
	deadline := time.Unix(0, maxDue.Load()).Add(l.Grace)
	for rec.Delivered() < res.Accepted && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		if time.Since(lastProgress) >= h.ProgressEvery && h.ProgressEvery > 0 {
			lastProgress = time.Now()
			h.progress("  %s/%s: waiting, delivered %d/%d", d.Name(), l.Scenario, rec.Delivered(), res.Accepted)
		}
	}
	time.Sleep(200 * time.Millisecond) // catch duplicates right behind
	cpu1, ext1 := h.cpu(d)
	stopped = true
	if err := d.Stop(); err != nil {
		res.Note = strings.TrimPrefix(res.Note+"; "+err.Error(), "; ")
	}
	if err := rec.Err(); err != nil {
		res.Note = strings.TrimPrefix(res.Note+"; measuring consumer disconnected: "+err.Error(), "; ")
	}
	if err := crashErr.Load(); err != nil {
		// Its losses are then the failed restart's, not the design's.
		res.Note = strings.TrimPrefix(res.Note+"; RESTART AFTER THE CRASH FAILED: "+(*err).Error(), "; ")
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	res.Delivered = len(rec.late)
	res.Dup, res.Early = rec.dup, rec.early
	for seq, ok := range acceptedSeq {
		if ok && rec.counts[seq] == 0 {
			res.Lost++
		}
	}
	res.Lateness = slices.Clone(rec.late)
	slices.Sort(res.Lateness)
	if k := len(res.Lateness); k > 0 {
		res.P50 = time.Duration(res.Lateness[k/2])
		res.P99 = time.Duration(res.Lateness[min(k-1, k*99/100)])
		res.Max = time.Duration(res.Lateness[k-1])
	}
	// Throughput means something when every message has the same delay
	// (or due time): then deliveries track the offer one for one.
	sameDelay := l.MinDelay == l.MaxDelay || l.DueAfter > 0
	if span := rec.last - rec.first; sameDelay && l.CrashAfter == 0 && span > 0 && res.Delivered > 1 {
		res.Sustained = float64(res.Delivered-1) / (float64(span) / 1e9)
	}
	if !dueAt.IsZero() && rec.last > 0 {
		res.Span = time.Duration(rec.last - dueAt.UnixNano())
	}
	if l.CrashAfter == 0 {
		res.CPUTotal = perMillion(cpu1-cpu0, res.Delivered)
		res.CPUExt = perMillion(ext1-ext0, res.Delivered)
		res.HasExt = d.External() != nil
	}
	return res, nil
}

// cpu returns this process's CPU plus the design's external processes' CPU,
// and the external part alone.
func (h *Harness) cpu(d Design) (total, ext time.Duration) {
	for _, pid := range d.External() {
		c, err := PIDCPU(pid)
		if err == nil {
			ext += c
		}
	}
	return SelfCPU() + ext, ext
}

func perMillion(d time.Duration, n int) float64 {
	if n <= 0 {
		return 0
	}
	return d.Seconds() / float64(n) * 1e6
}

// NSQDTake measures nsqd alone: how long it takes to accept n messages of
// size bytes by MPUB in batches of 500 (take), and until a consumer has
// received them all (take+deliver); buffered is as Load.BufferedConsumer.
func (h *Harness) NSQDTake(n, size int, buffered bool) (take, deliver time.Duration, err error) {
	topic := fmt.Sprintf("b%d_nsqd_take", h.runs.Add(1))
	rec, err := NewRecorder(h.NSQDTCPAddr, topic, n, buffered)
	if err != nil {
		return 0, 0, err
	}
	defer func() {
		rec.Stop()
		if h.DeleteTopic != nil {
			h.DeleteTopic(topic)
		}
	}()
	p, err := newProducer(h.NSQDTCPAddr)
	if err != nil {
		return 0, 0, err
	}
	defer p.Stop()
	msgs := make([][]byte, n)
	now := time.Now()
	for i := range msgs {
		msgs[i] = NewMsg(uint64(i), now, size).Body
	}
	start := time.Now()
	for i := 0; i < n; i += 500 {
		if err := p.MultiPublish(topic, msgs[i:min(n, i+500)]); err != nil {
			return 0, 0, err
		}
	}
	take = time.Since(start)
	deadline := time.Now().Add(60 * time.Second)
	for rec.Delivered() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	return take, time.Since(start), nil
}
