package deferd_test

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd"
)

// The embedder's crash test: a child process (this test binary again)
// embeds a Scheduler through the public API only, with a function sink
// that appends each delivery to a file, publishes 10k messages with delays
// from 0 to 3 s and records each one Publish acknowledged; it is killed
// with SIGKILL mid-run. The parent reopens the same directory and gets
// every acknowledged message, before the kill or after, never before its
// due time.
func TestEmbeddedKillLosesNothing(t *testing.T) {
	if dir := os.Getenv("DEFERD_EMBED_CHILD"); dir != "" {
		embedChild(dir)
		return
	}
	if testing.Short() {
		t.Skip("runs a child process for seconds")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestEmbeddedKillLosesNothing$")
	cmd.Env = append(os.Environ(), "DEFERD_EMBED_CHILD="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill once about half the messages were acknowledged.
	acked := filepath.Join(dir, "acked")
	for deadline := time.Now().Add(60 * time.Second); countLines(acked) < 5000; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the child acknowledged too little in 60 s")
		}
	}
	cmd.Process.Kill()
	cmd.Wait()

	want := readLines(t, acked) // seq notBeforeMs
	var mu sync.Mutex
	got := map[string]int64{} // seq -> earliest delivery, unix ms
	note := func(seq string, at int64) {
		mu.Lock()
		if old, ok := got[seq]; !ok || at < old {
			got[seq] = at
		}
		mu.Unlock()
	}
	for _, l := range readLines(t, filepath.Join(dir, "delivered")) { // seq notBefore at
		f := strings.Fields(l)
		if len(f) == 3 {
			at, _ := strconv.ParseInt(f[2], 10, 64)
			note(f[0]+" "+f[1], at)
		}
	}
	opts := deferd.NewOptions()
	opts.DataPath = filepath.Join(dir, "data")
	opts.Logf = t.Logf
	opts.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		now := time.Now().UnixMilli()
		for _, b := range bodies {
			note(string(b), now)
		}
		return len(bodies), nil
	})
	s, err := deferd.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(5 * time.Second)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		mu.Lock()
		missing := 0
		for _, w := range want {
			if _, ok := got[w]; !ok {
				missing++
			}
		}
		mu.Unlock()
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d acknowledged messages never delivered", missing, len(want))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, w := range want {
		notBefore, _ := strconv.ParseInt(strings.Fields(w)[1], 10, 64)
		if got[w] < notBefore {
			t.Errorf("message %q delivered at %d, before its due time", w, got[w])
		}
	}
	t.Logf("%d acknowledged before the kill, all delivered, none early", len(want))
}

// embedChild is the child's side: publish 10k messages from 4 goroutines,
// appending "seq notBeforeMs" to dir/acked after each acknowledgement and
// "seq notBeforeMs deliveredMs" to dir/delivered from the sink, until
// killed.
func embedChild(dir string) {
	delivered, _ := os.OpenFile(filepath.Join(dir, "delivered"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	acked, _ := os.OpenFile(filepath.Join(dir, "acked"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	var mu sync.Mutex
	opts := deferd.NewOptions()
	opts.DataPath = filepath.Join(dir, "data")
	opts.Logf = func(string, ...any) {}
	opts.Sink = deferd.SinkFunc(func(topic string, bodies [][]byte) (int, error) {
		now := time.Now().UnixMilli()
		mu.Lock()
		defer mu.Unlock()
		for _, b := range bodies {
			fmt.Fprintf(delivered, "%s %d\n", b, now) // one write each: in the kernel before the kill
		}
		return len(bodies), nil
	})
	s, err := deferd.New(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(1)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 7))
			for i := w; i < 10_000; i += 4 {
				delay := time.Duration(rnd.IntN(3000)) * time.Millisecond
				if i%5 == 0 {
					delay = 0 // due now: the direct path
				}
				p := deferd.Pub{Topic: "t", Delay: delay}
				if i%7 == 0 {
					p.ID = "id-" + strconv.Itoa(i)
				}
				notBefore := time.Now().Add(delay).UnixMilli()
				p.Bodies = [][]byte{fmt.Appendf(nil, "%d %d", i, notBefore)}
				if err := s.Publish(p); err == nil {
					mu.Lock()
					fmt.Fprintf(acked, "%d %d\n", i, notBefore)
					mu.Unlock()
				}
				time.Sleep(50 * time.Microsecond)
			}
		}()
	}
	wg.Wait()
	time.Sleep(time.Hour) // wait for the kill
}

func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), "\n")
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
