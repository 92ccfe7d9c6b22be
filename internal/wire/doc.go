// Package wire is the one place where imserver nodes, imhelper and browsers
// agree on bytes: the node message format and its version, the frames
// browsers receive and the WebSocket frame header the node writes, close
// codes, the token and registry records, events, the owner hash and input
// validation (clientIds, channels, metadata, payloads). Redis key layouts,
// commands and scripts are not here but in internal/store. docs/protocol.md
// states the same contract for services written in other languages; golden
// tests in this package pin its bytes.
//
// Flow:
//
//	business API --PrevConnectServer--> token record stored with a TTL ----+
//	browser ------ GET wss://node/ws?token=… --> node consumes the token once
//	business API --SendMessage--> node message on the owner's channel (one per owning node)
//	business API --SendMessages--> one batch node message per owning node per batch
//	node ---------- writes the pre-encoded frame to the client's sockets
package wire
