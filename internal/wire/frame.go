package wire

import (
	"bytes"
	"strconv"
	"unicode/utf8"
)

// Frame types a browser receives (docs/protocol.md, "Frames"). Every frame
// is one JSON object sent as one WebSocket text message.
const (
	TypeMessage   = "message"
	TypeChannel   = "channel"
	TypeBroadcast = "broadcast"
	TypeReceipt   = "receipt"
	TypeRecovered = "recovered" // RecoveredFrame
)

// Receipt statuses.
const (
	StatusDelivered = "delivered"
	StatusOffline   = "offline"
)

// MessageFrame encodes {"type":"message","id","from","ts","data"}. to is only
// set on the copy echoed to the sender's own sockets, so that the sender's
// other devices know whom the message went to. data must be compact JSON.
func MessageFrame(id, from string, to []string, ts int64, data []byte) []byte {
	b := make([]byte, 0, 64+len(id)+len(from)+len(data))
	b = append(b, `{"type":"message","id":`...)
	b = AppendString(b, id)
	b = append(b, `,"from":`...)
	b = AppendString(b, from)
	if len(to) > 0 {
		b = append(b, `,"to":[`...)
		for i, t := range to {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendString(b, t)
		}
		b = append(b, ']')
	}
	return appendTail(b, ts, data)
}

// ChannelFrame encodes {"type":"channel","id","from","channel","ts","data"}.
func ChannelFrame(id, from, channel string, ts int64, data []byte) []byte {
	b := make([]byte, 0, 80+len(id)+len(from)+len(channel)+len(data))
	b = append(b, `{"type":"channel","id":`...)
	b = AppendString(b, id)
	b = append(b, `,"from":`...)
	b = AppendString(b, from)
	b = append(b, `,"channel":`...)
	b = AppendString(b, channel)
	return appendTail(b, ts, data)
}

// BroadcastFrame encodes {"type":"broadcast","id","ts","data"}.
func BroadcastFrame(id string, ts int64, data []byte) []byte {
	b := make([]byte, 0, 48+len(id)+len(data))
	b = append(b, `{"type":"broadcast","id":`...)
	b = AppendString(b, id)
	return appendTail(b, ts, data)
}

// ReceiptFrame encodes {"type":"receipt","id","to","status"}.
func ReceiptFrame(id, to, status string) []byte {
	b := make([]byte, 0, 56+len(id)+len(to)+len(status))
	b = append(b, `{"type":"receipt","id":`...)
	b = AppendString(b, id)
	b = append(b, `,"to":`...)
	b = AppendString(b, to)
	b = append(b, `,"status":`...)
	b = AppendString(b, status)
	return append(b, '}')
}

func appendTail(b []byte, ts int64, data []byte) []byte {
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, ts, 10)
	b = append(b, `,"data":`...)
	b = append(b, data...)
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as
// encoding/json does, so the output is always valid JSON and valid UTF-8.
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		// U+2028 and U+2029 break JavaScript string literals; escape them too.
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

var tsField = []byte(`,"ts":`)

// FrameTS extracts the publish time (unix ms) from a frame this package
// encoded, or 0. Strings before "ts" are JSON-escaped, so the first
// `,"ts":` is the field itself.
func FrameTS(f []byte) int64 {
	i := bytes.Index(f, tsField)
	if i < 0 {
		return 0
	}
	f = f[i+len(tsField):]
	j := 0
	for j < len(f) && f[j] >= '0' && f[j] <= '9' {
		j++
	}
	n, _ := strconv.ParseInt(string(f[:j]), 10, 64)
	return n
}
