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
	KindBatch   = "batch"   // several sends, in order (NodeMsg.Sends); from BatchVersion on
)

// NodeMsgVersion is the version of the node message format this release
// writes and the highest it reads. A header without "v" is version 1 (the
// releases before the field existed wrote the same format). A node drops a
// message of a higher version and counts it, since it cannot know what a
// newer field means; imhelper writes the lowest version that every live
// node announces in its registry entry (NodeInfo.Proto), so that during a
// rolling upgrade old nodes keep receiving what they understand.
//
// Version 2 adds KindBatch; a version-2 reader reads version 1 as before.
const NodeMsgVersion = 2

// BatchVersion is the first version that has KindBatch. A writer sends a
// batch only when every live node reads at least this version; otherwise
// it publishes each carried send on its own, as version 1 did.
const BatchVersion = 2

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
	// Sends are the sends a batch (KindBatch) carries, in order, as
	// DecodeNodeMsg found them. They are not part of the header line:
	// EncodeBatch writes each on the lines after it.
	Sends []BatchSend `json:"-"`
}

// BatchSend is one send a batch carries: a KindSend header and its frames,
// exactly what a send node message of its own would hold. From
// DecodeNodeMsg, the frames alias the decoded message.
type BatchSend struct {
	Header NodeMsg
	Frame  []byte
	// Echo is the sender's copy, set exactly when Header.Echo is.
	Echo []byte
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
	n := headerSize(h)
	for _, f := range frames {
		n += 1 + len(f)
	}
	v := h.Version
	if v <= 0 {
		v = NodeMsgVersion
	}
	b := appendHeader(make([]byte, 0, n), h, v)
	for _, f := range frames {
		b = append(b, '\n')
		b = append(b, f...)
	}
	return b
}

// EncodeBatch builds a batch node message carrying sends, in order:
//
//	{"v":2,"k":"batch"}\n<send 1>\n<send 2>…
//
// where each <send> is the send's header line (without "v": the batch
// line's applies), its frame and, with an echo, its echo frame, one per
// line: what EncodeNodeMsg would write for it on its own. version is the
// one to write (0: NodeMsgVersion); a batch is at least BatchVersion, so
// callers send one only to nodes that all read that (CommonVersion).
func EncodeBatch(version int, sends []BatchSend) []byte {
	n := 24
	for i := range sends {
		s := &sends[i]
		n += headerSize(s.Header) + 2 + len(s.Frame)
		if s.Header.Echo != "" {
			n += 1 + len(s.Echo)
		}
	}
	b := AppendBatchHead(make([]byte, 0, n), version)
	for i := range sends {
		b = AppendBatchSend(append(b, '\n'), sends[i])
	}
	return b
}

// AppendBatchHead appends a batch's first line, {"v":<version>,"k":"batch"}
// (version as for EncodeBatch).
func AppendBatchHead(b []byte, version int) []byte {
	if version <= 0 {
		version = NodeMsgVersion
	}
	return appendHeader(b, NodeMsg{Kind: KindBatch}, max(version, BatchVersion))
}

// AppendBatchSend appends one carried send's lines as EncodeBatch writes
// them: the header without "v", the frame, and the echo frame if
// s.Header.Echo is set.
func AppendBatchSend(b []byte, s BatchSend) []byte {
	b = appendHeader(b, s.Header, 0)
	b = append(append(b, '\n'), s.Frame...)
	if s.Header.Echo != "" {
		b = append(append(b, '\n'), s.Echo...)
	}
	return b
}

// AppendBatchSendHeader appends a carried send's header line as
// AppendBatchSend writes it (no "v").
func AppendBatchSendHeader(b []byte, h NodeMsg) []byte { return appendHeader(b, h, 0) }

// headerSize is about what appendHeader writes for h, to size buffers.
func headerSize(h NodeMsg) int {
	n := 64 + len(h.ID) + len(h.Echo) + len(h.Receipt) + len(h.Client) + len(h.Nonce) + len(h.EchoPos)
	for _, t := range h.To {
		n += len(t) + 3
	}
	for _, c := range h.Chans {
		n += len(c) + 3
	}
	for _, p := range h.Pos {
		n += len(p) + 3
	}
	return n
}

// appendHeader appends h as one line of JSON, with "v":v first unless v is
// 0 (a send inside a batch).
func appendHeader(b []byte, h NodeMsg, v int) []byte {
	b = append(b, '{')
	if v > 0 {
		b = append(b, `"v":`...)
		b = strconv.AppendInt(b, int64(v), 10)
		b = append(b, ',')
	}
	b = append(b, `"k":`...)
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
	return append(b, '}')
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

// DecodeNodeMsg parses a node message. The frames (and, for a batch, the
// frames of h.Sends) alias msg, capped so that appending to one never
// writes into msg.
func DecodeNodeMsg(msg []byte) (NodeMsg, [][]byte, error) {
	var h NodeMsg
	head, rest, more := bytes.Cut(msg, newline)
	if err := decodeHeader(head, &h, 1); err != nil {
		return h, nil, err
	}
	if h.Kind == KindBatch {
		if h.Version < BatchVersion {
			return h, nil, fmt.Errorf("%w: batch of version %d (batches are %d on)", ErrMalformed, h.Version, BatchVersion)
		}
		var err error
		if h.Sends, err = decodeBatch(rest, more, h.Version); err != nil {
			h.Sends = nil
			return h, nil, err
		}
		return h, nil, nil
	}
	var frames [][]byte
	for more {
		var f []byte
		if f, rest, more = nextFrame(rest); f == nil {
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

var newline = []byte{'\n'}

// decodeHeader parses one header line into h and checks its version;
// absent, it is the one given (1 for a message, the batch's for a send in
// a batch).
func decodeHeader(line []byte, h *NodeMsg, absent int) error {
	if !decodeHeaderFast(line, h) {
		*h = NodeMsg{}
		if err := json.Unmarshal(line, h); err != nil {
			return fmt.Errorf("%w: header: %v", ErrMalformed, err)
		}
	}
	switch {
	case h.Version == 0:
		h.Version = absent
	case h.Version < 0:
		return fmt.Errorf("%w: version %d", ErrMalformed, h.Version)
	case h.Version > NodeMsgVersion:
		return fmt.Errorf("%w: %d, this node reads up to %d", ErrUnknownVersion, h.Version, NodeMsgVersion)
	}
	return nil
}

// nextFrame cuts the next line off rest as a frame; f is nil if that line
// is not one (empty, not an object, not UTF-8).
func nextFrame(rest []byte) (f, after []byte, more bool) {
	f, after, more = bytes.Cut(rest, newline)
	if len(f) == 0 || f[0] != '{' || !utf8.Valid(f) {
		return nil, after, more
	}
	return f[:len(f):len(f)], after, more
}

// decodeBatch parses the sends after a batch's first line: each a send
// header line (its "v", if any, at most NodeMsgVersion) and then the one
// or two frames its header calls for, every one checked as a send of its
// own is. One bad send makes the whole batch malformed, so a node never
// delivers part of one.
func decodeBatch(rest []byte, more bool, version int) ([]BatchSend, error) {
	if !more {
		return nil, fmt.Errorf("%w: batch without sends", ErrMalformed)
	}
	// At most one send per two lines: one allocation for the slice.
	sends := make([]BatchSend, 0, (bytes.Count(rest, newline)+2)/2)
	for more {
		var line []byte
		line, rest, more = bytes.Cut(rest, newline)
		i := len(sends)
		sends = append(sends, BatchSend{})
		s := &sends[i]
		if err := decodeHeader(line, &s.Header, version); err != nil {
			return nil, fmt.Errorf("batch send %d: %w", i, err)
		}
		if s.Header.Kind != KindSend {
			return nil, fmt.Errorf("%w: batch send %d of kind %q", ErrMalformed, i, s.Header.Kind)
		}
		if !more {
			return nil, fmt.Errorf("%w: batch send %d without its frame", ErrMalformed, i)
		}
		if s.Frame, rest, more = nextFrame(rest); s.Frame == nil {
			return nil, fmt.Errorf("%w: batch send %d: frame is not a JSON object", ErrMalformed, i)
		}
		if s.Header.Echo != "" {
			if !more {
				return nil, fmt.Errorf("%w: batch send %d without its echo frame", ErrMalformed, i)
			}
			if s.Echo, rest, more = nextFrame(rest); s.Echo == nil {
				return nil, fmt.Errorf("%w: batch send %d: echo frame is not a JSON object", ErrMalformed, i)
			}
		}
		if err := checkPositions(s.Header); err != nil {
			return nil, fmt.Errorf("batch send %d: %w", i, err)
		}
	}
	return sends, nil
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
		key, rest, ok := fastBytes(b)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return false
		}
		b = rest[1:]
		var dst *string
		var list *[]string
		switch string(key) { // no allocation: the compiler compares the bytes
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
			v, rest, ok := fastBytes(b)
			if !ok {
				return false
			}
			h.Kind, b = kindString(v), rest
			if len(b) > 0 {
				if b[0] != ',' || len(b) == 1 {
					return false
				}
				b = b[1:]
			}
			continue
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
	v, rest, ok := fastBytes(b)
	if !ok {
		return "", nil, false
	}
	return string(v), rest, true
}

// fastBytes is fastString without the copy: the string's bytes in b.
func fastBytes(b []byte) ([]byte, []byte, bool) {
	if len(b) < 2 || b[0] != '"' {
		return nil, nil, false
	}
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			s := b[1:i]
			if !utf8.Valid(s) {
				return nil, nil, false
			}
			return s, b[i+1:], true
		case c == '\\' || c < 0x20:
			return nil, nil, false
		}
	}
	return nil, nil, false
}

// kindString is the kind named by v, without an allocation for the kinds
// there are (every header has one, a batch one per send).
func kindString(v []byte) string {
	switch string(v) {
	case KindSend:
		return KindSend
	case KindDeliver:
		return KindDeliver
	case KindBatch:
		return KindBatch
	case KindJoin:
		return KindJoin
	case KindLeave:
		return KindLeave
	case KindKick:
		return KindKick
	case KindProbe:
		return KindProbe
	}
	return string(v)
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
