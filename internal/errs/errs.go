// Package errs holds the sentinel errors the scheduler returns and its
// front ends (ingest's HTTP and TCP listeners) map to nsqd's answers. It is
// a leaf: it imports nothing of deferd's, so the scheduler and ingest can
// share these values without importing each other. The public names are
// the root package's ErrOverCapacity, ErrNotFound, and so on; they are
// these same values, so errors.Is matches either.
package errs

import "errors"

var (
	// OverCapacity: past Options.MaxPending or MaxPendingBytes.
	OverCapacity = errors.New("deferd: over capacity")
	// NotFound: no pending message has that id (unknown, published,
	// cancelled).
	NotFound = errors.New("deferd: not found")
	// InFlight: the message is being handed to the sink right now; the
	// outcome is not known yet.
	InFlight = errors.New("deferd: in flight")
	// JournalUnavailable: the journal cannot be written (e.g. the disk is
	// full).
	JournalUnavailable = errors.New("deferd: journal unavailable")
	// Closed: the scheduler is closing or closed.
	Closed = errors.New("deferd: closed")
	// TooManyTopics: a publish would add a topic past Options.MaxTopics.
	TooManyTopics = errors.New("deferd: too many topics")
	// Invalid: an argument breaks the rules (topic, id, size, due time).
	Invalid = errors.New("deferd: invalid argument")
)
