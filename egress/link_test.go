package egress

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"

	"github.com/deferd/deferd/internal/nsqdnode"
	"github.com/deferd/deferd/internal/nsqdnode/nsqdnodetest"
)

// A link's MPUB, built in its reused buffer, is byte for byte go-nsq's
// MultiPublish, from one batch to the next (other topic, fewer and
// shorter bodies: nothing of the previous batch may show through).
func TestLinkEncodeIsMultiPublish(t *testing.T) {
	l := newLink("127.0.0.1:1", nsq.NewConfig(), t.Logf)
	batches := []struct {
		topic  string
		bodies [][]byte
	}{
		{"a", [][]byte{[]byte("first body"), bytes.Repeat([]byte{0xff}, 300), []byte("x")}},
		{"a", [][]byte{[]byte("y")}},
		{"other_topic#ephemeral", [][]byte{[]byte("zz"), []byte("\n\x00")}},
	}
	for i, b := range batches {
		l.encode(b.topic, b.bodies)
		var got, want bytes.Buffer
		if _, err := l.cmd.WriteTo(&got); err != nil {
			t.Fatal(err)
		}
		cmd, err := nsq.MultiPublish(b.topic, b.bodies)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cmd.WriteTo(&want); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("batch %d: link wrote\n%q\ngo-nsq writes\n%q", i, got.Bytes(), want.Bytes())
		}
	}
}

// MPUBs pipelined on one link get their own answers, in order: OK, then
// nsqd's error for the batch it refused, then, for the batch written
// behind it (nsqd closed the connection unread), ErrNotConnected; the
// link is then lost and refuses further writes at once.
func TestLinkPipelinedAnswers(t *testing.T) {
	node := nsqdnodetest.Start(t, nsqdnode.Config{MaxMsgSize: 100})
	cfg := nsq.NewConfig()
	l := newLink(node.TCPAddr, cfg, t.Logf)
	t.Cleanup(l.stop)
	<-l.dial()
	if l.lost.Load() {
		t.Fatalf("dial: %v", l.dialErr)
	}
	ok := [][]byte{[]byte("fits")}
	tooBig := [][]byte{bytes.Repeat([]byte("x"), 200)}
	var answers []<-chan error
	var writeErr error
	for _, batch := range [][][]byte{ok, tooBig, ok} {
		ans, err := l.write("pipe", batch)
		if err != nil {
			writeErr = err // the third may find the socket closed already
			break
		}
		answers = append(answers, ans)
	}
	if len(answers) < 2 {
		t.Fatalf("only %d writes went out: %v", len(answers), writeErr)
	}
	wait := func(i int) error {
		select {
		case err := <-answers[i]:
			return err
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to MPUB %d in 5 s", i)
			return nil
		}
	}
	if err := wait(0); err != nil {
		t.Fatalf("MPUB 0: %v, want OK", err)
	}
	if err := wait(1); protocolCode(err) != "E_BAD_MESSAGE" {
		t.Fatalf("MPUB 1: %v, want E_BAD_MESSAGE", err)
	}
	if len(answers) == 3 {
		if err := wait(2); !errors.Is(err, nsq.ErrNotConnected) {
			t.Fatalf("MPUB 2, behind the refused one: %v, want ErrNotConnected", err)
		}
	}
	<-l.done // go-nsq's close has run
	if !l.lost.Load() {
		t.Fatal("link not lost after nsqd closed its connection")
	}
	if _, err := l.write("pipe", ok); !errors.Is(err, nsq.ErrNotConnected) {
		t.Fatalf("write on a closed link: %v, want ErrNotConnected", err)
	}
	if n := node.NSQD.GetTopic("pipe").Depth(); n != 1 {
		t.Fatalf("nsqd holds %d messages of topic pipe, want 1", n)
	}
}
