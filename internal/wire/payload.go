package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// CompactPayload checks a business payload and returns it as compact JSON,
// ready to embed in a frame: at most max bytes, valid JSON, valid UTF-8
// (RFC 8259 §8.1; encoding/json alone lets invalid bytes inside strings
// through, and a node would then drop the frame as malformed after the
// sender was told it was sent).
func CompactPayload(raw []byte, max int) ([]byte, error) {
	if len(raw) > max {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrTooBig, len(raw), max)
	}
	if !utf8.Valid(raw) {
		return nil, ErrPayloadNotUTF8
	}
	var buf bytes.Buffer
	buf.Grow(len(raw))
	if err := json.Compact(&buf, raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadPayload, err)
	}
	if buf.Len() == 0 {
		return nil, fmt.Errorf("%w: empty", ErrBadPayload)
	}
	return buf.Bytes(), nil
}
