package deferd

import (
	"errors"

	"github.com/deferd/deferd/internal/errs"
)

// The errors a Scheduler returns. They are plain values: match them with
// errors.Is (a returned error may wrap one with detail). ingest maps them
// to nsqd's HTTP answers (OVER_CAPACITY, NOT_FOUND, ...).
var (
	// ErrOverCapacity: past Options.MaxPending or MaxPendingBytes; nothing
	// of the request was kept.
	ErrOverCapacity = errs.OverCapacity
	// ErrNotFound: no pending message has that id (unknown, published,
	// cancelled).
	ErrNotFound = errs.NotFound
	// ErrInFlight: the message is being handed to the sink right now. If
	// the sink does not take it, it is retried later and a Cancel then
	// succeeds: ask again.
	ErrInFlight = errs.InFlight
	// ErrJournalUnavailable: the journal cannot be written (e.g. the disk
	// is full). What is pending keeps being delivered.
	ErrJournalUnavailable = errs.JournalUnavailable
	// ErrTooManyTopics: the publish would add a topic to the
	// Options.MaxTopics that deferd already holds (topics with messages
	// pending and, with the embedded nsqd, that nsqd's topics); nothing of
	// the request was kept.
	ErrTooManyTopics = errs.TooManyTopics
	// ErrClosed: the Scheduler is closing or closed.
	ErrClosed = errs.Closed
	// ErrInvalid: an argument breaks nsqd's rules or deferd's limits (topic,
	// id, empty or oversized body, delay beyond MaxDefer).
	ErrInvalid = errs.Invalid
)

// ErrRejected is what a Sink wraps in its error when it refuses the first
// body it did not take for what it is (too large, bad topic): that message
// is parked for Options.ParkBackoff instead of retried after RetryBackoff.
// The bodies after it were not tried and are not affected.
var ErrRejected = errors.New("deferd: rejected by the sink")
