package benchmarks

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// slowDesign takes every batch, perBatch after it is handed over.
type slowDesign struct{ perBatch time.Duration }

func (s *slowDesign) Name() string            { return "slow" }
func (s *slowDesign) Start(Env) error         { return nil }
func (s *slowDesign) Stop() error             { return nil }
func (s *slowDesign) External() []int         { return nil }
func (s *slowDesign) Memory() (int64, string) { return 0, "" }
func (s *slowDesign) Submit(ctx context.Context, msgs []Msg) (int, error) {
	time.Sleep(s.perBatch)
	return len(msgs), nil
}

// OfferedActual is the rate messages were handed to Submit: for a design
// slower than the offer it is about what the design took, not what the
// producer queued for the senders.
func TestOfferedActualIsWhatSubmitTook(t *testing.T) {
	h := newHarness(t)
	d := &slowDesign{perBatch: 40 * time.Millisecond} // 4 senders x 20 msgs / 40 ms: ~2k msg/s
	l := Load{Scenario: "fixed", Rate: 8000, Count: 4000, Batch: 20, Size: 64, Grace: 100 * time.Millisecond}
	r, err := h.Run(d, l)
	if err != nil {
		t.Fatal(err)
	}
	took := float64(r.Accepted) / r.IngestTime.Seconds()
	if r.OfferedActual > 1.2*took {
		t.Fatalf("OfferedActual %.0f msg/s, but Submit took %d in %v (%.0f msg/s)", r.OfferedActual, r.Accepted, r.IngestTime, took)
	}
}

// A burst row that lost messages does not say "all delivered".
func TestBurstNoteWithLoss(t *testing.T) {
	r := Result{Design: "x", Scenario: ScenarioBurst, Accepted: 1000, Delivered: 500, Lost: 500, Span: time.Second}
	var b bytes.Buffer
	WriteTable(&b, []Result{r})
	if row := b.String(); strings.Contains(row, "all 500 delivered") || !strings.Contains(row, "500 of 1000 delivered") {
		t.Fatalf("table:\n%s", row)
	}
}

type failCrash struct{ slowDesign }

func (f *failCrash) Crash() error      { return errors.New("cannot restart") }
func (f *failCrash) CrashNote() string { return "SIGKILLed and restarted" }

// A restart that fails after the crash is in the result, not only in the
// progress log: the row's losses are then not the design's.
func TestFailedRestartIsInTheResult(t *testing.T) {
	h := newHarness(t)
	d := &failCrash{}
	l := Load{Scenario: "crash", Rate: 500, Count: 200, Size: 64, MinDelay: 100 * time.Millisecond, MaxDelay: 100 * time.Millisecond,
		CrashAfter: 100 * time.Millisecond, Grace: 200 * time.Millisecond}
	r, err := h.Run(d, l)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(r.Note, "RESTART AFTER THE CRASH FAILED: cannot restart") {
		t.Fatalf("note %q", r.Note)
	}
}

// Deferd.Crash kills deferd with requests in flight, as the other designs'
// Crash does, instead of waiting for them to finish.
func TestDeferdCrashDoesNotWaitForRequests(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ping" {
			entered <- struct{}{}
			<-release // an ingest that does not finish by itself
		}
		w.Write([]byte("OK"))
	}))
	defer srv.Close()
	defer close(release)
	dir := t.TempDir()
	fake := filepath.Join(dir, "fake-deferd") // a process to kill; srv answers for it
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nexec sleep 60\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	d := NewDeferd(fake)
	d.env = Env{Topic: "t", TempDir: dir}
	d.addr = strings.TrimPrefix(srv.URL, "http://")
	d.client = &http.Client{}
	var err error
	if d.logFile, err = os.Create(filepath.Join(dir, "log")); err != nil {
		t.Fatal(err)
	}
	if err := d.start(); err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	go d.Submit(context.Background(), []Msg{NewMsg(0, time.Now().Add(time.Hour), 100)})
	<-entered
	crashed := make(chan error, 1)
	go func() { crashed <- d.Crash() }()
	select {
	case err := <-crashed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Crash waits for the request in flight")
	}
}
