package ingest

import (
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// waitPeerClose waits on c's socket, through the runtime's poller, until
// the peer has shut down its side (POLLRDHUP, seen whatever data is
// still unread before it), an error, c's read deadline or c's close;
// false if c gives no file descriptor. It reads nothing: each wake-up
// (new data, the close) costs one poll(2) with no copying.
func waitPeerClose(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var fds [1]unix.PollFd
	rc.Read(func(fd uintptr) bool {
		fds[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLRDHUP}
		n, err := unix.Poll(fds[:], 0)
		return err != nil && err != unix.EINTR ||
			n > 0 && fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0
	})
	return true
}
