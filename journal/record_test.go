package journal

import (
	"testing"
)

func FuzzDecodeRecord(f *testing.F) {
	m := msg(3, 40)
	f.Add(appendMsgFrame(nil, 7, nil, &m))
	f.Add(appendMsgFrame(nil, 0, &Key{1, 2}, &Message{Topic: "t"}))
	f.Add(appendDoneFrame(nil, Published, []Key{{1, 2}, {3, 4}}))
	f.Add([]byte{})
	f.Add(make([]byte, 64))
	damaged := appendMsgFrame(nil, 1, nil, &m)
	damaged[len(damaged)-1] ^= 0xff // crc mismatch, then a valid record
	f.Add(appendMsgFrame(damaged, 2, nil, &m))
	f.Fuzz(func(t *testing.T, b []byte) {
		scanSegment(b, true, true, func(*record) error { return nil }, nil)
		scanSegment(b, false, true, func(*record) error { return nil }, nil)
		typ, payload, n, err := decodeFrame(b, true)
		if err != nil {
			return
		}
		if n > len(b) || n < headerLen+1 {
			t.Fatalf("bad n %d", n)
		}
		switch typ {
		case recDone:
			if _, keys, err := decodeDone(payload); err == nil && len(keys)%8 != 0 {
				t.Fatal("bad keys")
			}
		default:
			var r rawMsg
			if err := decodeMsg(typ, payload, &r); err == nil {
				if len(r.id)+len(r.topic)+len(r.body) > n {
					t.Fatal("fields larger than the frame")
				}
			}
		}
	})
}
