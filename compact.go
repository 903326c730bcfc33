package deferd

import (
	"errors"
	"time"

	"github.com/deferd/deferd/journal"
)

// errStopping ends a compaction scan when the Scheduler closes.
var errStopping = errors.New("deferd: stopping")

// compactLoop moves the pending messages out of segments that keep the
// journal from reclaiming space, so disk use stays near twice the live
// data. It returns when the Scheduler stops.
func (s *Scheduler) compactLoop() {
	t := time.NewTicker(s.opts.CompactInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		for !s.stopping() {
			seg, ok := s.j.Compactable()
			if !ok {
				break
			}
			moved, err := s.compact(seg)
			if err != nil {
				s.logf("journal: compact segment %d: %v", seg, err)
				break
			}
			if moved == 0 {
				// What keeps seg alive is being published right now;
				// look again at the next tick instead of rescanning.
				break
			}
		}
	}
}

// stopping reports whether Close has begun.
func (s *Scheduler) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// compact rewrites the pending messages of segment seg at the journal head.
// Messages being published are left alone; the segment goes away when they
// are marked published.
func (s *Scheduler) compact(seg uint32) (moved int, err error) {
	err = s.j.ScanLive(seg, func(p journal.Pos, m *journal.Message) error {
		if s.stopping() {
			return errStopping
		}
		if m.Topic == retainTopic {
			// Counted as a move: a segment that holds only retention
			// records must not end the compaction pass.
			ok, err := s.moveRetained(p, m)
			if ok {
				moved++
			}
			return err
		}
		mv, ok := s.ix.moveOut(p, m.ID)
		if !ok {
			return nil // not in the wheel, or being published now
		}
		m.Origin = mv.key // the copy keeps the message's Key
		np, err := s.j.AppendMoved(p.Key(), m)
		if err != nil {
			np = p // keep it where it is
		}
		s.ix.moveIn(mv, np, s.wheelDue(m.Due), m.Topic, m.ID, false)
		if err != nil {
			return err
		}
		s.pendingBytes.Add(int64(np.Len) - int64(p.Len))
		s.moved.Add(1)
		moved++
		return nil
	})
	return moved, err
}
