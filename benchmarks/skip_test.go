package benchmarks

import (
	"fmt"
	"io"
	"os"
	"testing"
)

// onCI reports whether the tests run under CI (CI=true, as .ci/run is run).
func onCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail is for a test whose dependency (redis-server, a deferd that
// builds) is missing. Under CI it fails the test: a skip there would let a
// missing install step pass unseen. Elsewhere it skips and says so with a
// line "SKIP: <test>: <reason>" on the terminal (skipNotice), besides the
// skip message that -v shows.
func skipOrFail(tb testing.TB, format string, args ...any) {
	tb.Helper()
	why := fmt.Sprintf(format, args...)
	if onCI() {
		tb.Fatalf("required on CI (CI=true): %s", why)
	}
	w, done := skipNotice()
	fmt.Fprintf(w, "SKIP: %s: %s\n", tb.Name(), why)
	done()
	tb.Skip(why)
}

// skipNotice returns where a skip notice is seen without -v: the
// controlling terminal (/dev/tty) if there is one, else stderr. go test
// ./... keeps a passing package's stdout and stderr to itself and prints
// only "ok", so a line on stderr alone would not be seen there.
func skipNotice() (w io.Writer, done func()) {
	if tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0); err == nil {
		return tty, func() { tty.Close() }
	}
	return os.Stderr, func() {}
}
