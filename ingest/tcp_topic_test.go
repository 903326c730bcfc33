package ingest

import (
	"bytes"
	"testing"
	"time"
)

// The topic reaches the Backend as sent when the bodies after it are
// larger than the connection's read buffer and refill it (the command
// line, topic included, is read into that buffer first): PUB, DPUB and
// MPUB of go-nsq, with bodies of 500 B to 64 KiB.
func TestTCPTopicSurvivesLargeBodies(t *testing.T) {
	rec := &recorder{}
	s := startTCP(t, TCPOptions{}, rec)
	p := newTCPProducer(t, s, nil)
	for _, size := range []int{500, tcpReadBuffer - 10, tcpReadBuffer + 10, 64 << 10} {
		body := bytes.Repeat([]byte("x"), size)
		batch := [][]byte{body, body, body, body}
		for i := range 3 {
			if err := p.MultiPublish("topic-a", batch); err != nil {
				t.Fatal(err)
			}
			if err := p.Publish("topic-b", body); err != nil {
				t.Fatal(err)
			}
			if err := p.DeferredPublish("topic-c", time.Second, body); err != nil {
				t.Fatal(err)
			}
			for j, pr := range rec.take() {
				if want := "topic-" + string(rune('a'+j)); pr.Topic != want {
					t.Fatalf("%d B bodies, round %d, publish %d: topic %q, want %q", size, i, j, pr.Topic, want)
				}
			}
		}
	}
}
