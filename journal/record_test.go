package journal

import (
	"testing"
)

func FuzzDecodeRecord(f *testing.F) {
	m := msg(3, 40)
	f.Add(appendMsgFrame(nil, 0, 7, nil, &m))
	f.Add(appendMsgFrame(nil, 0, 0, &Key{1, 2}, &Message{Topic: "t"}))
	f.Add(appendDoneFrame(nil, 0, Published, []Key{{1, 2}, {3, 4}}))
	f.Add([]byte{})
	f.Add(make([]byte, 64))
	damaged := appendMsgFrame(nil, 0, 1, nil, &m)
	damaged[len(damaged)-1] ^= 0xff // crc mismatch, then a valid record
	f.Add(appendMsgFrame(damaged, 0, 2, nil, &m))
	f.Fuzz(func(t *testing.T, b []byte) {
		scanSegment(b, layout{}, true, true, func(*record) error { return nil }, nil)
		scanSegment(b, layout{}, false, true, func(*record) error { return nil }, nil)
		scanSegment(b, layout{seed: 0x1234, prevSize: int64(len(b))}, false, true, func(*record) error { return nil }, nil)
		if len(b) >= segHeaderLen {
			scanSegment(b, layout{start: segHeaderLen, seed: 0x1234}, true, true, func(*record) error { return nil }, nil)
		}
		typ, payload, n, err := decodeFrame(b, 0, true)
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
