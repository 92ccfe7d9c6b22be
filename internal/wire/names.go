package wire

// DefaultPrefix is prepended to every Redis key and channel name. Several
// independent deployments can share one Redis by choosing distinct prefixes.
const DefaultPrefix = "im:"

// Names builds every Redis key and pub/sub channel name for one prefix.
// Keys and channels live in separate Redis namespaces; the short forms below
// are documented in docs/protocol.md.
type Names struct{ Prefix string }

// NodeSet is a SET of registered node ids (the registry index).
func (n Names) NodeSet() string { return n.Prefix + "nodes" }

// NodeKey is a STRING holding the node's NodeInfo JSON with a PX lease. A node
// listed in NodeSet whose NodeKey is gone has lost its lease and is dead.
func (n Names) NodeKey(node string) string { return n.Prefix + "node:" + node }

// ReapLock is taken with SET NX by the one survivor that cleans a dead node.
func (n Names) ReapLock(node string) string { return n.Prefix + "reap:" + node }

// TokenKey is a STRING holding a TokenRecord JSON, consumed once.
func (n Names) TokenKey(token string) string { return n.Prefix + "token:" + token }

// Online is a HASH clientId -> node id of every online client.
func (n Names) Online() string { return n.Prefix + "online" }

// NodeClients is a SET of the clients online on one node, so that a dead
// node's clients are known exactly.
func (n Names) NodeClients(node string) string { return n.Prefix + "nodeclients:" + node }

// ChanMembers is a SET of the clientIds that joined channel ch.
func (n Names) ChanMembers(ch string) string { return n.Prefix + "chan:" + ch }

// ClientChans is a SET of the channels client id has joined.
func (n Names) ClientChans(id string) string { return n.Prefix + "clientchans:" + id }

// Chans is a SET of every channel that has at least one member.
func (n Names) Chans() string { return n.Prefix + "chans" }

// EventStream is the Redis Stream that online/offline events are appended to.
func (n Names) EventStream() string { return n.Prefix + "events:stream" }

// NodeChannel is the pub/sub channel node subscribes to for its own clients.
func (n Names) NodeChannel(node string) string { return n.Prefix + "n:" + node }

// TopicChannel is the pub/sub channel carrying messages for channel ch.
func (n Names) TopicChannel(ch string) string { return n.Prefix + "c:" + ch }

// TopicPrefix is TopicChannel without the channel name.
func (n Names) TopicPrefix() string { return n.Prefix + "c:" }

// BroadcastChannel carries frames for every online client.
func (n Names) BroadcastChannel() string { return n.Prefix + "broadcast" }

// EventChannel carries online/offline events (at most once).
func (n Names) EventChannel() string { return n.Prefix + "events" }
