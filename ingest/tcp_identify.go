package ingest

import (
	"encoding/json"
	"fmt"
	"time"
)

// nsqd 1.3.0's defaults for what IDENTIFY negotiates and deferd does not
// configure: it only checks and echoes them.
const (
	nsqdVersion                = "1.3.0" // the nsqd whose protocol this is; IDENTIFY's "version"
	nsqdMaxRdyCount            = 2500
	nsqdMaxOutputBufferSize    = 64 << 10
	nsqdMinOutputBufferTimeout = 25 * time.Millisecond
	nsqdMaxOutputBufferTimeout = 30 * time.Second
	nsqdOutputBufferTimeout    = 250 * time.Millisecond
	nsqdMaxDeflateLevel        = 6
)

// tcpIdentity is what a connection's IDENTIFYs set, besides its heartbeat
// interval. Deferd writes each frame at once, so the output buffer
// settings are only echoed.
type tcpIdentity struct {
	msgTimeout    time.Duration
	outBufSize    int
	outBufTimeout time.Duration
	sampleRate    int32
}

// identifyData is nsqd's identifyDataV2: IDENTIFY's JSON body, decoded
// with the same Go types so that the same bodies fail to decode.
type identifyData struct {
	ClientID            string `json:"client_id"`
	Hostname            string `json:"hostname"`
	HeartbeatInterval   int    `json:"heartbeat_interval"`
	OutputBufferSize    int    `json:"output_buffer_size"`
	OutputBufferTimeout int    `json:"output_buffer_timeout"`
	FeatureNegotiation  bool   `json:"feature_negotiation"`
	TLSv1               bool   `json:"tls_v1"`
	Deflate             bool   `json:"deflate"`
	DeflateLevel        int    `json:"deflate_level"`
	Snappy              bool   `json:"snappy"`
	SampleRate          int32  `json:"sample_rate"`
	UserAgent           string `json:"user_agent"`
	MsgTimeout          int    `json:"msg_timeout"`
}

// identifyReply is nsqd's answer to IDENTIFY with feature_negotiation, key
// for key and in nsqd's order.
type identifyReply struct {
	MaxRdyCount         int64  `json:"max_rdy_count"`
	Version             string `json:"version"`
	MaxMsgTimeout       int64  `json:"max_msg_timeout"`
	MsgTimeout          int64  `json:"msg_timeout"`
	TLSv1               bool   `json:"tls_v1"`
	Deflate             bool   `json:"deflate"`
	DeflateLevel        int    `json:"deflate_level"`
	MaxDeflateLevel     int    `json:"max_deflate_level"`
	Snappy              bool   `json:"snappy"`
	SampleRate          int32  `json:"sample_rate"`
	AuthRequired        bool   `json:"auth_required"`
	OutputBufferSize    int    `json:"output_buffer_size"`
	OutputBufferTimeout int64  `json:"output_buffer_timeout"`
}

// identify is IDENTIFY, as nsqd 1.3.0 checks it. nsqd accepts any number
// of IDENTIFYs (its state check passes until SUB, which deferd refuses);
// every one is answered, but only the first changes the heartbeat ticker.
// TLS, snappy and deflate are never offered, so the answer never asks the
// client to upgrade the connection.
func (tc *tcpConn) identify() ([]byte, *tcpError) {
	n, err := tc.readLen()
	if err != nil {
		return nil, fatal("E_BAD_BODY", "IDENTIFY failed to read body size")
	}
	if int64(n) > tc.s.maxBody {
		return nil, fatal("E_BAD_BODY", fmt.Sprintf("IDENTIFY body too big %d > %d", n, tc.s.maxBody))
	}
	if n <= 0 {
		return nil, fatal("E_BAD_BODY", fmt.Sprintf("IDENTIFY invalid body size %d", n))
	}
	tc.body = tc.body[:0]
	if err := tc.readN(int(n)); err != nil {
		return nil, fatal("E_BAD_BODY", "IDENTIFY failed to read body")
	}
	var d identifyData
	if err := json.Unmarshal(tc.body, &d); err != nil {
		return nil, fatal("E_BAD_BODY", "IDENTIFY failed to decode JSON body")
	}
	if err := tc.apply(&d); err != nil {
		return nil, fatal("E_BAD_BODY", "IDENTIFY "+err.Error())
	}
	if !d.FeatureNegotiation {
		return okBytes, nil
	}
	id := &tc.ident
	resp, err := json.Marshal(identifyReply{
		MaxRdyCount:         nsqdMaxRdyCount,
		Version:             nsqdVersion,
		MaxMsgTimeout:       tc.s.maxMsgTO.Milliseconds(),
		MsgTimeout:          id.msgTimeout.Milliseconds(),
		DeflateLevel:        min(6, nsqdMaxDeflateLevel),
		MaxDeflateLevel:     nsqdMaxDeflateLevel,
		SampleRate:          id.sampleRate,
		OutputBufferSize:    id.outBufSize,
		OutputBufferTimeout: id.outBufTimeout.Milliseconds(),
	})
	if err != nil {
		return nil, fatal("E_IDENTIFY_FAILED", "IDENTIFY failed "+err.Error())
	}
	return resp, nil
}

// apply is nsqd's clientV2.Identify: the settings in nsqd's order, each
// with nsqd's range and error text. Before the first error the earlier
// settings are kept, as in nsqd (the error closes the connection anyway).
func (tc *tcpConn) apply(d *identifyData) error {
	switch hb := d.HeartbeatInterval; {
	case hb == -1:
		tc.setHeartbeat(0)
	case hb == 0:
	case hb >= 1000 && hb <= int(tc.s.maxHB/time.Millisecond):
		tc.setHeartbeat(time.Duration(hb) * time.Millisecond)
	default:
		return fmt.Errorf("heartbeat interval (%d) is invalid", hb)
	}
	id := &tc.ident
	switch to := d.OutputBufferTimeout; {
	case to == -1:
		id.outBufTimeout = 0
	case to == 0:
	case to >= int(nsqdMinOutputBufferTimeout/time.Millisecond) && to <= int(nsqdMaxOutputBufferTimeout/time.Millisecond):
		id.outBufTimeout = time.Duration(to) * time.Millisecond
	default:
		return fmt.Errorf("output buffer timeout (%d) is invalid", to)
	}
	switch sz := d.OutputBufferSize; {
	case sz == -1:
		id.outBufSize, id.outBufTimeout = 1, 0
	case sz == 0:
	case sz >= 64 && sz <= nsqdMaxOutputBufferSize:
		id.outBufSize = sz
	default:
		return fmt.Errorf("output buffer size (%d) is invalid", sz)
	}
	if d.SampleRate < 0 || d.SampleRate > 99 {
		return fmt.Errorf("sample rate (%d) is invalid", d.SampleRate)
	}
	id.sampleRate = d.SampleRate
	switch mt := d.MsgTimeout; {
	case mt == 0:
	case mt >= 1000 && mt <= int(tc.s.maxMsgTO/time.Millisecond):
		id.msgTimeout = time.Duration(mt) * time.Millisecond
	default:
		return fmt.Errorf("msg timeout (%d) is invalid", mt)
	}
	tc.identified++
	if tc.identified == 1 {
		tc.hbSet <- tc.hb // buffered; the heartbeat goroutine takes only this one
	}
	return nil
}
