package deferd

import (
	"errors"
	"time"

	"github.com/deferd/deferd/journal"
	"github.com/deferd/deferd/wheel"
)

// maxTaskBytes bounds the journal record bytes of one publish task, and so
// the bodies it holds on the heap: PoolSize x maxTaskBytes in all.
const maxTaskBytes = 8 << 20

// dispatch hands due buckets to the pool (dispatchBatch). It returns
// when the Scheduler stops.
func (s *Scheduler) dispatch(out <-chan *wheel.Batch[ref]) {
	for {
		select {
		case b := <-out:
			s.dispatchBatch(b, s.pool.Submit)
		case <-s.stop:
			return
		}
	}
}

// dispatchBatch hands due bucket b to submit (the pool's Submit; a test's
// wrapper of it), split into tasks of at most TaskSize messages and
// maxTaskBytes of records (but at least one), and releases b.
func (s *Scheduler) dispatchBatch(b *wheel.Batch[ref], submit func(func()) error) {
	items := b.Items
	for len(items) > 0 {
		k, size := 0, int64(0)
		for k < len(items) && k < s.opts.TaskSize {
			l := int64(items[k].Value.Len)
			if k > 0 && size+l > maxTaskBytes {
				break
			}
			size += l
			k++
		}
		t := getTask()
		t.items = append(t.items[:0], items[:k]...)
		items = items[k:]
		if err := submit(func() { s.publishTask(t) }); err != nil {
			// The pool is closed: deferd is stopping. The messages stay
			// live in the journal and go out after restart.
			putTask(t)
		}
	}
	b.Release()
}

// publishTask reads a bucket's bodies from the journal, hands them to the
// sink per topic and marks what it took as published.
func (s *Scheduler) publishTask(t *task) {
	t.start = s.clk.now() // lateness stage wheel to task ends here
	defer putTask(t)
	defer func() {
		if v := recover(); v != nil {
			// A bug; but the messages it held must not be lost until a
			// restart.
			t.requeue = s.ix.unhandled(t.items, t.requeue[:0])
			s.reschedule(t, "", t.requeue, s.opts.RetryBackoff)
			s.logf("BUG: publish task panicked: %v; its %d messages not yet published or rescheduled go back into the wheel", v, len(t.requeue))
		}
	}()
	s.readTask(t)
	for _, g := range t.groups {
		t.bodies = t.bodies[:0]
		for _, r := range g.msgs {
			t.bodies = append(t.bodies, r.body)
		}
		s.deliverGroup(t, g)
	}
}

// readTask reads t's records, grouped by topic; their bodies stay in
// t.reader's memory, not copied. A message whose record could not be read
// stays pending and goes back into the wheel after ParkBackoff: the error may pass (an I/O error), and until
// then it is still counted, cancellable and keeps its segment alive.
func (s *Scheduler) readTask(t *task) {
	t.reset()
	t.ps = t.ps[:0]
	for i := range t.items {
		t.ps = append(t.ps, t.items[i].Value)
	}
	t.requeue = t.requeue[:0]
	s.j.ReadBatch(&t.reader, t.ps, func(i int, m journal.Message, err error) {
		if err != nil {
			s.readErrors.Add(1)
			s.logf("journal: read %v: %v (retrying in %v)", t.ps[i].Key(), err, s.opts.ParkBackoff)
			t.requeue = append(t.requeue, msgRef{item: i}) // an id names it by position, which stays
			return
		}
		t.add(m.Topic, msgRef{item: i, id: m.ID, due: m.Due, accepted: m.Accepted, body: m.Body})
	})
	if len(t.requeue) > 0 {
		s.reschedule(t, "", t.requeue, s.opts.ParkBackoff)
	}
}

// deliverGroup hands one topic's bodies (t.bodies) to the sink until it
// took them all, refused one (parked; the others go on) or failed (the
// rest waits in the wheel for RetryBackoff; never dropped).
func (s *Scheduler) deliverGroup(t *task, g *group) {
	for sent := 0; sent < len(g.msgs); {
		t.batches = t.batches[:0]
		call := s.clk.now()
		var taken int
		var err error
		if os, ok := s.sink.(observedSink); ok {
			taken, err = os.PublishObserved(g.topic, t.bodies[sent:], t)
		} else {
			taken, err = s.sink.Publish(g.topic, t.bodies[sent:])
		}
		taken = min(max(taken, 0), len(g.msgs)-sent)
		s.markPublished(t, g.topic, g.msgs[sent:sent+taken], call)
		sent += taken
		if sent == len(g.msgs) {
			return
		}
		if errors.Is(err, ErrRejected) {
			s.failed.Add(1)
			s.logf("sink: refused a message for topic %q: %v; retrying it in %v", g.topic, err, s.opts.ParkBackoff)
			s.reschedule(t, g.topic, g.msgs[sent:sent+1], s.opts.ParkBackoff)
			sent++
			continue
		}
		s.reschedule(t, g.topic, g.msgs[sent:], s.opts.RetryBackoff)
		return
	}
}

// markPublished records msgs, which the sink call made at call took, as
// published: the journal's Done mark, the index, the counters and their
// lateness, in all and by stage (from t.start and t.batches).
func (s *Scheduler) markPublished(t *task, topic string, msgs []msgRef, call time.Time) {
	if len(msgs) == 0 {
		return
	}
	now := s.clk.now()
	s.lateness.stages.recordStages(t.start, call, now, msgs, t.batches)
	nowMs := now.UnixMilli()
	var bytes int64
	ret := s.retain(t, topic, msgs) // before the ids are given up
	t.keys, bytes = s.ix.published(topic, t.items, msgs, t.keys[:0], ret)
	if err := s.j.Done(journal.Published, t.keys); err != nil {
		s.logf("journal: published marks: %v (these may be published again after restart)", err)
	}
	s.lateness.protos.record(now, msgs) // after published set their proto
	for _, r := range msgs {
		if nowMs < r.due {
			s.early.Add(1)
		}
		s.lateness.Update(max(now.Sub(time.UnixMilli(r.due)), 0).Seconds())
	}
	s.pending.Add(-int64(len(msgs)))
	s.pendingBytes.Add(-bytes)
	s.published.Add(uint64(len(msgs)))
}

// reschedule puts msgs back into the wheel, due after backoff, with the
// same journal position, which their ids name.
func (s *Scheduler) reschedule(t *task, topic string, msgs []msgRef, backoff time.Duration) {
	s.retried.Add(uint64(len(msgs)))
	s.ix.requeue(s.w.Now()+int64(backoff), t.items, msgs, topic)
}
