package deferd

import (
	"errors"
	"time"

	"github.com/deferd/deferd/ingest"
)

// The operator endpoints (ingest.OperatorBackend; operator.go).
func (b *httpBackend) Lookup(id, key string, body bool) (any, error) {
	ref, err := httpRef(id, key)
	if err != nil {
		return nil, err
	}
	return b.s.Lookup(ref, body)
}
func (b *httpBackend) Pending(topic string, limit int, cursor string) (any, error) {
	p, err := b.s.ListPending(PendingQuery{Topic: topic, Limit: limit, Cursor: cursor})
	if errors.Is(err, ErrInvalid) {
		return nil, ingest.ErrInvalidCursor
	}
	return p, err
}
func (b *httpBackend) Reschedule(id, key string, dueMs int64) error {
	ref, err := httpRef(id, key)
	if err != nil {
		return err
	}
	err = b.s.Reschedule(ref, time.UnixMilli(dueMs))
	if errors.Is(err, ErrInvalid) {
		return &ingest.Error{Code: 400, Text: "INVALID_DEFER"}
	}
	return err
}
func (b *httpBackend) CancelKey(key string) error {
	ref, err := httpRef("", key)
	if err != nil {
		return err
	}
	return b.s.CancelRef(ref)
}

// httpRef is the Ref of id= or key=; a bad key is ingest.ErrInvalidKey.
func httpRef(id, key string) (Ref, error) {
	if id != "" {
		return Ref{ID: id}, nil
	}
	k, err := ParseKey(key)
	if err != nil {
		return Ref{}, ingest.ErrInvalidKey
	}
	return Ref{Key: k}, nil
}
