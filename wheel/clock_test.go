package wheel

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestDivTick(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tick := range []uint64{1000, 1001, 7000, 1e6, 1e9, 1<<40 + 3, 1 << 62, math.MaxInt64} {
		w := &Wheel[int]{tick: tick, tickInv: math.MaxUint64 / tick}
		check := func(d uint64) {
			q, rem := w.divTick(d)
			if q != d/tick || rem != d%tick {
				t.Fatalf("divTick(%d) by %d = %d, %d; want %d, %d", d, tick, q, rem, d/tick, d%tick)
			}
		}
		for _, d := range []uint64{0, 1, tick - 1, tick, tick + 1, math.MaxUint64, math.MaxUint64 - 1, math.MaxInt64, math.MaxUint64 / tick * tick, math.MaxUint64/tick*tick - 1} {
			check(d)
		}
		for range 100_000 {
			d := r.Uint64() >> (r.Uint64() % 64)
			check(d)
			check(d / tick * tick)
			check(d/tick*tick - 1)
		}
	}
}
