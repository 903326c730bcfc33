package benchmarks

import "testing"

func TestWheelDeliversOnceNotEarly(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	r, err := h.Run(NewWheelDesign(2), smallLoad("small"))
	checkExactlyOnce(t, r, err)
}
