package deferd

import (
	"sync"
	"time"

	"github.com/deferd/deferd/journal"
	"github.com/deferd/deferd/wheel"
)

// task is one pool task: up to TaskSize due messages, their bodies read
// back from the journal into reader's memory, grouped by topic. Tasks are
// pooled; a task's memory is reused, never kept by anyone after putTask.
type task struct {
	items   []wheel.Item[ref]
	ps      []journal.Pos
	reader  journal.BatchReader // holds the bodies until its next ReadBatch
	groups  []*group
	byTopic map[string]*group
	bodies  [][]byte
	keys    []journal.Key
	spare   []*group
	requeue []msgRef    // items going back into the wheel (a failed read, a panic)
	start   time.Time   // the task began (lateness stage wheel to task)
	batches []batchTime // the batches of the sink call in progress (ObserveBatch)
}

type group struct {
	topic string
	msgs  []msgRef
}

// msgRef locates one message of a task: its wheel item, client id, due time
// (unix ms) and body (in the task's reader).
type msgRef struct {
	item     int
	id       string
	due      int64
	accepted int64 // unix ms, 0 if unknown
	body     []byte
	proto    ingestProto // set by index.published
}

var taskPool = sync.Pool{New: func() any { return &task{byTopic: make(map[string]*group)} }}

func getTask() *task { return taskPool.Get().(*task) }

func putTask(t *task) {
	t.reset()
	t.items = t.items[:0]
	taskPool.Put(t)
}

func (t *task) reset() {
	for _, g := range t.groups {
		g.msgs = g.msgs[:0]
		t.spare = append(t.spare, g)
	}
	t.groups = t.groups[:0]
	clear(t.byTopic)
}

func (t *task) add(topic string, r msgRef) {
	g := t.byTopic[topic]
	if g == nil {
		if n := len(t.spare); n > 0 {
			g = t.spare[n-1]
			t.spare = t.spare[:n-1]
		} else {
			g = &group{}
		}
		g.topic = topic
		t.byTopic[topic] = g
		t.groups = append(t.groups, g)
	}
	g.msgs = append(g.msgs, r)
}

// pubBuf holds the per-request journal messages and positions of Publish.
type pubBuf struct {
	msgs []journal.Message
	pos  []journal.Pos
	hs   []wheel.Handle
}

var pubBufPool sync.Pool

func getPubBuf(n int) *pubBuf {
	b, _ := pubBufPool.Get().(*pubBuf)
	if b == nil {
		b = &pubBuf{}
	}
	if cap(b.msgs) < n {
		b.msgs = make([]journal.Message, n)
		b.pos = make([]journal.Pos, n)
		b.hs = make([]wheel.Handle, n)
	}
	b.msgs = b.msgs[:n]
	b.pos = b.pos[:n]
	b.hs = b.hs[:n]
	return b
}

func putPubBuf(b *pubBuf) {
	clear(b.msgs) // drop references to request memory
	pubBufPool.Put(b)
}
