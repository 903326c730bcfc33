package journal

import (
	"fmt"
)

// Compactable returns a sealed segment worth compacting: the oldest sealed
// segment with live messages, provided total segment bytes exceed twice the
// (estimated) live bytes plus one segment of slack. ok is false when none.
// Safe for concurrent use. Cost: O(segments) under j.mu.
func (j *Journal) Compactable() (seg uint32, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.active == nil {
		return 0, false
	}
	var total, live int64
	var cand *segment
	for _, s := range j.table.Load().segs {
		if s == nil {
			continue
		}
		total += s.end
		live += s.liveBytes()
		if cand == nil && s != j.active && s.live > 0 {
			cand = s
		}
	}
	if cand == nil || total <= 2*live+j.opts.SegmentBytes {
		return 0, false
	}
	return cand.id, true
}

// ScanLive calls fn for each still-live message of sealed segment seg, in
// order. fn's Message is valid only during the call (Body aliases a scan
// buffer); fn may call AppendMoved and Done. Corrupt regions are skipped
// and logged; Stats.Corrupt counts only those not counted before in this
// process (by Recover or an earlier ScanLive of the segment). Safe for concurrent use with the
// other methods. Cost: reads the whole segment into a new buffer of its
// size, one CRC pass, and takes j.mu once per message record.
func (j *Journal) ScanLive(seg uint32, fn func(p Pos, m *Message) error) error {
	j.mu.Lock()
	s := j.table.Load().get(seg)
	if s == nil {
		j.mu.Unlock()
		return ErrNotFound
	}
	if s == j.active {
		j.mu.Unlock()
		return fmt.Errorf("journal: segment %d is active, not sealed", seg)
	}
	size, known := s.written, s.corrupt
	j.mu.Unlock()
	data := make([]byte, size)
	s.fmu.RLock()
	if s.f == nil {
		s.fmu.RUnlock()
		return ErrNotFound
	}
	_, err := s.f.ReadAt(data, 0)
	s.fmu.RUnlock()
	if err != nil {
		return fmt.Errorf("journal: scan segment %d: %w", seg, err)
	}
	var m Message
	regions := 0
	res := scanSegment(data, s.layout(), false, true, func(r *record) error {
		if r.typ == recDone {
			return nil
		}
		j.mu.Lock()
		dead := s.isDead(r.msg.ord) || r.msg.ord >= s.count
		j.mu.Unlock()
		if dead {
			return nil
		}
		m = j.message(&r.msg)
		return fn(Pos{Seg: seg, Ord: r.msg.ord, Off: uint32(r.off), Len: uint32(r.n)}, &m)
	}, func(line string) {
		// Regions recovery (or an earlier scan) already counted are
		// logged again, not counted again.
		if regions++; regions > known {
			j.mu.Lock()
			if regions > s.corrupt {
				s.corrupt = regions
				j.stats.corrupt.Add(1)
			}
			j.mu.Unlock()
		}
		j.logf("journal: CORRUPT (scan) segment %08d: %s", seg, line)
	})
	return res.err
}
