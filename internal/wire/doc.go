// Package wire is the one place where imserver nodes and imhelper agree on
// the contract between them: Redis key and channel names, the token record,
// the node channel message format, the frames browsers receive, close codes,
// the owner hash and input validation. docs/protocol.md states the same
// contract for services written in other languages; golden tests in this
// package pin its bytes.
//
// Flow:
//
//	business API --PrevConnectServer--> SET token (TTL) ---------+
//	browser ------ GET wss://node/ws?token=… --> node GETDEL token
//	business API --SendMessage--> PUBLISH im:n:{node} (one per owning node)
//	node ---------- writes the pre-encoded frame to the client's sockets
package wire
