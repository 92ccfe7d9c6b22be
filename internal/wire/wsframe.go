package wire

import "encoding/binary"

// WebSocket opcodes (RFC 6455 §5.2) that the node writes.
const (
	OpText  = 0x1
	OpClose = 0x8
	OpPing  = 0x9
	OpPong  = 0xA
)

// AppendFrameHeader appends the header of one unmasked, final server frame
// of opcode carrying n payload bytes: 2 to 10 bytes (RFC 6455 §5.2).
func AppendFrameHeader(b []byte, opcode byte, n int) []byte {
	b0 := 0x80 | opcode
	switch {
	case n < 126:
		return append(b, b0, byte(n))
	case n < 1<<16:
		return append(b, b0, 126, byte(n>>8), byte(n))
	default:
		b = append(b, b0, 127)
		return binary.BigEndian.AppendUint64(b, uint64(n))
	}
}

// FrameOpcode returns the opcode of a server frame that starts b, or -1 if
// b is too short to hold a header.
func FrameOpcode(b []byte) int {
	if len(b) < 2 {
		return -1
	}
	return int(b[0] & 0x0f)
}
