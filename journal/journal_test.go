package journal

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type rec struct {
	p Pos
	m Message
}

func openJ(t testing.TB, opts Options) (*Journal, []rec, Report) {
	t.Helper()
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	j, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	var got []rec
	rep, err := j.Recover(func(p Pos, m *Message) error {
		got = append(got, rec{p, Message{ID: m.ID, Topic: m.Topic, Due: m.Due, Body: bytes.Clone(m.Body)}})
		return nil
	})
	if err != nil {
		t.Fatalf("Recover: %v", err)
	}
	return j, got, rep
}

func msg(i int, bodyLen int) Message {
	body := bytes.Repeat([]byte{byte('a' + i%26)}, bodyLen)
	copy(body, fmt.Sprintf("body-%d-", i))
	return Message{ID: fmt.Sprintf("id-%d", i), Topic: "topic" + fmt.Sprint(i%3), Due: 1700000000000 + int64(i), Body: body}
}

func eqMsg(a, b Message) bool {
	return a.ID == b.ID && a.Topic == b.Topic && a.Due == b.Due && bytes.Equal(a.Body, b.Body)
}

func appendN(t testing.TB, j *Journal, from, n, bodyLen int) []rec {
	t.Helper()
	out := make([]rec, n)
	for i := range n {
		m := msg(from+i, bodyLen)
		var p [1]Pos
		if err := j.Append([]Message{m}, p[:]); err != nil {
			t.Fatalf("Append %d: %v", from+i, err)
		}
		out[i] = rec{p[0], m}
	}
	return out
}

func checkSame(t *testing.T, got, want []rec) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("recovered %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].p != want[i].p || !eqMsg(got[i].m, want[i].m) {
			t.Fatalf("message %d: got %+v %q, want %+v %q", i, got[i].p, got[i].m.ID, want[i].p, want[i].m.ID)
		}
	}
}

func waitFor(t *testing.T, f func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if f() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	j, got, _ := openJ(t, Options{Dir: dir})
	if len(got) != 0 {
		t.Fatalf("fresh journal recovered %d", len(got))
	}
	msgs := []Message{
		{ID: "", Topic: "t", Due: -5, Body: nil},
		{ID: "abc", Topic: "orders", Due: 1<<62 + 3, Body: []byte("hello")},
		msg(7, 500),
	}
	pos := make([]Pos, len(msgs))
	if err := j.Append(msgs, pos); err != nil {
		t.Fatal(err)
	}
	var buf []byte
	for i, p := range pos {
		if p.Seg != 1 || p.Ord != uint32(i) {
			t.Fatalf("pos %d = %+v", i, p)
		}
		var m Message
		var err error
		m, buf, err = j.Read(p, buf)
		if err != nil {
			t.Fatal(err)
		}
		if !eqMsg(m, msgs[i]) {
			t.Fatalf("read %d: %+v want %+v", i, m, msgs[i])
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := j.Append(msgs, pos); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	if _, _, err := j.Read(pos[0], nil); err == nil {
		t.Fatal("Read after Close succeeded")
	}
	j, got, rep := openJ(t, Options{Dir: dir})
	defer j.Close()
	want := []rec{{pos[0], msgs[0]}, {pos[1], msgs[1]}, {pos[2], msgs[2]}}
	checkSame(t, got, want)
	if rep.Live != 3 || rep.Records != 3 || len(rep.Corrupt) != 0 || rep.TornTails != 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestParseFsyncMode(t *testing.T) {
	for _, m := range []FsyncMode{FsyncInterval, FsyncAlways, FsyncNever} {
		got, err := ParseFsyncMode(m.String())
		if err != nil || got != m {
			t.Fatalf("%v: %v %v", m, got, err)
		}
	}
	if _, err := ParseFsyncMode("sometimes"); err == nil {
		t.Fatal("want error")
	}
}

func TestOpenErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, []byte("x"), 0o644)
	if _, err := Open(Options{Dir: filepath.Join(file, "sub")}); err == nil {
		t.Fatal("Open under a regular file succeeded")
	} else {
		t.Log(err)
	}
	if _, err := Open(Options{}); err == nil {
		t.Fatal("Open without Dir succeeded")
	}
	dir := t.TempDir()
	j, _, _ := openJ(t, Options{Dir: dir})
	if _, err := Open(Options{Dir: dir}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Open: %v", err)
	}
	j.Close()
	j2, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal("Open after Close:", err)
	}
	j2.Close()
}

// TestKill9 checks the contract: every Append that returned nil in a
// process killed with SIGKILL is recovered.
func TestKill9(t *testing.T) {
	if dir := os.Getenv("JOURNAL_KILL9_DIR"); dir != "" {
		kill9Child(dir)
		return
	}
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$")
	cmd.Env = append(os.Environ(), "JOURNAL_KILL9_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(acked) < 2000 {
		if id, ok := strings.CutPrefix(sc.Text(), "ack "); ok {
			acked[id] = true
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if len(acked) < 2000 {
		t.Fatalf("child acked only %d", len(acked))
	}
	j, got, rep := openJ(t, Options{Dir: dir, SegmentBytes: 64 << 10})
	defer j.Close()
	have := map[string]bool{}
	for _, r := range got {
		have[r.m.ID] = true
	}
	for id := range acked {
		if !have[id] {
			t.Fatalf("acknowledged message %s lost after kill -9 (report %+v)", id, rep)
		}
	}
	if len(rep.Corrupt) != 0 {
		t.Fatalf("report %+v", rep)
	}
	t.Logf("acked %d, recovered %d, report %+v", len(acked), len(got), rep)
}

func kill9Child(dir string) {
	j, err := Open(Options{Dir: dir, SegmentBytes: 64 << 10, Fsync: FsyncNever, Logf: func(string, ...any) {}})
	if err != nil {
		panic(err)
	}
	if _, err := j.Recover(func(Pos, *Message) error { return nil }); err != nil {
		panic(err)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				m := msg(i, 300)
				m.ID = fmt.Sprintf("%d-%d", g, i)
				var p [1]Pos
				if err := j.Append([]Message{m}, p[:]); err != nil {
					panic(err)
				}
				mu.Lock()
				fmt.Fprintf(w, "ack %s\n", m.ID)
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestStress runs appenders, publishers (Done), a compactor (Compactable,
// ScanLive, AppendMoved) and readers together, then checks that recovery
// yields exactly the live set.
func TestStress(t *testing.T) {
	dir := t.TempDir()
	opts := Options{Dir: dir, SegmentBytes: 8 << 10, GroupBytes: 4 << 10}
	j, _, _ := openJ(t, opts)
	var mu sync.Mutex // serialises Done vs AppendMoved of one key, as the engine must
	live := map[Key]rec{}
	var keys []Key
	stop := make(chan struct{})
	var wg, appenders sync.WaitGroup
	for w := range 6 {
		appenders.Add(1)
		go func() {
			defer appenders.Done()
			for i := range 150 {
				m := msg(w*10000+i, 50+i%200)
				var p [1]Pos
				if err := j.Append([]Message{m}, p[:]); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				live[p[0].Key()] = rec{p[0], m}
				keys = append(keys, p[0].Key())
				mu.Unlock()
			}
		}()
	}
	wg.Add(1)
	go func() { // publisher: finish 4 of every 5 keys it sees; moved keys come back
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			if len(keys) == 0 {
				mu.Unlock()
				time.Sleep(time.Millisecond)
				continue
			}
			k := keys[0]
			keys = keys[1:]
			if _, ok := live[k]; ok && i%5 != 0 {
				delete(live, k)
				if err := j.Done(Published, []Key{k}); err != nil {
					t.Error(err)
				}
			}
			mu.Unlock()
		}
	}()
	wg.Add(1)
	go func() { // compactor
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			seg, ok := j.Compactable()
			if !ok {
				continue
			}
			err := j.ScanLive(seg, func(p Pos, m *Message) error {
				mu.Lock()
				defer mu.Unlock()
				r, ok := live[p.Key()]
				if !ok {
					return nil
				}
				if !eqMsg(*m, r.m) {
					t.Errorf("ScanLive %+v: wrong message", p)
				}
				np, err := j.AppendMoved(p.Key(), m)
				if err != nil {
					return err
				}
				delete(live, p.Key())
				live[np.Key()] = rec{np, r.m}
				keys = append(keys, np.Key())
				return nil
			})
			if err != nil && !errors.Is(err, ErrNotFound) {
				t.Error(err)
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // reader
		defer wg.Done()
		var buf []byte
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			var r rec
			for _, r = range live {
				break
			}
			mu.Unlock()
			if r.p.Seg == 0 {
				continue
			}
			var m Message
			var err error
			m, buf, err = j.Read(r.p, buf)
			if err == nil && !eqMsg(m, r.m) {
				t.Errorf("Read %+v: wrong message", r.p)
			}
		}
	}()
	appenders.Wait()
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(keys) == 0 })
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	st := j.Stats()
	j.Close()
	j, got, rep := openJ(t, opts)
	defer j.Close()
	if len(got) != len(live) || len(rep.Corrupt) != 0 {
		t.Fatalf("recovered %d, want %d live (report %+v)", len(got), len(live), rep)
	}
	for _, r := range got {
		w, ok := live[r.p.Key()]
		if !ok || w.p != r.p || !eqMsg(w.m, r.m) {
			t.Fatalf("recovered %+v not in the live set", r.p)
		}
	}
	t.Logf("live %d, segments %d, deleted %d, disk %d B, live bytes %d", len(live), st.Segments, st.Deleted, st.DiskBytes, st.LiveBytes)
}
