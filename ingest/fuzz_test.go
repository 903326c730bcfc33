package ingest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net/url"
	"regexp"
	"strconv"
	"testing"

	"github.com/deferd/deferd/internal/nsqname"
)

// nsqdText is nsqd 1.3.0's text /mpub loop (nsqd/http.go doMPUB), kept as
// the reference splitText must agree with.
func nsqdText(body io.Reader, maxMsg, maxBody int64) ([][]byte, string) {
	var msgs [][]byte
	readMax := maxBody + 1
	rdr := bufio.NewReader(io.LimitReader(body, readMax))
	total := 0
	for exit := false; !exit; {
		block, err := rdr.ReadBytes('\n')
		if err != nil {
			if err != io.EOF {
				return nil, "INTERNAL_ERROR"
			}
			exit = true
		}
		total += len(block)
		if int64(total) == readMax {
			return nil, "BODY_TOO_BIG"
		}
		if len(block) > 0 && block[len(block)-1] == '\n' {
			block = block[:len(block)-1]
		}
		if len(block) == 0 {
			continue
		}
		if int64(len(block)) > maxMsg {
			return nil, "MSG_TOO_BIG"
		}
		msgs = append(msgs, block)
	}
	return msgs, ""
}

// nsqdBinary is nsqd 1.3.0's readMPUB (nsqd/protocol_v2.go), the reference
// for splitBinary.
func nsqdBinary(r io.Reader, maxMsg, maxBody int64) ([][]byte, string) {
	tmp := make([]byte, 4)
	readLen := func() (int32, error) {
		if _, err := io.ReadFull(r, tmp); err != nil {
			return 0, err
		}
		return int32(binary.BigEndian.Uint32(tmp)), nil
	}
	n, err := readLen()
	if err != nil {
		return nil, "BAD_BODY"
	}
	if n <= 0 || int64(n) > (maxBody-4)/5 {
		return nil, "BAD_BODY"
	}
	var msgs [][]byte
	for i := int32(0); i < n; i++ {
		size, err := readLen()
		if err != nil || size <= 0 || int64(size) > maxMsg {
			return nil, "BAD_MESSAGE"
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, "BAD_MESSAGE"
		}
		msgs = append(msgs, b)
	}
	return msgs, ""
}

func checkSplit(t *testing.T, body []byte, maxMsg, maxBody int64, bin bool) {
	t.Helper()
	var want [][]byte
	var wantErr string
	var got [][]byte
	var e *Error
	readMax := maxBody + 1
	prefix := body
	if int64(len(prefix)) > readMax {
		prefix = prefix[:readMax]
	}
	if bin {
		want, wantErr = nsqdBinary(bytes.NewReader(body), maxMsg, maxBody)
		got, e = splitBinary(nil, prefix, maxMsg, maxBody, int64(len(body)) > readMax)
		if e == errBodyTooBig && int64(len(body)) > maxBody {
			return // the documented difference: deferd caps binary bodies too
		}
	} else {
		want, wantErr = nsqdText(bytes.NewReader(body), maxMsg, maxBody)
		got, e = splitText(nil, prefix, maxMsg, maxBody)
	}
	gotErr := ""
	if e != nil {
		gotErr = e.Text
		if e.Code != 413 && e.Code != 400 {
			t.Fatalf("code %d", e.Code)
		}
	}
	if gotErr != wantErr {
		t.Fatalf("binary=%v body %q: error %q, nsqd %q", bin, body, gotErr, wantErr)
	}
	if wantErr != "" {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("binary=%v body %q: %d messages, nsqd %d", bin, body, len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) || cap(got[i]) != len(got[i]) {
			t.Fatalf("binary=%v message %d = %q (cap %d), nsqd %q", bin, i, got[i], cap(got[i]), want[i])
		}
	}
}

// FuzzSplitMpub checks the /mpub body parsers against nsqd's own code.
func FuzzSplitMpub(f *testing.F) {
	f.Add([]byte("a\nb\n\nc"), false, uint8(8), uint16(32))
	f.Add([]byte("\n\n\n"), false, uint8(8), uint16(32))
	f.Add([]byte("toolongline\nx"), false, uint8(4), uint16(64))
	f.Add(bytes.Repeat([]byte("ab\n"), 20), false, uint8(8), uint16(30))
	f.Add(frame(2, []byte("one"), []byte("t\nwo")), true, uint8(8), uint16(64))
	f.Add(frame(3, []byte("one")), true, uint8(8), uint16(64))
	f.Add(frame(1, nil), true, uint8(8), uint16(64))
	f.Add(frame(-1), true, uint8(8), uint16(64))
	f.Add([]byte{0, 0, 0}, true, uint8(8), uint16(64))
	f.Add(append(frame(1, []byte("x")), "junk"...), true, uint8(8), uint16(64))
	f.Add(frame(4, []byte("aaaa"), []byte("bbbb"), []byte("cccc"), []byte("dddd")), true, uint8(4), uint16(20))
	f.Fuzz(func(t *testing.T, body []byte, bin bool, maxMsg uint8, maxBody uint16) {
		if maxMsg == 0 || maxBody < 5 {
			return
		}
		checkSplit(t, body, int64(maxMsg), int64(maxBody), bin)
	})
}

var nsqdTopicRegex = regexp.MustCompile(`^[.a-zA-Z0-9_-]+(#ephemeral)?$`)

// FuzzQueryPieces checks validQuery, parseInt and validTopic against what
// nsqd uses: url.ParseQuery, strconv.ParseInt and its topic regexp.
func FuzzQueryPieces(f *testing.F) {
	for _, s := range []string{"topic=t", "a=%zz", "a=%2", "a;b", "&&", "t=%41%4a", "+5", "-0", "9223372036854775807",
		"9223372036854775808", "-9223372036854775808", "-9223372036854775809", "", "x#ephemeral", "#ephemeral", "1_0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_, err := url.ParseQuery(s)
		if got := validQuery([]byte(s)); got != (err == nil) {
			t.Fatalf("validQuery(%q) = %v, url.ParseQuery error %v", s, got, err)
		}
		want, err := strconv.ParseInt(s, 10, 64)
		got, ok := parseInt([]byte(s))
		if ok != (err == nil) || ok && got != want {
			t.Fatalf("parseInt(%q) = %d %v, strconv %d %v", s, got, ok, want, err)
		}
		nsqdOK := len(s) >= 1 && len(s) <= 64 && nsqdTopicRegex.MatchString(s)
		if nsqname.ValidTopic([]byte(s)) != nsqdOK {
			t.Fatalf("nsqname.ValidTopic(%q) = %v, nsqd %v", s, !nsqdOK, nsqdOK)
		}
	})
}
