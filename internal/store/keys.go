package store

import (
	"strconv"
	"strings"
)

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

// presenceBuckets is how many buckets presence is spread over on a
// Cluster: a client's presence, node set, channel set, tokens and pending
// events live in its bucket's slot (docs/architecture.md, "The Cluster key
// layout").
const presenceBuckets = 1024

// bucketOf is client id's presence bucket: CRC16 (XMODEM, Redis' key hash)
// of the id modulo presenceBuckets, which a service in another language
// computes the same way (docs/protocol.md).
func bucketOf(id string) int { return int(crc16(id) % presenceBuckets) }

// bucketTag is the hash tag of presence bucket b.
func bucketTag(b int) string { return "{o" + strconv.Itoa(b) + "}" }

// clientPart is what follows a per-client key's kind: the id, after its
// bucket's tag on a Cluster.
func (k keys) clientPart(id string) string {
	if k.cluster {
		return bucketTag(bucketOf(id)) + ":" + id
	}
	return id
}

// token is a STRING holding a TokenRecord JSON, consumed once. On a
// Cluster it lives in the slot of the client it was issued for, so that
// the connect script takes it and marks that client online in one slot;
// the connect URL names the client (&client=) for that reason.
func (k keys) token(client, token string) string {
	if k.cluster {
		return k.prefix + "token:" + bucketTag(bucketOf(client)) + ":" + token
	}
	return k.prefix + "token:" + token
}

// online is a HASH clientId -> node id of every online client, on a
// single Redis.
func (k keys) online() string { return k.prefix + "online" }

// presence is the HASH that holds client id's presence: online on a single
// Redis, its bucket's onlineBucket on a Cluster.
func (k keys) presence(id string) string {
	if k.cluster {
		return k.onlineBucket(bucketOf(id))
	}
	return k.online()
}

// onlineBucket is presence bucket b's HASH clientId -> node id (Cluster).
func (k keys) onlineBucket(b int) string { return k.prefix + "online:" + bucketTag(b) }

// nodeClients is a SET of the clients online on one node, so that a dead
// node's clients are known exactly.
func (k keys) nodeClients(node string) string {
	if k.cluster {
		return k.prefix + "nodeclients:{n:" + node + "}"
	}
	return k.prefix + "nodeclients:" + node
}

// clientNodes is a SET of the nodes on which a client has a socket: the
// inverse of nodeClients, so that the offline script finds another node of
// the client without building keys from data.
func (k keys) clientNodes(id string) string { return k.prefix + "clientnodes:" + k.clientPart(id) }

// clientLeaving is a SET of the channels whose member sets a Cluster
// offline still has to leave (the client's channel set moved here by
// client_offline.lua); it is empty once the offline's steps are done.
func (k keys) clientLeaving(id string) string { return k.prefix + "leaving:" + k.clientPart(id) }

// pendingEvents is a LIST of online/offline events of client id that a
// Cluster step decided on and the event step has not yet appended to the
// event stream (another slot); the reaper emits what a dead node left.
func (k keys) pendingEvents(id string) string { return k.prefix + "pending:" + k.clientPart(id) }

// eventCounter is a STRING counting client id's online/offline events on
// a Cluster (its bucket's slot): each pending event carries its number.
func (k keys) eventCounter(id string) string { return k.prefix + "evseq:" + k.clientPart(id) }

// eventMark is a STRING holding the number of client id's last event
// emitted, in the event stream's slot, so that the event step appends each
// pending event once although several parties may run it (Cluster).
func (k keys) eventMark(id string) string { return k.prefix + "{ev}:mark:" + id }

// chanTag is channel ch's hash tag on a Cluster: its member set, history
// and topic share a slot.
func chanTag(ch string) string { return "{c:" + ch + "}" }

// chanMembers is a SET of the clientIds that joined channel ch.
func (k keys) chanMembers(ch string) string {
	if k.cluster {
		return k.prefix + "chan:" + chanTag(ch)
	}
	return k.prefix + "chan:" + ch
}

// clientChans is a SET of the channels client id has joined.
func (k keys) clientChans(id string) string { return k.prefix + "clientchans:" + k.clientPart(id) }

// chans is a SET of every channel that has at least one member.
func (k keys) chans() string { return k.prefix + "chans" }

// eventStream is the Redis Stream that online/offline events are appended
// to. On a Cluster it shares the tag {ev} with the event channel, so that
// the script that appends an event publishes it too.
func (k keys) eventStream() string {
	if k.cluster {
		return k.prefix + "{ev}:stream"
	}
	return k.prefix + "events:stream"
}

// nodeChannel is the pub/sub channel a node subscribes to for its own clients.
func (k keys) nodeChannel(node string) string { return k.prefix + "n:" + node }

// topicChannel is the pub/sub channel carrying messages for channel ch; on
// a Cluster a sharded channel in ch's slot.
func (k keys) topicChannel(ch string) string { return k.topicPrefix() + ch + k.topicSuffix() }

// topicChannels maps channel names to their topic channels.
func (k keys) topicChannels(chans []string) []string {
	out := make([]string, len(chans))
	for i, ch := range chans {
		out[i] = k.topicChannel(ch)
	}
	return out
}

// topicPrefix and topicSuffix are what topicChannel puts around the
// channel name.
func (k keys) topicPrefix() string {
	if k.cluster {
		return k.prefix + "{c:"
	}
	return k.prefix + "c:"
}

func (k keys) topicSuffix() string {
	if k.cluster {
		return "}"
	}
	return ""
}

// topicName is the channel name of a topic channel, if it is one.
func (k keys) topicName(topic string) (string, bool) {
	p, s := k.topicPrefix(), k.topicSuffix()
	if len(topic) < len(p)+len(s) || !strings.HasPrefix(topic, p) || !strings.HasSuffix(topic, s) {
		return "", false
	}
	return topic[len(p) : len(topic)-len(s)], true
}

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

// eventChannel carries online/offline events (at most once); on a Cluster
// a sharded channel in the event stream's slot.
func (k keys) eventChannel() string {
	if k.cluster {
		return k.prefix + "{ev}:events"
	}
	return k.prefix + "events"
}

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
