package deferd

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// AutoCapacity, as Options.MaxPending or Options.MaxPendingBytes (the
// default; --max-pending -1, --max-pending-bytes -1), makes New derive that
// limit from the machine it runs on (Capacity). Any other value is used as
// given; 0 and other negative values are refused by Validate.
const AutoCapacity int64 = -1

// The capacity rule's constants (see Capacity).
const (
	// CapacityRAMPerPending is the memory, in bytes, one pending message
	// is budgeted in deferd's process: its wheel entry (24-32 B),
	// segment-table handle (8 B) and ingest protocol (1 B) make 42-50 B of
	// live Go heap at 1M-12M pending (41-49 B measured before the
	// protocol byte; BenchmarkPendingMemory at 2M, BENCHMARKS.md Session
	// 8: 42.5 B before it, 43.6 B with it), about twice that
	// with the GC's headroom (GOGC=100); the RSS of a deferd process
	// holding 100k-12M messages came to 100-122 B per message. The body
	// stays in the journal on disk, not in deferd's memory.
	CapacityRAMPerPending = 128
	// CapacityMinPending and CapacityMaxPending bound the derived
	// MaxPending (1M: 128 MB of memory; 1G: 128 GB).
	CapacityMinPending = 1_000_000
	CapacityMaxPending = 1_000_000_000
	// CapacityMinPendingBytes and CapacityMaxPendingBytes bound the
	// derived MaxPendingBytes (1 GiB: about 2M messages of 500 B; 1 PiB).
	CapacityMinPendingBytes = 1 << 30
	CapacityMaxPendingBytes = 1 << 50
	// Without /proc/meminfo (not Linux) or a statfs of the data path, the
	// limit it would bound is the fixed default of earlier versions.
	capacityFallbackPending      = 20_000_000
	capacityFallbackPendingBytes = 32 << 30
)

// Machine is what Capacity derives the limits from. A value <= 0 means
// "unknown".
type Machine struct {
	// MemAvailable is the memory a new process can use, in bytes:
	// /proc/meminfo's MemAvailable, or the cgroup v2 memory.max of this
	// process if that is lower.
	MemAvailable int64
	// DiskFree is the space free to deferd on the data path's file system
	// (statfs f_bavail x f_bsize of DataPath, or of its nearest existing
	// parent when DataPath does not exist yet).
	DiskFree int64
	// JournalBytes is what the journal under DataPath already occupies
	// (its files' sizes): space a restarted deferd holds and will free by
	// delivering, so it counts towards the disk budget.
	JournalBytes int64
}

// Capacity is the capacity rule: the MaxPending and MaxPendingBytes an
// Options with AutoCapacity gets on machine m. Each limit guards one
// resource, and takes half of it:
//
//	MaxPending      = MemAvailable / 2 / CapacityRAMPerPending (128 B)
//	                  within [1M, 1G]; 20M if MemAvailable is unknown
//	MaxPendingBytes = (DiskFree + JournalBytes) / 2
//	                  within [1 GiB, 1 PiB]; 32 GiB if the disk is unknown
//
// A pending message costs deferd's memory CapacityRAMPerPending whatever
// its size, and the disk its journal record (the body + ~30 B, ~530 B for
// a 500 B body), which MaxPendingBytes counts. The other half is headroom
// for the journal's published-but-not-yet-compacted records, the page
// cache of the records being delivered, nsqd (whose data often shares the
// disk) and other processes. Client ids cost memory besides (an index
// entry of ~100 B + the id): a load of mostly id'd messages should set
// MaxPending explicitly. The floors keep a nearly full disk or a small
// machine at startup from refusing everything (a full disk then gives
// 503 JOURNAL_UNAVAILABLE, as with an explicit limit).
func Capacity(m Machine) (maxPending, maxPendingBytes int64) {
	maxPending = capacityFallbackPending
	if m.MemAvailable > 0 {
		maxPending = min(max(m.MemAvailable/2/CapacityRAMPerPending, CapacityMinPending), CapacityMaxPending)
	}
	maxPendingBytes = capacityFallbackPendingBytes
	if m.DiskFree > 0 {
		disk := m.DiskFree + max(m.JournalBytes, 0)
		maxPendingBytes = min(max(disk/2, CapacityMinPendingBytes), CapacityMaxPendingBytes)
	}
	return maxPending, maxPendingBytes
}

// ReadMachine reads this machine's Machine for a deferd with its journal
// under dataPath. A part it cannot read is left 0 (unknown) and its error
// joined into err.
func ReadMachine(dataPath string) (Machine, error) {
	var m Machine
	var errs []error
	mem, err := memAvailable("/proc/meminfo")
	if err != nil {
		errs = append(errs, err)
	}
	if lim, ok := cgroupMemoryMax("/proc/self/cgroup", "/sys/fs/cgroup"); ok && (mem <= 0 || lim < mem) {
		mem = lim
	}
	m.MemAvailable = mem
	if m.DiskFree, err = diskFree(dataPath); err != nil {
		errs = append(errs, err)
	}
	m.JournalBytes = dirBytes(filepath.Join(dataPath, "journal"))
	return m, errors.Join(errs...)
}

// memAvailable reads MemAvailable (bytes) from a /proc/meminfo file.
func memAvailable(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: MemAvailable: %w", path, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("%s: no MemAvailable", path)
}

// cgroupMemoryMax returns the cgroup v2 memory.max of this process's
// cgroup (selfCgroup: /proc/self/cgroup, under root /sys/fs/cgroup), if it
// has a numeric one.
func cgroupMemoryMax(selfCgroup, root string) (int64, bool) {
	b, err := os.ReadFile(selfCgroup)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		rel, ok := strings.CutPrefix(line, "0::") // the v2 hierarchy
		if !ok {
			continue
		}
		v, err := os.ReadFile(filepath.Join(root, rel, "memory.max"))
		if err != nil {
			return 0, false
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64) // "max": no limit
		return n, err == nil && n > 0
	}
	return 0, false
}

// diskFree is the space free to unprivileged users on the file system of
// path, or of its nearest existing parent.
func diskFree(path string) (int64, error) {
	p, err := filepath.Abs(path)
	if err != nil {
		return 0, err
	}
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(p, &st)
		if err == nil {
			return int64(st.Bavail) * int64(st.Bsize), nil
		}
		parent := filepath.Dir(p)
		if !errors.Is(err, fs.ErrNotExist) || parent == p {
			return 0, fmt.Errorf("statfs %s: %w", p, err)
		}
		p = parent
	}
}

// dirBytes is the total size of the regular files directly in dir (0 if
// it does not exist).
func dirBytes(dir string) int64 {
	es, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range es {
		if !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// resolveCapacity replaces AutoCapacity in MaxPending and MaxPendingBytes
// by Capacity of this machine for o.DataPath, and logs what it chose. New
// calls it after Validate.
func (o *Options) resolveCapacity() {
	if o.MaxPending != AutoCapacity && o.MaxPendingBytes != AutoCapacity {
		return
	}
	m, err := ReadMachine(o.DataPath)
	pending, bytes := Capacity(m)
	var chose []string
	if o.MaxPending == AutoCapacity {
		o.MaxPending = pending
		chose = append(chose, fmt.Sprintf("--max-pending %d (memory available %d MiB / 2 / %d B)", pending, m.MemAvailable>>20, CapacityRAMPerPending))
	}
	if o.MaxPendingBytes == AutoCapacity {
		o.MaxPendingBytes = bytes
		chose = append(chose, fmt.Sprintf("--max-pending-bytes %d (disk free %d MiB + journal %d MiB, / 2)", bytes, m.DiskFree>>20, m.JournalBytes>>20))
	}
	if o.Logf != nil {
		o.Logf("capacity: auto: %s", strings.Join(chose, ", "))
		if err != nil {
			o.Logf("capacity: %v (unknown parts use the fixed defaults: 20000000 messages, 32 GiB)", err)
		}
	}
}
