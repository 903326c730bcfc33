package ingest

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startTCP starts a TCPServer on a free loopback port, shut down by
// t.Cleanup, which also checks that Serve returned nil.
func startTCP(tb testing.TB, opts TCPOptions, b Backend) *TCPServer {
	tb.Helper()
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	s, err := NewTCPServer(opts, b)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	tb.Cleanup(func() {
		if err := s.ShutdownWithin(10 * time.Second); err != nil {
			tb.Errorf("ShutdownWithin: %v", err)
		}
		select {
		case err := <-done:
			if err != nil {
				tb.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			tb.Errorf("Serve did not return after Shutdown")
		}
	})
	return s
}

// tcpCmd is a command line and its bodies, each after its 4-byte size.
func tcpCmd(line string, bodies ...[]byte) []byte {
	b := []byte(line + "\n")
	for _, x := range bodies {
		b = binary.BigEndian.AppendUint32(b, uint32(len(x)))
		b = append(b, x...)
	}
	return b
}

// tcpLen is a raw 4-byte big-endian length.
func tcpLen(n int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(n)) }

// cat concatenates byte strings.
func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// transcript is what a server sent on one connection: its frames ("R:"
// for a response, "E:" for an error), then how it ended.
type transcript []string

func (t transcript) String() string { return strings.Join(t, " | ") }

// exchange connects to addr, sends data, half-closes if halfClose, and
// reads frames until the server closes (EOF or reset) or wait passes.
func exchange(tb testing.TB, addr string, data []byte, halfClose bool, wait time.Duration) transcript {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(data); err != nil {
		tb.Fatalf("write: %v", err)
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(wait))
	return readFrames(bufio.NewReader(c))
}

// readFrames reads frames until the connection ends.
func readFrames(r io.Reader) transcript {
	var out transcript
	for {
		f, err := readFrame(r)
		if err != nil {
			return append(out, endOf(err))
		}
		out = append(out, f)
	}
}

func readFrame(r io.Reader) (string, error) {
	var h [8]byte
	if _, err := io.ReadFull(r, h[:4]); err != nil {
		return "", err
	}
	size := binary.BigEndian.Uint32(h[:4])
	if size < 4 || size > 1<<20 {
		return "", fmt.Errorf("bad frame size %d", size)
	}
	if _, err := io.ReadFull(r, h[4:]); err != nil {
		return "", io.ErrUnexpectedEOF
	}
	data := make([]byte, size-4)
	if _, err := io.ReadFull(r, data); err != nil {
		return "", io.ErrUnexpectedEOF
	}
	kind := map[uint32]string{0: "R:", 1: "E:"}[binary.BigEndian.Uint32(h[4:])]
	if kind == "" {
		kind = fmt.Sprintf("T%d:", binary.BigEndian.Uint32(h[4:]))
	}
	return kind + string(data), nil
}

// endOf names how a connection ended: "closed" for EOF or a reset (a server
// that closes with unread input resets the connection), "open" for a
// timeout.
func endOf(err error) string {
	var ne net.Error
	switch {
	case err == io.EOF, errors.Is(err, syscall.ECONNRESET):
		return "closed"
	case errors.As(err, &ne) && ne.Timeout():
		return "open"
	}
	return "error: " + err.Error()
}

// frameOK reads one frame from r and fails unless it is want.
func expectFrame(tb testing.TB, r io.Reader, want string) {
	tb.Helper()
	f, err := readFrame(r)
	if err != nil {
		tb.Fatalf("want frame %q, got %v", want, err)
	}
	if f != want {
		tb.Fatalf("frame %q, want %q", f, want)
	}
}

// waitFor polls cond every 5 ms for up to 10 s.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
