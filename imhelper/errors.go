package imhelper

import (
	"errors"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// Errors a caller may need to tell apart, for use with errors.Is.
var (
	// ErrInvalidClientID: empty, over 128 bytes, or with whitespace or
	// control characters.
	ErrInvalidClientID = wire.ErrBadClientID
	// ErrInvalidChannel: a channel name breaking the clientId rules.
	ErrInvalidChannel = wire.ErrBadChannel
	// ErrMetaTooLarge: connection metadata over 4 KiB or not UTF-8.
	ErrMetaTooLarge = wire.ErrMetaTooBig
	// ErrPayloadTooLarge: a payload over Options.MaxPayload.
	ErrPayloadTooLarge = wire.ErrTooBig
	// ErrInvalidPayload: a payload that is not valid JSON.
	ErrInvalidPayload = wire.ErrBadPayload
	// ErrPayloadNotUTF8: a payload holding bytes that are not UTF-8 (JSON
	// must be UTF-8; a node would drop such a frame). It is also an
	// ErrInvalidPayload.
	ErrPayloadNotUTF8 = wire.ErrPayloadNotUTF8
	// ErrNoNodes: no imserver node has a live lease.
	ErrNoNodes = errors.New("no live imserver node")
	// ErrRedisFull: Redis is at maxmemory and refused a write (OOM), so
	// nothing was written: no token (PrevConnectServer), no membership
	// (JoinChan). Messages are still delivered, as PUBLISH needs no memory.
	ErrRedisFull = store.ErrRedisFull
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("imhelper: client closed")
	// ErrRedisTimeout: Redis did not answer by the call's deadline (its
	// context's, or Options.CallTimeout for a context without one), e.g.
	// because it hangs. The call returned at that deadline; what it sent
	// may still take effect (a message be delivered, a token be stored). An
	// error that is ErrRedisTimeout is also context.DeadlineExceeded.
	ErrRedisTimeout = errors.New("redis did not answer in time")
)
