package sat

import (
	"math"
	"math/big"
	"testing"
)

// ref is a+b clamped to the int64 range, computed without overflow.
func ref(a, b int64) int64 {
	s := new(big.Int).Add(big.NewInt(a), big.NewInt(b))
	switch {
	case s.Cmp(big.NewInt(math.MaxInt64)) > 0:
		return math.MaxInt64
	case s.Cmp(big.NewInt(math.MinInt64)) < 0:
		return math.MinInt64
	}
	return s.Int64()
}

func TestAdd(t *testing.T) {
	const max, min = math.MaxInt64, math.MinInt64
	for _, c := range []struct{ a, b, want int64 }{
		{0, 0, 0},
		{1, 2, 3},
		{-1, -2, -3},
		{max, 0, max},
		{min, 0, min},
		{max, 1, max},
		{max, max, max},
		{max - 1, 1, max},
		{max - 1, 2, max},
		{min, -1, min},
		{min, min, min},
		{min + 1, -1, min},
		{min + 1, -2, min},
		{max, min, -1},
		{min, max, -1},
		{max, -1, max - 1},
		{min, 1, min + 1},
		{1 << 62, 1 << 62, max},
		{-(1 << 62), -(1 << 62), min},
		{-(1 << 62), -(1<<62 - 1), min + 1},
	} {
		if got := Add(c.a, c.b); got != c.want {
			t.Errorf("Add(%d, %d) = %d, want %d", c.a, c.b, got, c.want)
		}
		if got := Add(c.b, c.a); got != c.want {
			t.Errorf("Add(%d, %d) = %d, want %d", c.b, c.a, got, c.want)
		}
		if r := ref(c.a, c.b); r != c.want {
			t.Errorf("ref(%d, %d) = %d, want %d: bad table row", c.a, c.b, r, c.want)
		}
	}
}

func FuzzAdd(f *testing.F) {
	for _, s := range [][2]int64{{0, 0}, {math.MaxInt64, 1}, {math.MinInt64, -1}, {math.MaxInt64, math.MinInt64}, {-5, 3}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b int64) {
		if got, want := Add(a, b), ref(a, b); got != want {
			t.Fatalf("Add(%d, %d) = %d, want %d", a, b, got, want)
		}
	})
}
