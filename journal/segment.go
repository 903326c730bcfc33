package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// segment is one segment file plus its liveness.
type segment struct {
	id    uint32
	ver   uint8     // 1: no header, unseeded CRCs (read only); 2: header, seeded CRCs
	hdr   segHeader // v2: written by the flusher when it creates the file
	seed  uint32    // CRC seed of the segment's frames (0 in v1)
	start int64     // offset of the first frame: segHeaderLen in v2, 0 in v1

	fmu sync.RWMutex // guards f against close during ReadAt
	f   *os.File     // nil until the flusher creates the file, and after deletion

	// Guarded by Journal.mu.
	end      int64    // logical end: bytes encoded for this segment
	nextOrd  uint32   // ordinals assigned
	written  int64    // bytes written to the OS
	count    uint32   // ordinals written (messages + lost)
	live     int64    // written messages not marked dead
	msgBytes int64    // bytes of written message frames
	dead     []uint64 // bit per ordinal
	corrupt  int      // corrupt regions the scans of this process reported in it

	// Flusher-owned (or Recover's, before the flusher starts).
	fileEnd int64 // end of the bytes this life of the file wrote
	stale   int64 // size of the file's previous life when > fileEnd: bytes to cut when sealed
}

func (s *segment) isDead(ord uint32) bool {
	w := int(ord >> 6)
	return w < len(s.dead) && s.dead[w]&(1<<(ord&63)) != 0
}

// kill marks ord dead; it reports whether it was live.
func (s *segment) kill(ord uint32) bool {
	if ord >= s.count || s.isDead(ord) {
		return false
	}
	w := int(ord >> 6)
	for w >= len(s.dead) {
		s.dead = append(s.dead, 0)
	}
	s.dead[w] |= 1 << (ord & 63)
	s.live--
	return true
}

// markLost marks ordinals [from, to) dead without counting them live.
func (s *segment) markLost(from, to uint32) {
	for o := from; o < to; o++ {
		w := int(o >> 6)
		for w >= len(s.dead) {
			s.dead = append(s.dead, 0)
		}
		s.dead[w] |= 1 << (o & 63)
	}
}

// liveBytes estimates the live bytes as the average message frame size
// times the live count (per-ordinal sizes are not kept, to keep liveness at
// one bit per message).
func (s *segment) liveBytes() int64 {
	if s.count == 0 || s.live <= 0 {
		return 0
	}
	return int64(float64(s.msgBytes) * float64(s.live) / float64(s.count))
}

// segTable is an immutable snapshot of the segment list, replaced
// copy-on-write under Journal.mu and read lock-free by Read.
type segTable struct {
	base uint32 // id of segs[0]
	segs []*segment
}

func (t *segTable) get(id uint32) *segment {
	if t == nil || id < t.base || int(id-t.base) >= len(t.segs) {
		return nil
	}
	return t.segs[id-t.base]
}

const (
	segSuffix       = ".seg"
	freeSuffix      = ".free" // a deleted segment's file kept for recycling
	maxSegmentBytes = 1 << 31
	// defaultRecycle is how many deleted segment files are kept for reuse.
	defaultRecycle = 2
)

func (j *Journal) segPath(id uint32) string {
	return filepath.Join(j.opts.Dir, fmt.Sprintf("%08d%s", id, segSuffix))
}

func (j *Journal) freePath(id uint32) string {
	return filepath.Join(j.opts.Dir, fmt.Sprintf("%08d%s", id, freeSuffix))
}

// listSegments returns the segment ids in Dir, ascending.
func listSegments(dir string) ([]uint32, error) { return listIDs(dir, segSuffix) }

// listIDs returns the ids of the files named <id><suffix> in dir, ascending.
func listIDs(dir, suffix string) ([]uint32, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ids []uint32
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, suffix) || e.IsDir() {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimSuffix(name, suffix), 10, 32)
		if err != nil || id == 0 {
			continue
		}
		ids = append(ids, uint32(id))
	}
	sort.Slice(ids, func(a, b int) bool { return ids[a] < ids[b] })
	return ids, nil
}

func (j *Journal) closeSegs(t *segTable) {
	for _, s := range t.segs {
		if s != nil && s.f != nil {
			s.f.Close()
			s.f = nil
		}
	}
}
