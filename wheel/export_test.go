package wheel

import "fmt"

// Test hooks: entry points into the package's internals that only tests
// and benchmarks use.

// addOn is Add on shard s: tests and benchmarks spread entries over the
// shards, which one goroutine's Adds would not (Sharded picks the shard
// from the goroutine's stack address).
func (w *Sharded[T]) addOn(s uint32, due int64, v T) Handle {
	return w.outer(w.shards[s].Add(due, v), s)
}

// scanVisits is how many entries Scan has looked at so far.
func (w *Wheel[T]) scanVisits() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.visits
}

// checkLists returns "" if the lists agree with the occupancy bits and
// every entry below the top level sits in the slot and the sub-list its
// tick maps to, else what is wrong. O(pending).
func (w *Wheel[T]) checkLists() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	for l := range numLevels {
		shift := uint(levelBits * l)
		cur := int(w.elapsed>>shift) & slotMask
		levelStart := w.elapsed &^ (uint64(1)<<(shift+levelBits) - 1)
		for s := range numSlots {
			bit := w.occupied[l]>>s&1 != 0
			var lists []int
			switch l {
			case 0:
				lists = []int{s}
			case topLevel:
				lists = []int{topBase + s}
			default:
				ls := (l-1)*numSlots + s
				if (w.subOcc[ls] != 0) != bit {
					return fmt.Sprintf("level %d slot %d: occupied %v, sub-lists %#x", l, s, bit, w.subOcc[ls])
				}
				for k := range numSlots {
					lists = append(lists, subBase+ls*numSlots+k)
				}
			}
			any := false
			for k, list := range lists {
				empty := w.empty(list)
				any = any || !empty
				if l > 0 && l < topLevel && (w.subOcc[(l-1)*numSlots+s]>>k&1 == 0) != empty {
					return fmt.Sprintf("level %d slot %d sub-list %d: empty %v, bit %#x", l, s, k, empty, w.subOcc[(l-1)*numSlots+s])
				}
				if empty || l == topLevel {
					continue
				}
				if s <= cur {
					return fmt.Sprintf("level %d slot %d occupied at or before the current slot %d", l, s, cur)
				}
				start := levelStart + uint64(s)<<shift
				sn := uint32(list + 1)
				for i := w.sent[sn].next; i != sn; i = w.at(i).next {
					t := w.slotTick(w.at(i), start)
					if levelFor(w.elapsed, t) != l || int(t>>shift)&slotMask != s {
						return fmt.Sprintf("tick %d in level %d slot %d (elapsed %d)", t, l, s, w.elapsed)
					}
					if l > 0 && int(t>>(shift-levelBits))&slotMask != k {
						return fmt.Sprintf("tick %d in level %d slot %d sub-list %d", t, l, s, k)
					}
				}
			}
			if any != bit {
				return fmt.Sprintf("level %d slot %d: occupied %v, lists non-empty %v", l, s, bit, any)
			}
		}
	}
	return ""
}
