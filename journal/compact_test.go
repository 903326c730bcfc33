package journal

import (
	"errors"
	"testing"
)

func TestSpaceDeletionOldestFirst(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 1024}
	j, _, _ := openJ(t, opts)
	defer j.Close()
	recs := appendN(t, j, 0, 80, 100) // ~8 per segment
	nseg := recs[len(recs)-1].p.Seg
	// Keep one message of segment 2 alive; finish the rest.
	var keep rec
	var done []Key
	for _, r := range recs {
		if r.p.Seg == 2 && keep.p.Seg == 0 {
			keep = r
			continue
		}
		done = append(done, r.p.Key())
	}
	if err := j.Done(Published, done); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { ids, _ := listSegments(dir); return len(ids) > 0 && ids[0] == 2 })
	ids, _ := listSegments(dir)
	if ids[0] != 2 || ids[len(ids)-1] < nseg {
		t.Fatalf("segments %v", ids)
	}
	if _, _, err := j.Read(recs[0].p, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Read of deleted segment: %v", err)
	}
	seg, ok := j.Compactable()
	if !ok || seg != 2 {
		t.Fatalf("Compactable = %d %v (stats %+v)", seg, ok, j.Stats())
	}
	var movedTo Pos
	err := j.ScanLive(seg, func(p Pos, m *Message) error {
		if p != keep.p || !eqMsg(*m, keep.m) {
			t.Fatalf("ScanLive gave %+v", p)
		}
		var err error
		movedTo, err = j.AppendMoved(p.Key(), m)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { ids, _ := listSegments(dir); return len(ids) == 1 })
	if _, ok := j.Compactable(); ok {
		t.Fatal("still compactable")
	}
	st := j.Stats()
	if st.Live != 1 || st.DiskBytes > 4096 {
		t.Fatalf("stats %+v", st)
	}
	m, _, err := j.Read(movedTo, nil)
	if err != nil || !eqMsg(m, keep.m) {
		t.Fatalf("read moved: %v", err)
	}
	j.Close()
	j2, got, _ := openJ(t, opts)
	defer j2.Close()
	checkSame(t, got, []rec{{movedTo, keep.m}})
}
