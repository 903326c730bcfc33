package benchmarks

import (
	"bytes"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat; it is
// 100 on every Linux this suite runs on.
const clockTick = 100

// SelfCPU returns this process's user+system CPU time (getrusage).
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// PIDCPU returns utime+stime of a live process from /proc/PID/stat.
func PIDCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields after ')' are fixed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTick, nil
}

// PIDRSS returns a live process's resident set size from /proc/PID/status.
func PIDRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, err
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}

// selfRSSNote says how SelfRSS measures, for Result.MemNote.
const selfRSSNote = "RSS self after runtime.GC + debug.FreeOSMemory"

// SelfRSS returns this process's RSS after a GC that returns freed memory
// to the OS (runtime.GC, then debug.FreeOSMemory, which collects again), so
// that two readings, each taken after the same GC, differ by live data
// rather than by garbage.
func SelfRSS() int64 {
	runtime.GC()
	debug.FreeOSMemory()
	n, _ := PIDRSS(os.Getpid())
	return n
}

// children are the processes this suite started and has not killed yet.
var children struct {
	sync.Mutex
	m map[*os.Process]bool
}

// Children are started without Pdeathsig: Linux sends it when the starting
// OS thread exits, which in a Go program can happen at any time, and it
// killed a deferd mid-run once. KillChildren is the cleanup instead.
func trackChild(p *os.Process) {
	children.Lock()
	defer children.Unlock()
	if children.m == nil {
		children.m = map[*os.Process]bool{}
	}
	children.m[p] = true
}

func untrackChild(p *os.Process) {
	children.Lock()
	defer children.Unlock()
	delete(children.m, p)
}

// KillChildren SIGKILLs every redis-server and deferd this process started
// and has not stopped; cmd/compare calls it on SIGINT and SIGTERM.
func KillChildren() {
	children.Lock()
	defer children.Unlock()
	for p := range children.m {
		_ = p.Kill()
	}
	children.m = nil
}
