package main

// Chaos test, the faults on disk between cycles: garbage appended to and
// truncation of the last journal segment, and the frame reading they need
// (see chaos_test.go; kill -9 and nsqd stops are in its cycle loop).

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// lastSegment returns the path of the highest journal segment.
func lastSegment(dir string) string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".seg") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return ""
	}
	sort.Strings(names)
	return filepath.Join(dir, names[len(names)-1])
}

// injectGarbage appends bytes that are not a valid frame to the last
// segment: a torn tail to be truncated, nothing lost.
func injectGarbage(t *testing.T, dir string, rnd *rand.Rand) string {
	path := lastSegment(dir)
	if path == "" {
		return ""
	}
	n := 1 + rnd.Intn(300)
	g := make([]byte, n)
	switch rnd.Intn(3) {
	case 0: // zeros (a preallocated / partially written end)
	case 1:
		rnd.Read(g)
	default: // a plausible header with a bad CRC
		rnd.Read(g)
		if n >= 8 {
			binary.LittleEndian.PutUint32(g, uint32(n-8+rnd.Intn(2)*100))
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(g)
	f.Close()
	return fmt.Sprintf("+garbage(%d B on %s)", n, filepath.Base(path))
}

// injectTruncate cuts the end of the last segment. The messages whose
// records are cut are lost by our doing (excluded from the loss check), and
// cancel marks may be cut too: the cancels whose marks were cut are
// excluded from the cancel check. Records of an id in the cut region (a
// reschedule's Moved record, a retention record) exclude its reschedules
// from the reschedule check and it from the retention check.
func injectTruncate(t *testing.T, st *chaosState, dir string, rnd *rand.Rand, cycle int) string {
	path := lastSegment(dir)
	if path == "" {
		return ""
	}
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return ""
	}
	cut := int64(1 + rnd.Intn(min(len(data), 400)))
	keep := int64(len(data)) - cut
	// Frames that end past keep are lost.
	off := int64(firstFrame(data))
	var lostRegion []byte
	for off+8 <= int64(len(data)) {
		l := int64(binary.LittleEndian.Uint32(data[off:]))
		end := off + 8 + l
		if end > int64(len(data)) {
			break
		}
		if end > keep {
			lostRegion = append(lostRegion, data[off:end]...)
		}
		off = end
	}
	if err := os.Truncate(path, keep); err != nil {
		t.Fatal(err)
	}
	// Cancel marks in the cut region: map their keys to ids through the
	// message records of every segment still on disk.
	cutIDs := map[string]bool{}
	if keys := doneKeysIn(lostRegion); len(keys) > 0 {
		ids := keyIDs(dir)
		for _, k := range keys {
			if id := ids[k]; id != "" {
				cutIDs[id] = true
			}
		}
	}
	st.mu.Lock()
	n := 0
	for b := range st.sent {
		if bytes.Contains(lostRegion, []byte(b)) {
			st.truncLost[b] = true
			n++
		}
	}
	for _, c := range st.cancels {
		if cutIDs[c.id] {
			c.reliable = false
		}
	}
	recIDs := recordIDsIn(lostRegion)
	for id := range recIDs {
		st.retUnreliable[id] = true
	}
	nr := 0
	for _, r := range st.rescheds {
		if recIDs[r.id] && r.reliable {
			r.reliable = false
			nr++
		}
	}
	st.mu.Unlock()
	return fmt.Sprintf("+truncate(%d B of %s, %d bodies cut, %d ids' records cut, %d reschedules excluded)", cut, filepath.Base(path), n, len(recIDs), nr)
}

type segKey struct{ seg, ord uint32 }

// firstFrame is the offset of a segment's first frame: 0, or past the
// 32-byte header of a segment that starts with the magic "DEFERDJL".
func firstFrame(data []byte) int {
	if len(data) >= 32 && string(data[:8]) == "DEFERDJL" {
		return 32
	}
	return 0
}

// frames calls fn for each complete frame of data.
func frames(data []byte, fn func(typ byte, payload []byte)) {
	for off := firstFrame(data); off+9 <= len(data); {
		l := int(binary.LittleEndian.Uint32(data[off:]))
		if l < 1 || off+8+l > len(data) {
			return
		}
		fn(data[off+8], data[off+9:off+8+l])
		off += 8 + l
	}
}

// doneKeysIn returns the keys of the Cancelled Done records in data.
func doneKeysIn(data []byte) []segKey {
	var keys []segKey
	frames(data, func(typ byte, p []byte) {
		if typ != 2 || len(p) < 1 || p[0] != 2 {
			return
		}
		for k := 1; k+8 <= len(p); k += 8 {
			keys = append(keys, segKey{binary.LittleEndian.Uint32(p[k:]), binary.LittleEndian.Uint32(p[k+4:])})
		}
	})
	return keys
}

// keyIDs maps the keys of the message records in dir's segments to ids.
func keyIDs(dir string) map[segKey]string {
	out := map[segKey]string{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".seg") {
			continue
		}
		seg, err := strconv.ParseUint(strings.TrimSuffix(name, ".seg"), 10, 32)
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		frames(data, func(typ byte, p []byte) {
			if ord, id, ok := msgRecordID(typ, p); ok {
				out[segKey{uint32(seg), ord}] = id
			}
		})
	}
	return out
}

// msgRecordID returns the ordinal and id of a message record (Accept,
// Moved, AcceptT, MovedT: journal/record.go); ok is false for other frames.
func msgRecordID(typ byte, p []byte) (ord uint32, id string, ok bool) {
	skip := 0
	switch typ {
	case 1: // Accept: ord, due
		skip = 4 + 8
	case 3: // Moved: ord, old key, due
		skip = 4 + 8 + 8
	case 4: // AcceptT: ord, accepted, due
		skip = 4 + 8 + 8
	case 5: // MovedT: ord, old key, origin, accepted, due
		skip = 4 + 8 + 8 + 8 + 8
	default:
		return 0, "", false
	}
	if len(p) < skip {
		return 0, "", false
	}
	ord = binary.LittleEndian.Uint32(p)
	q := p[skip:]
	n, k := binary.Uvarint(q)
	if k <= 0 || n > uint64(len(q)-k) {
		return 0, "", false
	}
	return ord, string(q[k : k+int(n)]), true
}

// recordIDsIn returns the ids of the message records in data (retention
// records included: their id is the retained id).
func recordIDsIn(data []byte) map[string]bool {
	ids := map[string]bool{}
	frames(data, func(typ byte, p []byte) {
		if _, id, ok := msgRecordID(typ, p); ok && id != "" {
			ids[id] = true
		}
	})
	return ids
}
