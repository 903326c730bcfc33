//go:build linux

package wheel

import (
	"os"
	"syscall"
	"time"
	"unsafe"
)

// preciseTimer is a one-shot timer on a Linux timerfd, waited for through
// Go's netpoller like a socket. It fires within tens of µs of its time
// (the kernel's hrtimer), where a time.Timer fires up to 1 ms late in an
// idle process: the runtime then sleeps in epoll_wait, whose timeout is in
// whole ms (a wait below 1 ms sleeps 1 ms; one above is cut to whole ms
// and the rest slept as 1 ms). Its C gets a value (never more than one
// pending) when it fires; a value may be stale after a reset, so a caller
// must re-check the time.
type preciseTimer struct {
	f  *os.File
	fd int
	C  chan time.Time
}

// newPreciseTimer returns a disarmed preciseTimer, or nil if the kernel
// has no timerfd (then use a time.Timer). Its reader goroutine ends at
// close.
func newPreciseTimer() *preciseTimer {
	const tfdNonblock, tfdCloexec = syscall.O_NONBLOCK, syscall.O_CLOEXEC
	fd, _, errno := syscall.Syscall(syscall.SYS_TIMERFD_CREATE, 1 /* CLOCK_MONOTONIC */, tfdNonblock|tfdCloexec, 0)
	if errno != 0 {
		return nil
	}
	t := &preciseTimer{f: os.NewFile(fd, "timerfd"), fd: int(fd), C: make(chan time.Time, 1)}
	go func() {
		var buf [8]byte // the expiration count
		for {
			if _, err := t.f.Read(buf[:]); err != nil {
				return // closed
			}
			select {
			case t.C <- time.Now():
			default:
			}
		}
	}()
	return t
}

// itimerspec is struct itimerspec: interval, then value.
type itimerspec struct{ interval, value syscall.Timespec }

// reset arms t to fire after d (> 0), dropping a value not yet received.
func (t *preciseTimer) reset(d time.Duration) {
	select {
	case <-t.C:
	default:
	}
	t.settime(syscall.NsecToTimespec(int64(max(d, 1))))
}

// stop disarms t.
func (t *preciseTimer) stop() { t.settime(syscall.Timespec{}) }

func (t *preciseTimer) settime(v syscall.Timespec) {
	spec := itimerspec{value: v}
	syscall.Syscall6(syscall.SYS_TIMERFD_SETTIME, uintptr(t.fd), 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
}

// close releases the timerfd and ends the reader goroutine.
func (t *preciseTimer) close() { t.f.Close() }
