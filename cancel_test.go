package deferd

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deferd/deferd/ingest"
	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A second /pub with a pending id is accepted and not scheduled twice;
// /cancel removes a pending message once; a published id cannot be
// cancelled; a cancelled message never arrives.
func TestCancelAndIDDedupe(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	h := startHarness(t, testOptions(t.TempDir(), node.TCPAddr))
	col := consume(t, node.TCPAddr, "c")

	h.mustPost("/pub?topic=c&defer=60000&id=order-1", []byte("first"))
	h.mustPost("/pub?topic=c&defer=60000&id=order-1", []byte("second"))
	if s := h.stats(); s.Pending != 1 || s.Accepted != 1 {
		t.Fatalf("after dedupe: pending %d accepted %d, want 1/1", s.Pending, s.Accepted)
	}
	if code, b := h.post("/cancel?id=order-1", nil); code != 200 || b != "OK" {
		t.Fatalf("cancel pending: %d %q", code, b)
	}
	if code, b := h.post("/cancel?id=order-1", nil); code != 404 || b != `{"message":"NOT_FOUND"}` {
		t.Fatalf("cancel twice: %d %q", code, b)
	}
	if code, _ := h.post("/cancel?id=never-seen", nil); code != 404 {
		t.Fatalf("cancel unknown: %d", code)
	}
	// The id is free again after a cancel.
	h.mustPost("/pub?topic=c&defer=100&id=order-1", []byte("third"))
	h.mustPost("/pub?topic=c&defer=150&id=order-2", []byte("fourth"))
	h.mustPost("/pub?topic=c&defer=60000&id=order-3", []byte("fifth"))
	col.waitCount(t, 2, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	bodies := col.bodies()
	if strings.Join(bodies, ",") != "third,fourth" {
		t.Fatalf("received %q, want third,fourth", bodies)
	}
	if code, _ := h.post("/cancel?id=order-2", nil); code != 404 {
		t.Fatalf("cancel of a published message: %d, want 404", code)
	}
	if code, _ := h.post("/cancel?id=order-3", nil); code != 200 {
		t.Fatalf("cancel order-3: %d", code)
	}
	s := h.stats()
	if s.Pending != 0 || s.Cancelled != 2 || s.Published != 2 {
		t.Fatalf("stats: pending %d cancelled %d published %d, want 0/2/2", s.Pending, s.Cancelled, s.Published)
	}
}

// /cancel of a message a publish task holds right now answers 409
// IN_FLIGHT, not 404: with nsqd down the attempt fails, the message goes
// back into the wheel, and a later cancel removes it. (It said 404
// NOT_FOUND for a message that was then delivered.)
func TestCancelInFlight(t *testing.T) {
	o := testOptions(t.TempDir(), nsqdnodetest.ClosedAddr(t))
	o.PublishBackoff = 100 * time.Millisecond // each attempt lasts a while
	h := startHarness(t, o)
	sawInFlight := false
	for k := 0; k < 5 && !sawInFlight; k++ {
		id := fmt.Sprintf("job-%d", k)
		h.mustPost("/pub?topic=cx&defer=1&id="+id, []byte("charge the card"))
		time.Sleep(50 * time.Millisecond) // due: an attempt is under way
		var codes []int
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			code, body := h.post("/cancel?id="+id, nil)
			codes = append(codes, code)
			if code == 200 {
				break
			}
			if code != 409 || body != `{"message":"IN_FLIGHT"}` || time.Now().After(deadline) {
				t.Fatalf("cancel answers %v, last %s; want 409 IN_FLIGHT until the message is back in the wheel, then 200", codes, body)
			}
			sawInFlight = true
		}
	}
	if !sawInFlight {
		t.Fatal("no cancel found a message in flight")
	}
	if s := h.stats(); s.Pending != 0 {
		t.Fatalf("after the cancels: pending %d", s.Pending)
	}
}

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
