package store

// DefaultPrefix is prepended to every Redis key and channel name. Several
// independent deployments can share one Redis by choosing distinct prefixes.
const DefaultPrefix = "im:"

// keys builds every Redis key and pub/sub channel name for one prefix. This
// is the only place key layouts live; docs/protocol.md lists the same for
// services written in other languages. Keys and channels are separate Redis
// namespaces.
type keys struct {
	prefix string
	// cluster: the Redis is a Cluster, and keys that one script touches
	// share a hash tag (one slot). On a single Redis the names stay as
	// they always were.
	cluster bool
}

// registry is the start of the registry's keys: on a Cluster they share the
// hash tag {reg}, so that write_lease.lua and the lease read touch one slot
// (the registry is small, and written every lease/3 per node).
func (k keys) registry() string {
	if k.cluster {
		return k.prefix + "{reg}:"
	}
	return k.prefix
}

// nodeSet is a SET of registered node ids (the registry index).
func (k keys) nodeSet() string { return k.registry() + "nodes" }

// nodeKey is a STRING holding the node's NodeInfo JSON, whose "exp" (unix
// ms, Redis clock) is when the lease lapses. The key itself has no TTL, so
// that volatile-* eviction cannot take it. A node listed in nodeSet whose
// nodeKey is gone or past "exp" has lost its lease and is dead. (Leases
// from before "exp" carry a PX TTL instead and are live while they exist.)
func (k keys) nodeKey(node string) string { return k.registry() + "node:" + node }

// reapLock is taken with SET NX by the one survivor that cleans a dead node.
func (k keys) reapLock(node string) string { return k.registry() + "reap:" + node }

// memoryProbe is a STRING a node writes (with a TTL) to learn whether Redis
// takes writes (Memory).
func (k keys) memoryProbe(node string) string { return k.prefix + "memprobe:" + node }

// token is a STRING holding a TokenRecord JSON, consumed once.
func (k keys) token(token string) string { return k.prefix + "token:" + token }

// online is a HASH clientId -> node id of every online client.
func (k keys) online() string { return k.prefix + "online" }

// nodeClients is a SET of the clients online on one node, so that a dead
// node's clients are known exactly.
func (k keys) nodeClients(node string) string { return k.prefix + "nodeclients:" + node }

// clientNodes is a SET of the nodes on which a client has a socket: the
// inverse of nodeClients, so that the offline script finds another node of
// the client without building keys from data.
func (k keys) clientNodes(id string) string { return k.prefix + "clientnodes:" + id }

// chanMembers is a SET of the clientIds that joined channel ch.
func (k keys) chanMembers(ch string) string { return k.prefix + "chan:" + ch }

// clientChans is a SET of the channels client id has joined.
func (k keys) clientChans(id string) string { return k.prefix + "clientchans:" + id }

// chans is a SET of every channel that has at least one member.
func (k keys) chans() string { return k.prefix + "chans" }

// eventStream is the Redis Stream that online/offline events are appended to.
func (k keys) eventStream() string { return k.prefix + "events:stream" }

// nodeChannel is the pub/sub channel a node subscribes to for its own clients.
func (k keys) nodeChannel(node string) string { return k.prefix + "n:" + node }

// topicChannel is the pub/sub channel carrying messages for channel ch.
func (k keys) topicChannel(ch string) string { return k.prefix + "c:" + ch }

// topicChannels maps channel names to their topic channels.
func (k keys) topicChannels(chans []string) []string {
	out := make([]string, len(chans))
	for i, ch := range chans {
		out[i] = k.topicChannel(ch)
	}
	return out
}

// topicPrefix is topicChannel without the channel name.
func (k keys) topicPrefix() string { return k.prefix + "c:" }

// probeChannel is node's probe channel on the Cluster master serving the
// slot of hash tag tag: the node publishes to it to learn that its
// connection to that master still delivers (a sharded channel, Cluster
// only). The tag comes first, so that it is the name's hash tag whatever
// the node id holds.
func (k keys) probeChannel(node, tag string) string {
	return k.prefix + "probe:{" + tag + "}:" + node
}

// broadcastChannel carries frames for every online client.
func (k keys) broadcastChannel() string { return k.prefix + "broadcast" }

// eventChannel carries online/offline events (at most once).
func (k keys) eventChannel() string { return k.prefix + "events" }

// chanMemberKeys maps channel names to their member set keys.
func (k keys) chanMemberKeys(chans []string) []string {
	out := make([]string, len(chans))
	for i, ch := range chans {
		out[i] = k.chanMembers(ch)
	}
	return out
}

// clientHistory is the STREAM of client id's personal messages (entry id
// "<offset>-0", fields f = frame without position, x = expiry unix ms) and
// clientHistoryMeta the HASH of its epoch (e) and last offset (o). The hash
// tag puts a stream and its meta in one Cluster slot.
func (k keys) clientHistory(id string) string     { return k.prefix + "hist:{u:" + id + "}" }
func (k keys) clientHistoryMeta(id string) string { return k.clientHistory(id) + ":meta" }

// chanHistory and chanHistoryMeta are the same for channel ch.
func (k keys) chanHistory(ch string) string     { return k.prefix + "hist:{c:" + ch + "}" }
func (k keys) chanHistoryMeta(ch string) string { return k.chanHistory(ch) + ":meta" }

// history returns the stream and meta keys of s.
func (k keys) history(s Stream) (stream, meta string) {
	if s.Channel != "" {
		return k.chanHistory(s.Channel), k.chanHistoryMeta(s.Channel)
	}
	return k.clientHistory(s.Client), k.clientHistoryMeta(s.Client)
}
