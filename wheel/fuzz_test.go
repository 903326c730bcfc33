package wheel

import (
	"encoding/binary"
	"testing"
	"time"
)

// byteOps turns fuzz input into choices; it yields zeros once exhausted.
type byteOps struct{ b []byte }

func (o *byteOps) Uint64() uint64 {
	var buf [8]byte
	n := copy(buf[:], o.b)
	o.b = o.b[n:]
	return binary.LittleEndian.Uint64(buf[:])
}

func FuzzWheel(f *testing.F) {
	f.Add(uint8(0), int64(0), []byte{})
	f.Add(uint8(1), int64(-1), []byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"))
	f.Add(uint8(2), int64(1)<<62, []byte("add cancel advance add add advance advance cancel"))
	f.Add(uint8(3), int64(9223372036854775000), make([]byte, 256))
	f.Add(uint8(4+1), int64(-1), []byte("sharded: add cancel advance add add advance"))
	f.Add(uint8(8+4+2), int64(1)<<62, []byte("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"))
	f.Fuzz(func(t *testing.T, tickSel uint8, start int64, data []byte) {
		ticks := [...]time.Duration{time.Microsecond, time.Millisecond, 13 * time.Microsecond, time.Second}
		tick := ticks[int(tickSel)%len(ticks)]
		// Each step consumes several words; size the run to the input.
		steps := len(data)/8 + 1
		shards := 0 // a plain Wheel, or from bit 2 of tickSel a Sharded one
		if tickSel&4 != 0 {
			shards = 2 + int(tickSel>>3)%3
		}
		runModel(t, &byteOps{b: data}, tick, start, steps, shards)
	})
}
