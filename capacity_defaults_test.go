package deferd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The capacity rule is a pure function of memory and disk: half of each,
// 128 B of memory per pending message, within its floor and cap, and the
// fixed defaults of earlier versions for what is unknown.
func TestCapacityRule(t *testing.T) {
	const GiB = 1 << 30
	for _, c := range []struct {
		name            string
		m               Machine
		pending, pbytes int64
	}{
		// This box: 23 GB available, 76 GB free.
		{"24 GiB box", Machine{MemAvailable: 22 * GiB, DiskFree: 76e9}, 22 * GiB / 2 / 128, 38e9},
		{"journal counts", Machine{MemAvailable: 22 * GiB, DiskFree: 10e9, JournalBytes: 6e9}, 22 * GiB / 2 / 128, 8e9},
		{"small machine: floors", Machine{MemAvailable: 64 << 20, DiskFree: 100 << 20}, CapacityMinPending, CapacityMinPendingBytes},
		{"huge machine: caps", Machine{MemAvailable: 1 << 40, DiskFree: 1 << 52}, CapacityMaxPending, CapacityMaxPendingBytes},
		{"unknown memory", Machine{DiskFree: 4 * GiB}, 20_000_000, 2 * GiB},
		{"unknown disk", Machine{MemAvailable: 8 * GiB}, 8 * GiB / 2 / 128, 32 * GiB},
		{"nothing known", Machine{}, 20_000_000, 32 * GiB},
		{"negative journal ignored", Machine{MemAvailable: 8 * GiB, DiskFree: 4 * GiB, JournalBytes: -5}, 8 * GiB / 2 / 128, 2 * GiB},
	} {
		p, b := Capacity(c.m)
		if p != c.pending || b != c.pbytes {
			t.Errorf("%s: Capacity(%+v) = %d, %d; want %d, %d", c.name, c.m, p, b, c.pending, c.pbytes)
		}
	}
	// 3x the reference load (300k msg/s x 120 s = 36M of ~530 B records)
	// fits on a machine like this one with 10 GiB available and 40 GB free.
	p, b := Capacity(Machine{MemAvailable: 10 * GiB, DiskFree: 40e9})
	if p < 36e6 || b < 36e6*530 {
		t.Errorf("3x reference load does not fit: %d messages, %d bytes", p, b)
	}
}

func TestReadMachineParts(t *testing.T) {
	dir := t.TempDir()
	mi := filepath.Join(dir, "meminfo")
	os.WriteFile(mi, []byte("MemTotal:       24683792 kB\nMemFree:        19640016 kB\nMemAvailable:   23118288 kB\n"), 0o644)
	if n, err := memAvailable(mi); err != nil || n != 23118288<<10 {
		t.Errorf("memAvailable = %d, %v", n, err)
	}
	os.WriteFile(mi, []byte("MemTotal: 1 kB\n"), 0o644)
	if _, err := memAvailable(mi); err == nil {
		t.Error("memAvailable without the line: no error")
	}

	// cgroup v2: a numeric memory.max counts, "max" does not.
	os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/a/b\n"), 0o644)
	os.MkdirAll(filepath.Join(dir, "root", "a", "b"), 0o755)
	os.WriteFile(filepath.Join(dir, "root", "a", "b", "memory.max"), []byte("4294967296\n"), 0o644)
	if n, ok := cgroupMemoryMax(filepath.Join(dir, "cgroup"), filepath.Join(dir, "root")); !ok || n != 4<<30 {
		t.Errorf("cgroupMemoryMax = %d, %v", n, ok)
	}
	os.WriteFile(filepath.Join(dir, "root", "a", "b", "memory.max"), []byte("max\n"), 0o644)
	if _, ok := cgroupMemoryMax(filepath.Join(dir, "cgroup"), filepath.Join(dir, "root")); ok {
		t.Error("memory.max \"max\" taken as a limit")
	}

	// A data path that does not exist yet: its nearest existing parent.
	free, err := diskFree(filepath.Join(dir, "not", "yet", "there"))
	if err != nil || free <= 0 {
		t.Errorf("diskFree of a path to be created = %d, %v", free, err)
	}
	os.MkdirAll(filepath.Join(dir, "data", "journal"), 0o755)
	os.WriteFile(filepath.Join(dir, "data", "journal", "00000001.seg"), make([]byte, 1000), 0o644)
	os.WriteFile(filepath.Join(dir, "data", "journal", "00000002.seg"), make([]byte, 24), 0o644)
	m, err := ReadMachine(filepath.Join(dir, "data"))
	if err != nil || m.JournalBytes != 1024 || m.DiskFree <= 0 || m.MemAvailable <= 0 {
		t.Errorf("ReadMachine = %+v, %v", m, err)
	}
}

// NewOptions leaves both limits to AutoCapacity; Validate takes -1 and any
// positive value and refuses 0 and other negatives; New derives the limits
// (on this machine, room for 3x the reference load: > 36M messages) and
// leaves explicit values exactly as given.
func TestCapacityOptions(t *testing.T) {
	o := NewOptions()
	if o.MaxPending != AutoCapacity || o.MaxPendingBytes != AutoCapacity {
		t.Fatalf("NewOptions: MaxPending %d, MaxPendingBytes %d, want AutoCapacity", o.MaxPending, o.MaxPendingBytes)
	}
	o.EmbeddedNSQD = true
	for _, c := range []struct {
		pending, pbytes int64
		want            string
	}{
		{AutoCapacity, AutoCapacity, ""},
		{5, AutoCapacity, ""},
		{AutoCapacity, 7, ""},
		{0, AutoCapacity, "--max-pending (Options.MaxPending)"},
		{-2, AutoCapacity, "--max-pending (Options.MaxPending)"},
		{AutoCapacity, 0, "--max-pending-bytes (Options.MaxPendingBytes)"},
	} {
		o := o
		o.MaxPending, o.MaxPendingBytes = c.pending, c.pbytes
		err := o.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("MaxPending %d, MaxPendingBytes %d: %v, want %q", c.pending, c.pbytes, err, c.want)
		}
	}

	var logged []string
	o.DataPath = filepath.Join(t.TempDir(), "data")
	o.Logf = func(f string, a ...any) { logged = append(logged, f) }
	auto := o
	// Free memory and disk move while the test runs (others use the
	// machine): the resolved values must lie between the rule applied to a
	// reading just before and one just after.
	m0, err0 := ReadMachine(o.DataPath)
	auto.resolveCapacity()
	m, err := ReadMachine(o.DataPath)
	p0, b0 := Capacity(m0)
	p1, b1 := Capacity(m)
	between := func(v, a, b int64) bool { return min(a, b) <= v && v <= max(a, b) }
	if err0 != nil || err != nil || !between(auto.MaxPending, p0, p1) || !between(auto.MaxPendingBytes, b0, b1) {
		t.Errorf("resolved %d, %d; Capacity before %d, %d, after %d, %d (%v, %v)", auto.MaxPending, auto.MaxPendingBytes, p0, b0, p1, b1, err0, err)
	}
	t.Logf("this machine: %+v: MaxPending %d, MaxPendingBytes %d", m, auto.MaxPending, auto.MaxPendingBytes)
	if os.Getenv("DEFERD_CAPACITY_3X") != "" && auto.MaxPending <= 36_000_000 {
		t.Errorf("derived MaxPending %d does not carry 3x the reference load (36M)", auto.MaxPending)
	}
	if len(logged) == 0 {
		t.Error("resolveCapacity logged nothing")
	}
	explicit := o
	explicit.MaxPending, explicit.MaxPendingBytes = 20_000_000, 32<<30
	explicit.resolveCapacity()
	if explicit.MaxPending != 20_000_000 || explicit.MaxPendingBytes != 32<<30 {
		t.Errorf("explicit limits changed: %d, %d", explicit.MaxPending, explicit.MaxPendingBytes)
	}

	// Through New: /info shows the values chosen.
	auto = o
	auto.EmbeddedNSQD = false
	auto.Sink = SinkFunc(func(_ string, b [][]byte) (int, error) { return len(b), nil })
	auto.MaxPendingBytes = 12345
	s, err := New(auto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(time.Second)
	info := s.Info()
	if info["max_pending"].(int64) <= 0 || info["max_pending_bytes"].(int64) != 12345 {
		t.Errorf("/info: max_pending %v, max_pending_bytes %v", info["max_pending"], info["max_pending_bytes"])
	}
}
