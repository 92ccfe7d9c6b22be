package wire

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// Position is a place in a history stream (docs/protocol.md, "History"):
// Offset counts the messages the stream has kept (0 is before the first)
// and Epoch names the stream's current history, which changes when that
// history is lost (Redis restarted empty, the meta expired). Offsets of
// different epochs are not comparable.
type Position struct {
	Epoch  string
	Offset uint64
}

// MaxEpochLen is the longest epoch a parser accepts; NewEpoch makes 11.
const MaxEpochLen = 32

// MaxResumeChannels bounds the channel positions one connect may present.
const MaxResumeChannels = 64

// ErrBadPosition reports a position that does not parse.
var ErrBadPosition = errors.New("malformed stream position")

// NewEpoch returns 64 random bits in base64url (11 characters).
func NewEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// String is the text form "<epoch>.<offset>"; "" for the zero Position.
func (p Position) String() string {
	if p.Epoch == "" {
		return ""
	}
	return p.Epoch + "." + strconv.FormatUint(p.Offset, 10)
}

// IsZero reports a position that names no stream history.
func (p Position) IsZero() bool { return p.Epoch == "" }

// ValidEpoch reports 1–MaxEpochLen characters of A–Z a–z 0–9 - _.
func ValidEpoch(s string) bool {
	if len(s) == 0 || len(s) > MaxEpochLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isEpochByte(s[i]) {
			return false
		}
	}
	return true
}

func isEpochByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// ParsePosition reads "<epoch>.<offset>". "" is the zero Position.
func ParsePosition(s string) (Position, error) {
	if s == "" {
		return Position{}, nil
	}
	ep, off, ok := strings.Cut(s, ".")
	if !ok || !ValidEpoch(ep) {
		return Position{}, ErrBadPosition
	}
	n, err := parseOffset(off)
	if err != nil {
		return Position{}, err
	}
	return Position{Epoch: ep, Offset: n}, nil
}

// parseOffset reads a decimal uint64 without sign, spaces or leading zeros.
func parseOffset(s string) (uint64, error) {
	if s == "" || len(s) > 20 || (len(s) > 1 && s[0] == '0') {
		return 0, ErrBadPosition
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, ErrBadPosition
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, ErrBadPosition
	}
	return n, nil
}

// AppendPosition splices the position into a frame (a JSON object) as its
// last two fields: `…,"epoch":"<E>","offset":<N>}`. FramePosition reads it
// back.
func AppendPosition(frame []byte, p Position) []byte {
	b := make([]byte, 0, len(frame)+len(p.Epoch)+32)
	b = append(b, frame[:len(frame)-1]...)
	b = append(b, `,"epoch":"`...)
	b = append(b, p.Epoch...)
	b = append(b, `","offset":`...)
	b = strconv.AppendUint(b, p.Offset, 10)
	return append(b, '}')
}

// FramePosition reads the position AppendPosition put at the end of a
// frame. Only the frame's tail is looked at: the data before it may contain
// anything, but the tail is the frame's last fields.
func FramePosition(f []byte) (Position, bool) {
	// …,"epoch":"<E>","offset":<N>}
	n := len(f)
	if n < 2 || f[n-1] != '}' {
		return Position{}, false
	}
	i := n - 2
	for i >= 0 && f[i] >= '0' && f[i] <= '9' {
		i--
	}
	digits := string(f[i+1 : n-1])
	const offKey = `","offset":`
	if i+1-len(offKey) < 0 || string(f[i+1-len(offKey):i+1]) != offKey {
		return Position{}, false
	}
	off, err := parseOffset(digits)
	if err != nil {
		return Position{}, false
	}
	j := i + 1 - len(offKey) // the epoch ends before j
	k := j - 1
	for k >= 0 && j-k <= MaxEpochLen+1 && isEpochByte(f[k]) {
		k--
	}
	const epKey = `,"epoch":"`
	ep := string(f[k+1 : j])
	if !ValidEpoch(ep) || k+1-len(epKey) < 0 || string(f[k+1-len(epKey):k+1]) != epKey {
		return Position{}, false
	}
	return Position{Epoch: ep, Offset: off}, true
}

// Resume is what a connecting client presents in its /ws query: the last
// position it saw of its personal stream and of some of its channels.
type Resume struct {
	Client   Position            // zero if not given
	Channels map[string]Position // nil if none given
}

// ParseResume reads the "pos" parameters of a /ws query string:
// "pos=<epoch>.<offset>" for the personal stream (at most once) and
// "pos=<epoch>.<offset>.<channel>" per channel (at most MaxResumeChannels,
// each channel once). Anything malformed is an error: the node refuses the
// attempt with 400 bad_resume before it spends the token.
func ParseResume(rawQuery string) (Resume, error) {
	var r Resume
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return r, fmt.Errorf("%w: %v", ErrBadPosition, err)
	}
	vals := q["pos"]
	if len(vals) > MaxResumeChannels+1 {
		return r, fmt.Errorf("%w: more than %d positions", ErrBadPosition, MaxResumeChannels+1)
	}
	for _, v := range vals {
		ep, rest, ok := strings.Cut(v, ".")
		if !ok || !ValidEpoch(ep) {
			return Resume{}, ErrBadPosition
		}
		offText, ch, isChan := strings.Cut(rest, ".")
		off, err := parseOffset(offText)
		if err != nil {
			return Resume{}, err
		}
		p := Position{Epoch: ep, Offset: off}
		if !isChan {
			if !r.Client.IsZero() {
				return Resume{}, fmt.Errorf("%w: two personal positions", ErrBadPosition)
			}
			r.Client = p
			continue
		}
		if ValidateChannel(ch) != nil {
			return Resume{}, fmt.Errorf("%w: bad channel name", ErrBadPosition)
		}
		if r.Channels == nil {
			r.Channels = make(map[string]Position)
		}
		if _, dup := r.Channels[ch]; dup {
			return Resume{}, fmt.Errorf("%w: channel %q twice", ErrBadPosition, ch)
		}
		if len(r.Channels) == MaxResumeChannels {
			return Resume{}, fmt.Errorf("%w: more than %d channel positions", ErrBadPosition, MaxResumeChannels)
		}
		r.Channels[ch] = p
	}
	return r, nil
}

// StreamState is one stream's entry in a recovered frame.
type StreamState struct {
	Channel   string // "" for the personal stream
	Pos       Position
	Recovered bool
}

// RecoveredFrame encodes
// {"type":"recovered","first":true,"streams":[{"channel":"","epoch":"E","offset":17,"recovered":true},…]}.
// The first frame of every socket is one (first set): it says the socket is
// live and, per stream, whether what it missed was replayed.
func RecoveredFrame(first bool, streams []StreamState) []byte {
	b := make([]byte, 0, 64+len(streams)*64)
	b = append(b, `{"type":"recovered"`...)
	if first {
		b = append(b, `,"first":true`...)
	}
	b = append(b, `,"streams":[`...)
	for i, s := range streams {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"channel":`...)
		b = AppendString(b, s.Channel)
		b = append(b, `,"epoch":`...)
		b = AppendString(b, s.Pos.Epoch)
		b = append(b, `,"offset":`...)
		b = strconv.AppendUint(b, s.Pos.Offset, 10)
		b = append(b, `,"recovered":`...)
		b = strconv.AppendBool(b, s.Recovered)
		b = append(b, '}')
	}
	return append(b, "]}"...)
}
