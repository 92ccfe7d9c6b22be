package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Node message kinds, published on a node's own channel (Names.NodeChannel).
const (
	KindSend    = "send"    // Frames[0] to every To; Frames[1] (if any) to Echo; receipts to Receipt
	KindDeliver = "deliver" // every frame to every To (receipts travel this way)
	KindJoin    = "join"    // Client joined Chans (already recorded in Redis)
	KindLeave   = "leave"   // Client left Chans (already removed in Redis)
	KindKick    = "kick"    // close every socket of Client with CloseForcedOffline
	KindProbe   = "probe"   // liveness probe a node sends to itself
)

// NodeMsgVersion is the version of the node message format this release
// writes and the highest it reads. A header without "v" is version 1 (the
// releases before the field existed wrote the same format). A node drops a
// message of a higher version and counts it, since it cannot know what a
// newer field means; imhelper writes the lowest version that every live
// node announces in its registry entry (NodeInfo.Proto), so that during a
// rolling upgrade old nodes keep receiving what they understand.
const NodeMsgVersion = 1

// NodeMsg is the header of a message on a node channel. On the wire a node
// message is the header as one line of JSON, then each frame on its own line:
//
//	{"v":1,"k":"send","to":["bob"],"id":"…"}\n{"type":"message",…}
//
// Frames are compact JSON and so never contain a raw newline.
type NodeMsg struct {
	// Version of the format; EncodeNodeMsg writes NodeMsgVersion when 0.
	Version int      `json:"v,omitempty"`
	Kind    string   `json:"k"`
	To      []string `json:"to,omitempty"`
	Echo    string   `json:"echo,omitempty"`
	Receipt string   `json:"rcpt,omitempty"`
	ID      string   `json:"id,omitempty"`
	Client  string   `json:"c,omitempty"`
	Chans   []string `json:"chans,omitempty"`
	Nonce   string   `json:"nonce,omitempty"`
	// Pos holds, parallel to To (send, deliver) or Chans (join), the
	// position (Position.String) of each message in its receiver's
	// history stream, or of each channel at join time; "" where there is
	// none. EchoPos is the echo copy's position in the sender's stream.
	// Both are optional: a reader that ignores them delivers at most once.
	Pos     []string `json:"pos,omitempty"`
	EchoPos string   `json:"epos,omitempty"`
}

// ErrMalformed reports a node message that cannot be decoded. A node logs and
// counts such messages and goes on.
var ErrMalformed = errors.New("malformed node message")

// ErrUnknownVersion reports a node message of a version newer than
// NodeMsgVersion.
var ErrUnknownVersion = errors.New("node message of an unknown version")

// EncodeNodeMsg builds the bytes to PUBLISH. The header is written by hand
// (the same JSON encoding/json would produce, field for field) because it
// is on every send's path.
func EncodeNodeMsg(h NodeMsg, frames ...[]byte) []byte {
	n := 64 + len(h.ID) + len(h.Echo) + len(h.Receipt) + len(h.Client) + len(h.Nonce)
	for _, t := range h.To {
		n += len(t) + 3
	}
	for _, c := range h.Chans {
		n += len(c) + 3
	}
	for _, p := range h.Pos {
		n += len(p) + 3
	}
	n += len(h.EchoPos)
	for _, f := range frames {
		n += 1 + len(f)
	}
	v := h.Version
	if v <= 0 {
		v = NodeMsgVersion
	}
	b := make([]byte, 0, n)
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(v), 10)
	b = append(b, `,"k":`...)
	b = AppendString(b, h.Kind)
	b = appendList(b, `,"to":[`, h.To)
	b = appendField(b, `,"echo":`, h.Echo)
	b = appendField(b, `,"rcpt":`, h.Receipt)
	b = appendField(b, `,"id":`, h.ID)
	b = appendField(b, `,"c":`, h.Client)
	b = appendList(b, `,"chans":[`, h.Chans)
	b = appendField(b, `,"nonce":`, h.Nonce)
	b = appendList(b, `,"pos":[`, h.Pos)
	b = appendField(b, `,"epos":`, h.EchoPos)
	b = append(b, '}')
	for _, f := range frames {
		b = append(b, '\n')
		b = append(b, f...)
	}
	return b
}

func appendField(b []byte, key, v string) []byte {
	if v == "" {
		return b
	}
	return AppendString(append(b, key...), v)
}

func appendList(b []byte, key string, vs []string) []byte {
	if len(vs) == 0 {
		return b
	}
	b = append(b, key...)
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = AppendString(b, v)
	}
	return append(b, ']')
}

// DecodeNodeMsg parses a node message. The frames alias msg.
func DecodeNodeMsg(msg []byte) (NodeMsg, [][]byte, error) {
	var h NodeMsg
	head, rest, hasFrames := bytes.Cut(msg, []byte{'\n'})
	if !decodeHeaderFast(head, &h) {
		h = NodeMsg{}
		if err := json.Unmarshal(head, &h); err != nil {
			return h, nil, fmt.Errorf("%w: header: %v", ErrMalformed, err)
		}
	}
	switch {
	case h.Version == 0:
		h.Version = 1
	case h.Version < 0:
		return h, nil, fmt.Errorf("%w: version %d", ErrMalformed, h.Version)
	case h.Version > NodeMsgVersion:
		return h, nil, fmt.Errorf("%w: %d, this node reads up to %d", ErrUnknownVersion, h.Version, NodeMsgVersion)
	}
	var frames [][]byte
	for hasFrames {
		var f []byte
		f, rest, hasFrames = bytes.Cut(rest, []byte{'\n'})
		if len(f) == 0 || f[0] != '{' || !utf8.Valid(f) {
			return h, nil, fmt.Errorf("%w: frame %d is not a JSON object", ErrMalformed, len(frames))
		}
		frames = append(frames, f)
	}
	switch h.Kind {
	case KindSend:
		want := 1
		if h.Echo != "" {
			want = 2
		}
		if len(frames) != want {
			return h, nil, fmt.Errorf("%w: send with %d frames, want %d", ErrMalformed, len(frames), want)
		}
	case KindDeliver:
		if len(frames) == 0 {
			return h, nil, fmt.Errorf("%w: deliver without frames", ErrMalformed)
		}
	case KindJoin, KindLeave, KindKick:
		if ValidateClientID(h.Client) != nil {
			return h, nil, fmt.Errorf("%w: %s with bad client", ErrMalformed, h.Kind)
		}
	case KindProbe:
	default:
		return h, nil, fmt.Errorf("%w: unknown kind %q", ErrMalformed, h.Kind)
	}
	if err := checkPositions(h); err != nil {
		return h, nil, err
	}
	return h, frames, nil
}

// checkPositions checks that pos, if given, has one valid position (or "")
// per receiver (send, deliver) or channel (join).
func checkPositions(h NodeMsg) error {
	if len(h.Pos) == 0 && h.EchoPos == "" {
		return nil
	}
	want := len(h.To)
	switch {
	case h.Kind == KindJoin:
		want = len(h.Chans)
	case h.Kind != KindSend && h.Kind != KindDeliver:
		return fmt.Errorf("%w: positions on a %s", ErrMalformed, h.Kind)
	}
	if len(h.Pos) != 0 && len(h.Pos) != want {
		return fmt.Errorf("%w: %d positions for %d entries", ErrMalformed, len(h.Pos), want)
	}
	if h.EchoPos != "" && (h.Kind != KindSend || h.Echo == "") {
		return fmt.Errorf("%w: echo position without an echo", ErrMalformed)
	}
	for _, p := range append(h.Pos, h.EchoPos) {
		if _, err := ParsePosition(p); err != nil {
			return fmt.Errorf("%w: position %q", ErrMalformed, p)
		}
	}
	return nil
}

// ValidFrame reports whether a frame taken from a channel or broadcast topic
// can be written to browsers as a text message.
func ValidFrame(f []byte) bool {
	return len(f) > 0 && f[0] == '{' && utf8.Valid(f)
}

// decodeHeaderFast parses the compact form EncodeNodeMsg writes (no
// whitespace, no escapes in strings, known keys) without reflection; it
// reports false for anything else, which encoding/json then handles. Both
// give the same result (FuzzHeaderFastPath).
func decodeHeaderFast(b []byte, h *NodeMsg) bool {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return false
	}
	b = b[1 : len(b)-1]
	for len(b) > 0 {
		key, rest, ok := fastString(b)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return false
		}
		b = rest[1:]
		var dst *string
		var list *[]string
		switch key {
		case "v":
			j := 0
			for j < len(b) && j < 9 && b[j] >= '0' && b[j] <= '9' {
				j++
			}
			if j == 0 || (b[0] == '0' && j > 1) || (j < len(b) && b[j] >= '0' && b[j] <= '9') {
				return false
			}
			h.Version, _ = strconv.Atoi(string(b[:j]))
			b = b[j:]
			if len(b) > 0 {
				if b[0] != ',' || len(b) == 1 {
					return false
				}
				b = b[1:]
			}
			continue
		case "k":
			dst = &h.Kind
		case "echo":
			dst = &h.Echo
		case "rcpt":
			dst = &h.Receipt
		case "id":
			dst = &h.ID
		case "c":
			dst = &h.Client
		case "nonce":
			dst = &h.Nonce
		case "epos":
			dst = &h.EchoPos
		case "to":
			list = &h.To
		case "chans":
			list = &h.Chans
		case "pos":
			list = &h.Pos
		default:
			return false
		}
		if dst != nil {
			v, rest, ok := fastString(b)
			if !ok {
				return false
			}
			*dst, b = v, rest
		} else {
			if len(b) == 0 || b[0] != '[' {
				return false
			}
			b = b[1:]
			vs := []string{}
			for len(b) > 0 && b[0] != ']' {
				v, rest, ok := fastString(b)
				if !ok {
					return false
				}
				vs = append(vs, v)
				b = rest
				if len(b) > 0 && b[0] == ',' && len(b) > 1 && b[1] != ']' {
					b = b[1:]
				} else if len(b) == 0 || b[0] != ']' {
					return false
				}
			}
			if len(b) == 0 {
				return false
			}
			*list, b = vs, b[1:]
		}
		if len(b) > 0 {
			if b[0] != ',' || len(b) == 1 {
				return false
			}
			b = b[1:]
		}
	}
	return h.Kind != ""
}

// fastString reads a JSON string with no escapes and no control bytes, of
// valid UTF-8.
func fastString(b []byte) (string, []byte, bool) {
	if len(b) < 2 || b[0] != '"' {
		return "", nil, false
	}
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			s := b[1:i]
			if !utf8.Valid(s) {
				return "", nil, false
			}
			return string(s), b[i+1:], true
		case c == '\\' || c < 0x20:
			return "", nil, false
		}
	}
	return "", nil, false
}

// IsControlMsg reports whether a node message is one that must never be
// dropped under overload (join, leave, kick, probe: rare, and losing one
// would leave state wrong), from the kind EncodeNodeMsg writes near the
// start. Anything it cannot read is not control.
func IsControlMsg(msg string) bool {
	if len(msg) > 32 {
		msg = msg[:32]
	}
	i := strings.Index(msg, `"k":"`)
	if i < 0 {
		return false
	}
	rest := msg[i+5:]
	j := strings.IndexByte(rest, '"')
	if j < 0 {
		return false
	}
	switch rest[:j] {
	case KindJoin, KindLeave, KindKick, KindProbe:
		return true
	}
	return false
}
