package egress

import (
	"fmt"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// batchLog is a BatchObserver that keeps what it is told.
type batchLog struct {
	ns       []int
	sent, ok []time.Time
}

func (l *batchLog) ObserveBatch(n int, sent, ok time.Time) {
	l.ns = append(l.ns, n)
	l.sent = append(l.sent, sent)
	l.ok = append(l.ok, ok)
}

// PublishObserved reports every batch nsqd took, in order, before it
// returns: their sizes add up to what it acknowledged, and each was sent
// before its OK and after the batch ahead of it was taken.
func TestPublishObserved(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	p := newTestPublisher(t, Options{Addrs: []string{node.TCPAddr}, ConnsPerAddr: 2, MaxBatchMsgs: 10})
	bodies := make([][]byte, 25)
	for i := range bodies {
		bodies[i] = fmt.Appendf(nil, "observed-%d", i)
	}
	var l batchLog
	before := time.Now()
	acked, err := p.PublishObserved("observed", bodies, &l)
	after := time.Now()
	if err != nil || acked != 25 {
		t.Fatalf("PublishObserved: %d, %v", acked, err)
	}
	if fmt.Sprint(l.ns) != "[10 10 5]" {
		t.Fatalf("batches %v, want [10 10 5]", l.ns)
	}
	prev := before
	for i := range l.ns {
		if l.sent[i].Before(prev) || l.ok[i].Before(l.sent[i]) || l.ok[i].After(after) {
			t.Errorf("batch %d: sent %v, ok %v, out of order (previous %v, call %v..%v)", i, l.sent[i], l.ok[i], prev, before, after)
		}
		prev = l.ok[i]
	}
	if _, err := p.PublishObserved("observed", bodies[:1], nil); err != nil {
		t.Fatalf("PublishObserved without an observer: %v", err)
	}
}
