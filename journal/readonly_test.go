package journal

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// mountTiny mounts a size-limited tmpfs, a real filesystem that fills up.
// It needs root: on CI (CI=true, run as root) a failed mount fails the
// test; elsewhere the test is skipped, visibly.
func mountTiny(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot mount a tmpfs (%v: %s)", err, bytes.TrimSpace(out))
		}
		t.Skipf("SKIP: cannot mount a tmpfs here (%v: %s)", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// fillDisk writes name under dir until the filesystem is full.
func fillDisk(t *testing.T, dir, name string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	for _, n := range []int{4096, 512, 1} { // the last partial pages
		for {
			if _, err := f.Write(buf[:n]); err != nil {
				break
			}
		}
	}
}

// A failing disk makes the journal read-only: Done keeps marks in memory
// without writing or waiting, Stats says so, and once writes work again
// the probe makes it writable by itself and writes the held marks.
func TestReadOnlyHoldsMarksAndResumes(t *testing.T) {
	dir := t.TempDir()
	var logs atomic.Int32
	opts := Options{Dir: dir, ProbeInterval: 20 * time.Millisecond, Logf: func(f string, a ...any) {
		logs.Add(1)
		t.Logf(f, a...)
	}}
	j, _, _ := openJ(t, opts)
	rs := appendN(t, j, 0, 20, 100)
	var failing atomic.Bool
	failing.Store(true)
	var writes atomic.Int32
	j.writeAt = func(f *os.File, b []byte, off int64) (int, error) {
		writes.Add(1)
		if failing.Load() {
			return 0, syscall.ENOSPC
		}
		return f.WriteAt(b, off)
	}
	if !j.Writable() {
		t.Fatal("read-only before any failure")
	}
	// The first mark's record fails to be written: held from then on.
	if err := j.DoneWait(Published, []Key{rs[0].p.Key()}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("DoneWait on a full disk: %v", err)
	}
	var p [1]Pos
	for i := range 5 {
		if err := j.Append([]Message{msg(100+i, 100)}, p[:]); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Append on a full disk: %v", err)
		}
	}
	st := j.Stats()
	if j.Writable() || st.Writable || st.ReadOnlySince == nil || time.Since(*st.ReadOnlySince) > time.Minute {
		t.Fatalf("after write errors: Writable %v, stats %v %v", j.Writable(), st.Writable, st.ReadOnlySince)
	}
	if n := logs.Load(); n != 1 {
		t.Fatalf("%d log lines for 6 failed writes, want 1 (entering read-only)", n)
	}
	// Done: held, returns at once, writes nothing.
	w0 := writes.Load()
	for _, r := range rs[1:10] {
		if err := j.Done(Published, []Key{r.p.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	if n := writes.Load() - w0; n > 2 { // a probe may have run meanwhile
		t.Fatalf("Done wrote (%d write attempts) while read-only", n)
	}
	if st := j.Stats(); st.HeldMarks != 10 || st.Live != 10 {
		t.Fatalf("held %d live %d, want 10 and 10", st.HeldMarks, st.Live)
	}
	w0 = writes.Load()
	time.Sleep(100 * time.Millisecond) // a few probes: each tries the held marks once
	if n := writes.Load() - w0; n == 0 || n > 10 {
		t.Fatalf("%d write attempts in 100 ms of 20 ms probes", n)
	}
	if j.Writable() || j.Stats().HeldMarks != 10 {
		t.Fatalf("a failed probe changed the state: writable %v held %d", j.Writable(), j.Stats().HeldMarks)
	}
	failing.Store(false)
	waitFor(t, func() bool { st := j.Stats(); return st.Writable && st.HeldMarks == 0 })
	if st := j.Stats(); st.ReadOnlySince != nil || logs.Load() != 2 {
		t.Fatalf("writable again: since %v, %d log lines (want 2)", st.ReadOnlySince, logs.Load())
	}
	after := appendN(t, j, 200, 3, 100)
	j.Close()
	j, got, _ := openJ(t, Options{Dir: dir})
	defer j.Close()
	checkSame(t, got, append(rs[10:], after...))
}

// Past the bound, marks apply in memory but are not kept: after a restart
// their messages are live again (at-least-once), and the count says so.
func TestReadOnlyHeldBound(t *testing.T) {
	dir := t.TempDir()
	j, _, _ := openJ(t, Options{Dir: dir, ProbeInterval: time.Hour})
	rs := appendN(t, j, 0, 10, 50)
	j.writeAt = func(*os.File, []byte, int64) (int, error) { return 0, syscall.ENOSPC }
	var p [1]Pos
	if err := j.Append([]Message{msg(50, 50)}, p[:]); err == nil {
		t.Fatal("Append succeeded on a failing disk")
	}
	j.mu.Lock()
	j.ro.maxHeld = 4
	j.mu.Unlock()
	var keys []Key
	for _, r := range rs {
		keys = append(keys, r.p.Key())
	}
	if err := j.Done(Published, keys); err != nil {
		t.Fatal(err)
	}
	st := j.Stats()
	if st.HeldMarks != 4 || st.HeldMarksDropped != 6 || st.Live != 0 {
		t.Fatalf("held %d dropped %d live %d, want 4, 6, 0", st.HeldMarks, st.HeldMarksDropped, st.Live)
	}
	j.writeAt = func(f *os.File, b []byte, off int64) (int, error) { return f.WriteAt(b, off) }
	if err := j.Close(); err != nil { // the held marks go out with Close
		t.Fatal(err)
	}
	j, got, _ := openJ(t, Options{Dir: dir})
	defer j.Close()
	checkSame(t, got, rs[4:])
}

// On a full tmpfs Open succeeds read-only, Recover replays, Append fails,
// Done holds; when space returns the journal becomes writable by itself
// and the held marks reach the disk.
func TestOpenOnFullDisk(t *testing.T) {
	dir := mountTiny(t, "1m")
	jdir := filepath.Join(dir, "j")
	opts := Options{Dir: jdir, ProbeInterval: 20 * time.Millisecond, GroupBytes: 64 << 10}
	j, _, _ := openJ(t, opts)
	rs := appendN(t, j, 0, 50, 200)
	j.Close()
	fillDisk(t, dir, "filler")

	j, got, _ := openJ(t, opts)
	checkSame(t, got, rs)
	if j.Writable() || j.Stats().ReadOnlySince == nil {
		t.Fatal("opened on a full disk, yet writable")
	}
	var p [1]Pos
	// Big enough to need new pages (a small one may fit in the last
	// segment's last page).
	if err := j.Append([]Message{msg(100, 64<<10)}, p[:]); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Append on a full disk: %v, want ENOSPC", err)
	}
	for _, r := range rs[:30] {
		if err := j.Done(Published, []Key{r.p.Key()}); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond)
	// The marks may fit in the last segment's last page (then they are
	// written), the probe file does not.
	if st := j.Stats(); st.Writable || (st.HeldMarks != 30 && st.HeldMarks != 0) {
		t.Fatalf("still full: writable %v, held %d, want false, 30 or 0", st.Writable, st.HeldMarks)
	}
	if err := os.Remove(filepath.Join(dir, "filler")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { st := j.Stats(); return st.Writable && st.HeldMarks == 0 })
	after := appendN(t, j, 200, 5, 200)
	// kill -9 now: copy the directory without Close.
	cp := t.TempDir()
	ents, _ := os.ReadDir(jdir)
	for _, e := range ents {
		b, _ := os.ReadFile(filepath.Join(jdir, e.Name()))
		os.WriteFile(filepath.Join(cp, e.Name()), b, 0o644)
	}
	j.Close()
	j2, got, _ := openJ(t, Options{Dir: cp})
	defer j2.Close()
	checkSame(t, got, append(rs[30:], after...))
}

// Open still fails on a directory it cannot write for another reason than
// space.
func TestOpenNotWritableOtherwise(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("SKIP: root writes a read-only directory anyway")
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "LOCK"), nil, 0o644)
	os.Chmod(dir, 0o555)
	defer os.Chmod(dir, 0o755)
	if _, err := Open(Options{Dir: dir}); err == nil {
		t.Fatal("Open of a read-only directory succeeded")
	}
}
