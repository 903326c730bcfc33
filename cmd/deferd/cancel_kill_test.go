package main

// A 200 to POST /cancel must survive kill -9: the cancelled message must not
// be published after a restart. deferd's Cancel used to answer once the
// cancel mark was queued for the journal's next group commit (journal.Done
// does not wait for the write), so a kill right after the 200 could lose the
// mark and the message came back; it now waits (journal.DoneWait). This
// test failed at its 2nd or 3rd attempt before, with the journal's flusher
// kept busy by /mpub filler. Opt-in, since each attempt takes about 5 s:
//
//	DEFERD_CHAOS=1 go test -run TestCancelAckSurvivesKill -count=1 -timeout 5m -v ./cmd/deferd

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

func TestCancelAckSurvivesKill(t *testing.T) {
	if os.Getenv("DEFERD_CHAOS") == "" {
		t.Skip("set DEFERD_CHAOS=1")
	}
	bin := os.Getenv("CHAOS_BIN")
	if bin == "" {
		bin = buildDeferd(t)
	}
	fsync := os.Getenv("CHAOS_FSYNC")
	if fsync == "" {
		fsync = "always"
	}
	node := nsqdnodetest.Start(t, nsqdnode.Config{})
	var (
		mu        sync.Mutex
		delivered = map[string]int64{} // body -> nsqd timestamp
	)
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 1000
	c, err := nsq.NewConsumer("cx", "t", cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		mu.Lock()
		delivered[string(m.Body)] = m.Timestamp
		mu.Unlock()
		return nil
	}))
	if err := c.ConnectToNSQD(node.TCPAddr); err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	client := &http.Client{Timeout: 10 * time.Second}
	post := func(url string, body []byte) int {
		resp, err := client.Post(url, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			return 0
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}

	attempts := int(envInt("CHAOS_ATTEMPTS", 20))
	for a := 0; a < attempts; a++ {
		data := t.TempDir()
		addr := freeAddr(t)
		base := "http://" + addr
		args := []string{"--http-address", addr, "--data-path", data, "--nsqd-tcp-address", node.TCPAddr, "--fsync", fsync}
		p := startDeferd(t, bin, args...)
		waitPing(t, base, p)
		const n = 300
		for i := 0; i < n; i++ {
			id := fmt.Sprintf("a%d-%d", a, i)
			if code := post(base+"/pub?topic=cx&defer=3000&id="+id, []byte("body-"+id)); code != 200 {
				t.Fatalf("pub %s: %d", id, code)
			}
		}
		// Filler: keep the journal's flusher busy with large groups.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		filler := []byte(strings.Repeat(strings.Repeat("x", 2000)+"\n", 200))
		for w := 0; w < 3; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					post(base+"/mpub?topic=filler&defer=600000", filler)
				}
			}()
		}
		time.Sleep(200 * time.Millisecond)
		// Cancel until the first 200, then kill -9 at once.
		var cancelled string
		var at int64
		for i := 0; i < n && cancelled == ""; i++ {
			id := fmt.Sprintf("a%d-%d", a, i)
			if post(base+"/cancel?id="+id, nil) == 200 {
				p.cmd.Process.Signal(syscall.SIGKILL)
				cancelled, at = id, time.Now().UnixNano()
			}
		}
		<-p.done
		close(stop)
		wg.Wait()
		if cancelled == "" {
			t.Fatal("no cancel got 200")
		}
		p2 := startDeferd(t, bin, args...)
		waitPing(t, base, p2)
		time.Sleep(4 * time.Second) // everything not cancelled is due by now
		mu.Lock()
		ts, ok := delivered["body-"+cancelled]
		got := 0
		for i := 0; i < n; i++ {
			if _, ok := delivered[fmt.Sprintf("body-a%d-%d", a, i)]; ok {
				got++
			}
		}
		mu.Unlock()
		p2.cmd.Process.Signal(syscall.SIGKILL)
		<-p2.done
		if ok && ts > at {
			t.Fatalf("attempt %d: id %s got 200 to /cancel, deferd was killed right after, and the message was published to nsqd %v after the 200 (delivered %d of %d, want %d)\nrestart log:\n%s",
				a, cancelled, time.Duration(ts-at), got, n, n-1, tail(p2.log.String(), 2000))
		}
		if got != n-1 {
			t.Fatalf("attempt %d: delivered %d of %d, want %d", a, got, n, n-1)
		}
		t.Logf("attempt %d: cancel of %s survived the kill", a, cancelled)
	}
}
