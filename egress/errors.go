package egress

import (
	"errors"
	"fmt"
	"strings"

	"github.com/nsqio/go-nsq"
)

// Sentinel errors. The ones marked permanent make IsPermanent true.
var (
	// ErrStopped is returned by Publish after, or while, Stop runs.
	ErrStopped = errors.New("egress: stopped")
	// ErrBodyTooLarge (permanent): a body is larger than Options.MaxMsgSize;
	// it was not sent.
	ErrBodyTooLarge = errors.New("egress: body larger than MaxMsgSize")
	// ErrEmptyBody (permanent): a body is empty; nsqd rejects zero-length
	// messages, so it was not sent.
	ErrEmptyBody = errors.New("egress: empty body")
	// ErrBadTopic (permanent): the topic name is not a valid nsqd topic name.
	ErrBadTopic = errors.New("egress: invalid topic name")
	// ErrTimeout: nsqd did not answer a batch within Options.Timeout. The
	// batch may or may not have been queued by nsqd.
	ErrTimeout = errors.New("egress: no answer from nsqd")
	// ErrNoNSQD: TryPublish found every nsqd marked down, or Publish or
	// TryPublish found no nsqd known at all (only LookupdHTTPAddrs, which
	// listed none yet); nothing was sent. The caller retries later.
	ErrNoNSQD = errors.New("egress: every nsqd is down")

	// errNodeGone: the nsqd picked was removed by discovery before the
	// batch was sent; nothing was sent, and the caller picks again.
	errNodeGone = errors.New("egress: nsqd removed by discovery")
)

// PublishError is the error Publish returns when it stops early. Unwrap gives
// the cause: one of the sentinels above, a go-nsq error (nsq.ErrNotConnected,
// nsq.ErrProtocol with an E_ code, ...) or a network error.
type PublishError struct {
	Topic    string
	Addr     string // nsqd of the last try; "" if the body was never sent
	Index    int    // index in bodies of the first body not acknowledged
	Attempts int    // tries made for the failing batch
	Err      error

	permanent bool
}

func (e *PublishError) Error() string {
	kind := "transient"
	if e.permanent {
		kind = "permanent"
	}
	where := ""
	if e.Addr != "" {
		where = " via nsqd " + e.Addr
	}
	return fmt.Sprintf("egress: publish to %q stopped at body %d%s after %d attempt(s) (%s): %v",
		e.Topic, e.Index, where, e.Attempts, kind, e.Err)
}

func (e *PublishError) Unwrap() error { return e.Err }

// IsPermanent reports whether err will not go away by retrying: the body at
// PublishError.Index was refused for what it is (too large, empty, bad topic;
// nsqd's E_BAD_MESSAGE, E_BAD_TOPIC, or E_BAD_BODY for a single message). The
// caller should park that body instead of rescheduling it hot; the bodies
// after it were not tried and are not affected.
func IsPermanent(err error) bool {
	var pe *PublishError
	if errors.As(err, &pe) {
		return pe.permanent
	}
	if errors.Is(err, ErrBodyTooLarge) || errors.Is(err, ErrEmptyBody) || errors.Is(err, ErrBadTopic) {
		return true
	}
	switch protocolCode(err) {
	case "E_BAD_TOPIC", "E_BAD_MESSAGE":
		return true
	}
	return false
}

// protocolCode returns the E_ code of an nsqd error response, or "".
func protocolCode(err error) string {
	var pe nsq.ErrProtocol
	if !errors.As(err, &pe) {
		var ppe *nsq.ErrProtocol
		if !errors.As(err, &ppe) || ppe == nil {
			return ""
		}
		pe = *ppe
	}
	code, _, _ := strings.Cut(pe.Reason, " ")
	return code
}

// class is what Publish does after a failed batch.
type class int

const (
	classRetry     class = iota // node or connection trouble: mark the node down, try elsewhere
	classSplit                  // nsqd refused the batch's content: halve it; for one body it is permanent
	classPermanent              // the batch can never succeed as is
)

func classify(err error) class {
	switch protocolCode(err) {
	case "E_BAD_TOPIC":
		return classPermanent
	case "E_BAD_MESSAGE", "E_BAD_BODY":
		return classSplit
	}
	return classRetry
}
