package deferd

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// TestCancelRacingStop: Cancels racing Stop all return (none hangs),
// each with nil, ErrExiting or ErrUnavailable; and after a restart no
// message whose Cancel returned nil is pending again.
func TestCancelRacingStop(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	for _, grace := range []time.Duration{0, 20 * time.Millisecond} {
		dir := t.TempDir()
		o := testOptions(dir, node.TCPAddr)
		o.Logf = func(string, ...any) {}
		e, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		const n = 2000
		due := time.Now().Add(time.Hour).UnixMilli()
		for i := range n {
			if err := pubReq(e, &ingest.PubRequest{Topic: "r", Bodies: [][]byte{[]byte("x")}, Due: due, ID: fmt.Sprint("id-", i)}); err != nil {
				t.Fatal(err)
			}
		}
		res := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() { defer wg.Done(); res[i] = e.Cancel(fmt.Sprint("id-", i)) }()
		}
		stopped := make(chan error, 1)
		go func() { time.Sleep(time.Millisecond); stopped <- e.Close(grace) }()
		all := make(chan struct{})
		go func() { wg.Wait(); close(all) }()
		select {
		case <-all:
		case <-time.After(20 * time.Second):
			t.Fatal("Cancels hang")
		}
		select {
		case <-stopped:
		case <-time.After(20 * time.Second):
			t.Fatal("Stop hangs")
		}
		ok := 0
		for i, err := range res {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrClosed), errors.Is(err, ErrJournalUnavailable):
			default:
				t.Fatalf("Cancel %d: %v", i, err)
			}
		}
		e2, err := New(o)
		if err != nil {
			t.Fatal(err)
		}
		pending := e2.Pending()
		e2.ix.mu.Lock()
		back := 0
		for i, err := range res {
			if _, in := e2.ix.ids[fmt.Sprint("id-", i)]; in && err == nil {
				back++
			}
		}
		e2.ix.mu.Unlock()
		e2.Close(time.Second)
		t.Logf("grace %v: %d of %d cancels answered OK; %d pending after restart", grace, ok, n, pending)
		if back > 0 {
			t.Fatalf("%d messages whose Cancel returned nil are pending again after a restart", back)
		}
	}
}
