// Package intern shares the strings a program sees over and over (topic
// names), so that turning a known name from bytes into a string does not
// allocate. It imports nothing of deferd's.
package intern

import (
	"sync"
	"sync/atomic"
)

// Max is the number of distinct strings a Table keeps. Past it, Get still
// finds the strings it keeps and returns every other one as a fresh copy.
const Max = 4096

// Table interns strings. Get is safe for concurrent use. The zero value is
// an empty Table ready to use; a Table must not be copied after first use.
//
// Reads are lock-free: the strings live in a map that is never modified
// once published; adding one copies it under a mutex and publishes the copy
// (copy-on-write). A hit costs one map lookup and no allocation; a miss
// that adds a string costs one allocation for the string plus a copy of
// the map, O(n) for n strings kept (so filling a Table to Max copies about
// eight million entries in total, once).
type Table struct {
	m  atomic.Pointer[map[string]string]
	mu sync.Mutex // serialises additions
}

// Get returns b as a string: the Table's copy if it has one, else a new
// string, which it keeps if it holds fewer than Max. b is not retained.
// Cost: as described on Table; no allocation when b is known.
func (t *Table) Get(b []byte) string {
	if m := t.m.Load(); m != nil {
		if s, ok := (*m)[string(b)]; ok { // no allocation: the key is only looked up
			return s
		}
	}
	return t.add(string(b))
}

// add keeps s unless it is known (then it returns the kept copy) or the
// Table is full.
func (t *Table) add(s string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.m.Load()
	n := 0
	if old != nil {
		if v, ok := (*old)[s]; ok {
			return v
		}
		n = len(*old)
	}
	if n >= Max {
		return s
	}
	m := make(map[string]string, n+1)
	if old != nil {
		for k, v := range *old {
			m[k] = v
		}
	}
	m[s] = s
	t.m.Store(&m)
	return s
}

// Len returns the number of strings kept. Safe for concurrent use; O(1).
func (t *Table) Len() int {
	if m := t.m.Load(); m != nil {
		return len(*m)
	}
	return 0
}
