// Package sat is saturating integer arithmetic: results that would
// overflow are clamped to the type's range instead of wrapping. It imports
// nothing but the standard library.
package sat

import "math"

// Add returns a+b clamped to [math.MinInt64, math.MaxInt64]: math.MaxInt64
// if the true sum is above it, math.MinInt64 if below, the sum otherwise.
// O(1), no allocation; a pure function, safe for concurrent use.
func Add(a, b int64) int64 {
	s := a + b
	// The sum wrapped iff a and b have the same sign and s has the other.
	if (a^s)&(b^s) < 0 {
		if a < 0 {
			return math.MinInt64
		}
		return math.MaxInt64
	}
	return s
}
