package egress

import (
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A link that always has an MPUB waiting for its answer (pipelined load
// that never lets the queue run empty) must not keep a queue slot per MPUB
// it ever sent: the answered ones are given back.
func TestLinkQueueBoundedUnderSteadyPipelining(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	l := newLink(node.TCPAddr, nsq.NewConfig(), t.Logf)
	t.Cleanup(l.stop)
	<-l.dial()
	if l.lost.Load() {
		t.Fatalf("dial: %v", l.dialErr)
	}
	body := [][]byte{[]byte("x")}
	const n = 3000
	prev, err := l.write("steady", body)
	if err != nil {
		t.Fatal(err)
	}
	maxLen := 0
	for i := 1; i < n; i++ {
		next, err := l.write("steady", body) // written before prev is answered
		if err != nil {
			t.Fatalf("MPUB %d: %v", i, err)
		}
		select {
		case err := <-prev:
			if err != nil {
				t.Fatalf("MPUB %d: %v", i-1, err)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to MPUB %d in 5 s", i-1)
		}
		prev = next
		l.qmu.Lock()
		maxLen = max(maxLen, len(l.waiting))
		l.qmu.Unlock()
	}
	if err := <-prev; err != nil {
		t.Fatal(err)
	}
	if maxLen > 16 {
		t.Fatalf("the answer queue reached %d slots for at most 2 MPUBs waiting (%d sent)", maxLen, n)
	}
}
