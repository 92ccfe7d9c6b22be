// Package store is the one place where imserver nodes and imhelper talk to
// Redis: every key layout (keys.go), every command and every Lua script
// (lua/) lives here, behind small interfaces written for what the two sides
// need. Nothing outside this package builds a Redis command or knows a key
// name, so the rest of the code does not know whether Redis is one server
// or, later, a Cluster.
//
// The split follows centrifuge's Broker/PresenceManager: each interface
// below is one capability (tokens, the node registry, presence, channel
// membership, publishing, subscribing, events), and Redis implements them
// all (the *_redis.go files). docs/protocol.md states the same layout for
// services written in other languages.
//
// Every Lua script takes all of the keys it touches as KEYS; none builds a
// key name from ARGV or from data it reads.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/imbroker/imbroker/internal/wire"
)

// Tokens stores the one-time connect tokens of PrevConnectServer.
type Tokens interface {
	// IssueToken stores rec under token for ttl; client is whom rec
	// names (on a Cluster the token lives in that client's slot).
	IssueToken(ctx context.Context, client, token string, rec []byte, ttl time.Duration) error
	// ConsumeToken takes the token once, and only on the node it was issued
	// for: a token for another node is kept (TokenForeign). client is whom
	// the caller expects it to name (the URL's hint): on a Cluster a token
	// is found only through the client it was issued for, and is missing
	// for any other (or "").
	ConsumeToken(ctx context.Context, client, token, node string) (rec []byte, st TokenStatus, err error)
}

// TokenStatus is the outcome of ConsumeToken.
type TokenStatus int

const (
	TokenConsumed TokenStatus = iota // rec holds the record
	TokenMissing                     // expired, used, or never issued
	TokenForeign                     // issued for another node; not consumed
)

// Connects is a node's side of a connect: a client's first socket costs
// one script, which takes the token and, when the record names the client
// the caller expected, marks it online too.
type Connects interface {
	// Connect takes req.Token as ConsumeToken does and, if the record
	// names req.Client and carries a meta the script can vouch for (valid
	// UTF-8 within wire.MaxMetaLen), marks the client online on req.Node
	// as MarkOnline does, emitting req.Online with the record's meta if
	// Redis had the client offline. At maxmemory it fails with
	// ErrRedisFull having written nothing: the token is still there.
	Connect(ctx context.Context, req ConnectRequest) (ConnectResult, error)
}

// ConnectRequest is the input of Connects.Connect.
type ConnectRequest struct {
	Token  string
	Client string     // whom the caller expects the record to name (the URL's hint)
	Node   string     // the node connecting the client
	Online wire.Event // the online event; its Meta is ignored (the record's is used)
}

// ConnectResult is the outcome of Connects.Connect.
type ConnectResult struct {
	Status TokenStatus
	Record []byte // the record, when Status is TokenConsumed
	// Online is set when the client was also marked online; nil when the
	// token was consumed without presence (the record names another client
	// than req.Client, or a meta the script would not vouch for): the
	// caller then marks it online itself.
	Online *Online
}

// Online is what marking a client online found (MarkOnline's results).
type Online struct {
	Existed bool     // Redis had the client online already; no event was emitted
	Chans   []string // the client's channels
}

// Registry holds the live nodes: a lease per node and an index of them.
type Registry interface {
	// WriteLease writes or refreshes the node's lease; renewed reports that
	// the lease still existed (it had not lapsed since the last write).
	WriteLease(ctx context.Context, info wire.NodeInfo, ttl time.Duration) (renewed bool, err error)
	// DeleteLease removes the node from the registry (a clean shutdown).
	DeleteLease(ctx context.Context, node string) error
	// Nodes returns the nodes whose lease is live and that are not draining,
	// sorted by id, and the ids listed whose lease lapsed.
	Nodes(ctx context.Context) (live []wire.NodeInfo, dead []string, err error)
	// ClaimReap makes by the one survivor that cleans node, for ttl.
	ClaimReap(ctx context.Context, node, by string, ttl time.Duration) (bool, error)
	// ReleaseReap gives up a claim without finishing.
	ReleaseReap(ctx context.Context, node string) error
	// FinishReap removes a reaped node from the registry and releases the
	// claim, unless the node holds a lease again (removed is then false).
	FinishReap(ctx context.Context, node string) (removed bool, err error)
}

// Presence records which clients are online on which node, and emits the
// online and offline events (to the event channel and the event stream)
// atomically with the change.
type Presence interface {
	// MarkOnline records a client's first socket on node. existed reports
	// that the client was already online (no event is emitted then); chans
	// are the channels it has joined.
	MarkOnline(ctx context.Context, client, node string, online wire.Event) (existed bool, chans []string, err error)
	// MarkOffline records that client has no socket left on node (or that
	// node died, with reaping set). joined is the caller's belief of the
	// client's channels, a hint that saves a round trip when right.
	MarkOffline(ctx context.Context, req OfflineRequest) (OfflineResult, error)
	// NodeClients pages through the clients recorded on node, from cursor 0
	// until the returned cursor is 0.
	NodeClients(ctx context.Context, node string, cursor uint64) (ids []string, next uint64, err error)
	// ClientNode returns the node client is online on, or "" if offline.
	ClientNode(ctx context.Context, client string) (string, error)
	// ClientNodes returns every node on which client has a socket (its
	// im:clientnodes set), which can be more than ClientNode names: a
	// socket from a stale token on a node that no longer owns it.
	ClientNodes(ctx context.Context, client string) ([]string, error)
	// AreOnline reports for each id whether it is online.
	AreOnline(ctx context.Context, ids []string) ([]bool, error)
	// OnlineCount returns the number of online clients.
	OnlineCount(ctx context.Context) (int64, error)
	// OnlineClients pages through every online clientId (see NodeClients).
	OnlineClients(ctx context.Context, cursor uint64) (ids []string, next uint64, err error)
}

// OfflineRequest is the input of Presence.MarkOffline.
type OfflineRequest struct {
	Client, Node string
	Offline      wire.Event // emitted if the client goes offline
	Joined       []string   // hint: the channels the caller believes it joined
	Reaping      bool       // node is dead; refuse if it holds a lease again
}

// OfflineResult is the outcome of MarkOffline.
type OfflineResult int

const (
	WentOffline    OfflineResult = iota // presence and membership ended; event emitted
	LivesElsewhere                      // online on, or handed to, another node
	NodeIsBack                          // a reap refused: the node holds a lease again
)

// Membership records channel membership (a client's channels and a
// channel's members).
type Membership interface {
	// Join adds client to chans and returns the node it is online on, or "".
	Join(ctx context.Context, client string, chans []string) (node string, err error)
	// Leave removes client from chans and returns its node, or "".
	Leave(ctx context.Context, client string, chans []string) (node string, err error)
	// RestoreMembership writes memberships back after Redis lost them.
	RestoreMembership(ctx context.Context, client string, chans []string) error
	// ChanMembers returns the clients that joined ch.
	ChanMembers(ctx context.Context, ch string) ([]string, error)
	// ClientChans returns the channels client joined.
	ClientChans(ctx context.Context, client string) ([]string, error)
	// Chans returns every channel with at least one member.
	Chans(ctx context.Context) ([]string, error)
	// ChanOnline returns the number of online members of each channel.
	ChanOnline(ctx context.Context, chans []string) ([]int, error)
}

// Publisher sends to nodes, channels and everyone over pub/sub. Delivery is
// at most once: nothing is kept for a subscriber that is not listening.
type Publisher interface {
	// PublishNodes publishes each message to its node's channel, in one
	// round trip.
	PublishNodes(ctx context.Context, msgs ...NodeMessage) error
	// PublishChannel publishes a frame to the members of channel ch.
	PublishChannel(ctx context.Context, ch string, frame []byte) error
	// PublishBroadcast publishes a frame to every online client.
	PublishBroadcast(ctx context.Context, frame []byte) error
}

// NodeMessage is an encoded node message (wire.EncodeNodeMsg) for one node.
type NodeMessage struct {
	Node string
	Msg  []byte
}

// Subscriber opens a node's subscription.
type Subscriber interface {
	// Subscribe opens a subscription to node's own channel and to the
	// broadcast channel. onMessage runs on the connection's reader and must
	// never block. The subscription does not reconnect by itself: when
	// Done delivers, the caller closes it and subscribes again.
	Subscribe(ctx context.Context, node string, onMessage func(Message)) (Subscription, error)
}

// Subscription is one live subscription connection.
type Subscription interface {
	// Topics subscribes to the given channels' topics (in batches).
	Topics(ctx context.Context, chans ...string) error
	// Untopic unsubscribes from a channel's topic.
	Untopic(ctx context.Context, ch string) error
	// Probe checks the connections that the node's own probe (a node
	// message to itself, on its node channel) does not cover: on a
	// Cluster, one per master, each on a probe channel of the node's on
	// that master. A connection whose earlier probes did not come back
	// fails the subscription (Done). On a single Redis it does nothing.
	Probe(ctx context.Context) error
	// Done delivers the error that ended the connection.
	Done() <-chan error
	// Close ends the subscription and releases its connection.
	Close()
}

// MessageKind tells what a pub/sub message is for.
type MessageKind uint8

const (
	ToNode      MessageKind = iota + 1 // a node message for this node
	ToChannel                          // a frame for the members of Message.Channel
	ToBroadcast                        // a frame for every local client
)

// Message is one message a subscription received.
type Message struct {
	Kind    MessageKind
	Channel string // the channel name for ToChannel
	Payload string
}

// Events carries online/offline events: at most once over pub/sub, and
// durably in a stream read by consumer groups.
type Events interface {
	// SubscribeEvents calls fn for each event published until ctx ends,
	// resubscribing after a lost connection; fn must not block for long.
	SubscribeEvents(ctx context.Context, fn func(payload []byte), onLost func(error)) error
	// CreateGroup creates a consumer group on the stream (and the stream),
	// reading from the start or from now; an existing group is kept.
	CreateGroup(ctx context.Context, group string, fromStart bool) error
	// ReadGroup reads entries for consumer: id ">" for new ones, "0" for its
	// own pending ones. block 0 does not wait. ErrNoGroup reports a lost
	// group (the stream was lost).
	ReadGroup(ctx context.Context, group, consumer, id string, count int64, block time.Duration) ([]StreamEvent, error)
	// Ack acknowledges one entry.
	Ack(ctx context.Context, group, id string) error
	// Claim takes over entries other consumers left pending for minIdle.
	Claim(ctx context.Context, group, consumer string, minIdle time.Duration, count int64) ([]StreamEvent, error)
}

// StreamEvent is one entry of the event stream.
type StreamEvent struct {
	ID      string
	Payload []byte
}

// ErrNoGroup reports a consumer group (or its stream) that no longer exists.
var ErrNoGroup = errors.New("consumer group does not exist")

// Memory reports Redis' memory limit and eviction policy (memory_redis.go).
// Writes Redis refuses at maxmemory fail with an error wrapping
// ErrRedisFull.
type Memory interface {
	Memory(ctx context.Context, node string) (MemoryState, error)
}

// Node is what an imserver node needs.
type Node interface {
	Tokens
	Connects
	Registry
	Presence
	Publisher
	Subscriber
	Membership
	Memory
	History
}

// Helper is what imhelper needs.
type Helper interface {
	Tokens
	Registry
	Presence
	Membership
	Publisher
	Events
	Admin
	History
}
