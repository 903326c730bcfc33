package deferd

import (
	"testing"
	"time"

	"github.com/deferd/deferd/wheel"
)

// A publish that panics (a bug) after reserving its id gives the id up
// (journalAndSchedule defers release right after reserve): a retry with
// the same id is reserved at once, instead of waiting forever for the
// first write to end.
func TestPanickingPublishGivesItsIDUp(t *testing.T) {
	x := newIndex(wheel.New[ref](wheel.Options{}))
	noLimit := func() error { return nil }
	func() {
		defer func() { recover() }()
		ch, err := x.reserve("X", noLimit)
		if err != nil || ch == nil {
			t.Fatalf("first reserve: %v %v", ch, err)
		}
		defer x.release("X", ch)
		panic("injected")
	}()
	done := make(chan chan struct{}, 1)
	go func() {
		ch, _ := x.reserve("X", noLimit)
		done <- ch
	}()
	select {
	case ch := <-done:
		if ch == nil {
			t.Fatal("retry: the id still counts as pending")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the retry with the same id still waits for the panicked write")
	}
}
