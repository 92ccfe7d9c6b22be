package wire

import (
	"errors"
	"fmt"
	"unicode"
	"unicode/utf8"
)

// Size limits shared by both sides.
const (
	MaxClientIDLen = 128
	MaxMetaLen     = 4 << 10
	MaxChanLen     = 128
	// DefaultMaxPayload is the default business payload limit.
	DefaultMaxPayload = 64 << 10
)

// Validation errors. imhelper re-exports them as its own sentinels.
var (
	ErrBadClientID = errors.New("invalid clientId")
	ErrBadChannel  = errors.New("invalid channel name")
	ErrMetaTooBig  = errors.New("metadata too large")
	ErrBadPayload  = errors.New("payload is not valid JSON")
	ErrTooBig      = errors.New("payload too large")
	// ErrPayloadNotUTF8 is also an ErrBadPayload.
	ErrPayloadNotUTF8 = fmt.Errorf("%w: not valid UTF-8", ErrBadPayload)
)

// ValidateClientID accepts a non-empty UTF-8 string of at most 128 bytes
// without control characters or whitespace.
func ValidateClientID(id string) error {
	return validateName(id, MaxClientIDLen, ErrBadClientID)
}

// ValidateChannel applies the clientId rules to channel names.
func ValidateChannel(ch string) error {
	return validateName(ch, MaxChanLen, ErrBadChannel)
}

func validateName(s string, max int, sentinel error) error {
	if s == "" {
		return fmt.Errorf("%w: empty", sentinel)
	}
	if len(s) > max {
		return fmt.Errorf("%w: %d bytes, at most %d", sentinel, len(s), max)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: not UTF-8", sentinel)
	}
	for _, r := range s {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return fmt.Errorf("%w: contains %q", sentinel, r)
		}
	}
	return nil
}

// ValidateMeta limits connection metadata to 4 KiB of UTF-8.
func ValidateMeta(meta string) error {
	if len(meta) > MaxMetaLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrMetaTooBig, len(meta), MaxMetaLen)
	}
	if !utf8.ValidString(meta) {
		return fmt.Errorf("%w: not UTF-8", ErrMetaTooBig)
	}
	return nil
}
