package main

import (
	"bytes"
	"strconv"
)

// A benchmark payload is compact JSON with the step number, a sequence
// number, the send time in unix nanoseconds and the intended receiver's
// index, padded to a fixed size:
//
//	{"k":1,"s":42,"t":1732340000123456789,"r":7,"p":"xxxx…"}
func appendPayload(b []byte, step, seq int, sentNs int64, to int, size int) []byte {
	start := len(b)
	b = append(b, `{"k":`...)
	b = strconv.AppendInt(b, int64(step), 10)
	b = append(b, `,"s":`...)
	b = strconv.AppendInt(b, int64(seq), 10)
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, sentNs, 10)
	b = append(b, `,"r":`...)
	b = strconv.AppendInt(b, int64(to), 10)
	b = append(b, `,"p":"`...)
	for len(b)-start+2 < size {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

type benchMsg struct {
	step, seq, to int
	sent          int64
}

var dataKey = []byte(`"data":{"k":`)

// parseFrame extracts the benchmark fields from a frame a node sent. It
// relies on the field order appendPayload writes.
func parseFrame(f []byte) (benchMsg, bool) {
	var m benchMsg
	i := bytes.Index(f, dataKey)
	if i < 0 {
		return m, false
	}
	f = f[i+len(dataKey):]
	var v int64
	var ok bool
	if v, f, ok = parseInt(f, ""); !ok {
		return m, false
	}
	m.step = int(v)
	if v, f, ok = parseInt(f, `,"s":`); !ok {
		return m, false
	}
	m.seq = int(v)
	if v, f, ok = parseInt(f, `,"t":`); !ok {
		return m, false
	}
	m.sent = v
	if v, _, ok = parseInt(f, `,"r":`); !ok {
		return m, false
	}
	m.to = int(v)
	return m, true
}

func parseInt(f []byte, prefix string) (int64, []byte, bool) {
	if !bytes.HasPrefix(f, []byte(prefix)) {
		return 0, f, false
	}
	f = f[len(prefix):]
	neg := len(f) > 0 && f[0] == '-'
	if neg {
		f = f[1:]
	}
	var n int64
	j := 0
	for j < len(f) && f[j] >= '0' && f[j] <= '9' {
		n = n*10 + int64(f[j]-'0')
		j++
	}
	if j == 0 {
		return 0, f, false
	}
	if neg {
		n = -n
	}
	return n, f[j:], true
}

var (
	recoveredType  = []byte(`{"type":"recovered"`)
	recoveredFalse = []byte(`"recovered":false`)
)

// isRecovered reports whether f is a recovered frame (docs/protocol.md §17):
// every socket's first frame, and later reports of unrecoverable gaps.
func isRecovered(f []byte) bool { return bytes.HasPrefix(f, recoveredType) }
