package wire

// WebSocket close codes. 1000-range codes have their RFC 6455 meaning; the
// 4000 range is ours. A client must not reconnect by itself after
// CloseForcedOffline; after CloseMoved and CloseGoingAway it should fetch a
// fresh URL from the business API and reconnect at once.
const (
	CloseNormal        = 1000
	CloseGoingAway     = 1001 // node draining
	ClosePolicy        = 1008 // e.g. a text frame from a push-only client that breaks policy
	CloseTooBig        = 1009 // client frame above the read limit
	CloseForcedOffline = 4001 // ForceOffline; final
	CloseMoved         = 4002 // the client's owner node changed; reconnect with a fresh URL
	CloseSlowConsumer  = 4003 // outbound queue overflowed
	CloseNoPong        = 4004 // heartbeat timed out
)
