package deferd

import (
	"strings"
	"testing"
	"time"

	"github.com/deferd/deferd/internal/nsqdnode"
)

// NewOptions (with a sink chosen) is valid; each bad field is named by its
// field and flag; an explicit 0 is refused where it would mean nothing,
// and means "off" or "none" where documented.
func TestOptionsValidate(t *testing.T) {
	base := func() Options {
		o := NewOptions()
		o.EmbeddedNSQD = true
		return o
	}
	o := base()
	if err := o.Validate(); err != nil {
		t.Fatalf("defaults: %v", err)
	}
	for _, c := range []struct {
		name string
		mod  func(*Options)
		want string // "" = accepted
	}{
		{"tick 0", func(o *Options) { o.Tick = 0 }, "--tick (Options.Tick)"},
		{"max-defer 0", func(o *Options) { o.MaxDefer = 0 }, "--max-defer (Options.MaxDefer)"},
		{"pool 0", func(o *Options) { o.PoolSize = 0 }, "--pool-size (Options.PoolSize)"},
		{"compact 0", func(o *Options) { o.CompactInterval = 0 }, ""},
		{"compact -1", func(o *Options) { o.CompactInterval = -time.Second }, "--compact-interval"},
		{"memq 0", func(o *Options) { o.EmbeddedNSQDMemQueueSize = 0 }, ""},
		{"fsync", func(o *Options) { o.Fsync = "sometimes" }, "--fsync (Options.Fsync)"},
		{"no sink", func(o *Options) { o.EmbeddedNSQD = false }, "exactly one of Sink"},
		{"two sinks", func(o *Options) { o.NSQDTCPAddresses = []string{"127.0.0.1:1"} }, "exactly one of Sink"},
		{"publish backoff", func(o *Options) { o.PublishBackoff = 0 }, "Options.PublishBackoff"},
		{"body", func(o *Options) { o.MaxBodySize = o.MaxMsgSize }, "--max-body-size"},
	} {
		o := base()
		c.mod(&o)
		err := o.Validate()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
	if nsqdMemQueue(0) != nsqdnode.MemQueueNone || nsqdMemQueue(7) != 7 {
		t.Fatal("EmbeddedNSQDMemQueueSize is not passed to nsqd as given (0: nothing in memory)")
	}
}
