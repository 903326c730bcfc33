package deferd

import (
	"errors"
	"fmt"

	"github.com/deferd/deferd/journal"
)

// Cancel removes the pending message with client id. It returns nil once
// the cancel mark is in the journal (so the cancel survives kill -9; on the
// disk too with Options.Fsync "always"), after one group commit as Publish.
// It returns ErrNotFound if there is none (unknown, published, already
// cancelled); ErrInFlight if a publish task holds it right now (published
// if the sink takes it, else back in the wheel and cancellable again);
// ErrJournalUnavailable if the mark could not be written (the message is
// out of the wheel, but may come back after a restart), or if a write or
// move of the message under way did not end within a second (a stalled
// disk; it stays pending); ErrClosed while closing. Safe for concurrent use.
func (s *Scheduler) Cancel(id string) error {
	if !s.enter() {
		return ErrClosed
	}
	defer s.leave()
	r, err := s.ix.remove(id)
	if err != nil {
		return err
	}
	return s.cancelled1(r.p)
}

// cancelled1 marks the message at p, which the index no longer holds,
// cancelled in the journal and counts it.
func (s *Scheduler) cancelled1(p journal.Pos) error {
	var answer error
	// Success promises the cancel survives a crash: wait for the mark to
	// be written, as Publish waits for its records.
	if err := s.j.DoneWait(journal.Cancelled, []journal.Key{p.Key()}); err != nil {
		// Out of the wheel now, but without its mark the message comes
		// back after a restart: the caller must not take this as done.
		s.logf("journal: cancel mark for %v: %v", p.Key(), err)
		answer = fmt.Errorf("%w: %w", ErrJournalUnavailable, err)
		if errors.Is(err, journal.ErrClosed) {
			answer = ErrClosed
		}
	}
	s.pending.Add(-1)
	s.pendingBytes.Add(-int64(p.Len))
	s.cancelled.Add(1)
	return answer
}
