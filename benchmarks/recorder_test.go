package benchmarks

import (
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// TestRecorder checks the measuring consumer against a real nsqd: every
// message counted once, duplicates and early arrivals counted, foreign
// bodies ignored, frames larger than its read buffer and split across
// reads handled, and every message finished (nsqd has none in flight).
func TestRecorder(t *testing.T) {
	old := recorderBuf
	recorderBuf = 4096 // so frames split across reads and the buffer grows
	defer func() { recorderBuf = old }()

	n := nsqdnodetest.Start(t, nsqdnode.Config{})
	for _, buffered := range []bool{false, true} {
		topic := "rec_unbuffered"
		if buffered {
			topic = "rec_buffered"
		}
		const count = 300
		r, err := NewRecorder(n.TCPAddr, topic, count, buffered)
		if err != nil {
			t.Fatal(err)
		}
		p, err := newProducer(n.TCPAddr)
		if err != nil {
			t.Fatal(err)
		}
		past := time.Now().Add(-time.Second)
		var bodies [][]byte
		for i := range count - 1 {
			size := 100 + 37*i // 100 B .. ~11 KB: many frames span two reads
			if i == 7 {
				size = 20000 // larger than the initial buffer
			}
			bodies = append(bodies, NewMsg(uint64(i), past, size).Body)
		}
		bodies = append(bodies, NewMsg(3, past, 100).Body)                            // a duplicate of 3
		bodies = append(bodies, NewMsg(count-1, time.Now().Add(time.Hour), 100).Body) // early
		bodies = append(bodies, NewMsg(count+5, past, 100).Body)                      // not ours
		for i := 0; i < len(bodies); i += 50 {
			if err := p.MultiPublish(topic, bodies[i:min(len(bodies), i+50)]); err != nil {
				t.Fatal(err)
			}
		}
		p.Stop()
		deadline := time.Now().Add(10 * time.Second)
		for r.Delivered() < count && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		// Wait for the FINs to reach nsqd.
		inFlight, depth := -1, int64(-1)
		for time.Now().Before(deadline) {
			st := n.NSQD.GetStats(topic, "bench", false)
			if len(st.Topics) == 1 && len(st.Topics[0].Channels) == 1 {
				c := st.Topics[0].Channels[0]
				inFlight, depth = c.InFlightCount, c.Depth
			}
			if inFlight == 0 && depth == 0 {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := r.Err(); err != nil {
			t.Errorf("buffered=%v: consumer connection ended early: %v", buffered, err)
		}
		r.Stop()
		r.mu.Lock()
		got, dup, early := len(r.late), r.dup, r.early
		var negative int
		for _, l := range r.late {
			if l < 0 {
				negative++
			}
		}
		r.mu.Unlock()
		if got != count || dup != 1 || early != 1 || negative != 1 {
			t.Errorf("buffered=%v: delivered %d dup %d early %d (negative lateness %d), want %d 1 1 1", buffered, got, dup, early, negative, count)
		}
		if inFlight != 0 || depth != 0 {
			t.Errorf("buffered=%v: nsqd has %d in flight and %d queued: FINs missing", buffered, inFlight, depth)
		}
	}
}

// TestRecorderReportsDisconnect: when nsqd goes away under the recorder,
// Err says so (the harness puts it in the run's note).
func TestRecorderReportsDisconnect(t *testing.T) {
	n := nsqdnodetest.Start(t, nsqdnode.Config{})
	r, err := NewRecorder(n.TCPAddr, "rec_gone", 10, false)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()
	if err := r.Err(); err != nil {
		t.Fatalf("Err while connected: %v", err)
	}
	n.Exit()
	deadline := time.Now().Add(10 * time.Second)
	for r.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if r.Err() == nil {
		t.Fatal("Err is nil after nsqd exited")
	}
}
