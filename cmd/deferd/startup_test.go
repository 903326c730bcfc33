package main

import (
	"log"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/deferd/deferd"
)

// The listeners are bound before the journal is replayed: with the HTTP
// or the TCP port taken, deferd fails at once with the flag's name, and
// neither the embedded nsqd nor the replay of a journal of many records
// has started.
func TestPortInUseFailsBeforeReplay(t *testing.T) {
	dir := t.TempDir()
	o := deferd.NewOptions()
	o.DataPath = dir
	o.Sink = deferd.SinkFunc(func(string, [][]byte) (int, error) { return 0, nil })
	o.Logf = func(string, ...any) {}
	s, err := deferd.New(o)
	if err != nil {
		t.Fatal(err)
	}
	body := [][]byte{[]byte("pending")}
	for range 50000 {
		if err := s.Publish(deferd.Pub{Topic: "t", Bodies: body, Delay: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close(5 * time.Second)

	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	nsqdTCP := freeAddr(t)
	var c config
	if err := newFlagSet(&c).Parse([]string{"--http-address", taken.Addr().String(), "--data-path", dir,
		"--embedded-nsqd-tcp-address", nsqdTCP, "--embedded-nsqd-http-address", freeAddr(t),
		"--tcp-address", "127.0.0.1:0"}); err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	start := time.Now()
	err = run(c, log.New(&logBuf, "", 0), make(chan os.Signal))
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "--http-address") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("run with the HTTP port taken: %v", err)
	}
	if strings.Contains(logBuf.String(), "journal: recovered") {
		t.Errorf("the journal was replayed before the port was found taken:\n%s", logBuf.String())
	}
	if !portsFree(nsqdTCP) {
		t.Errorf("the embedded nsqd was started (its port %s is taken)", nsqdTCP)
	}
	t.Logf("failed after %v: %v", took, err)

	// The TCP port too: bound before New (the listener ListenTCP serves).
	takenTCP, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer takenTCP.Close()
	c.HTTPAddress, c.TCPAddress = freeAddr(t), takenTCP.Addr().String()
	if err := run(c, log.New(&logBuf, "", 0), make(chan os.Signal)); err == nil || !strings.Contains(err.Error(), "--tcp-address") {
		t.Fatalf("run with the TCP port taken: %v", err)
	}
	if strings.Contains(logBuf.String(), "journal: recovered") {
		t.Errorf("the journal was replayed before the TCP port was found taken")
	}
	if !portsFree(nsqdTCP, c.HTTPAddress) {
		t.Errorf("the embedded nsqd was started, or the HTTP listener left bound")
	}
}
