package imhelper

import (
	"context"
	"fmt"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// The calls in this file are for operator tools such as imctl: they read
// state a business service does not need to deliver messages, and none of
// them is used by the Send* calls.

// NodeStatus is one node of the registry as an operator sees it.
type NodeStatus struct {
	ID  string
	URL string // public ws(s) URL that PrevConnectServer hands out
	// Started is when the node process started.
	Started time.Time
	// Draining is set while the node shuts down: it still holds its lease
	// and its sockets, but PrevConnectServer no longer routes to it.
	Draining bool
	// Proto is the highest node message version the node reads.
	Proto int
	// LeaseLeft is how long the node's lease lives unless the node
	// refreshes it (it does every third of its lease TTL).
	LeaseLeft time.Duration
	// Clients counts the clients with at least one socket on the node
	// (a client with several sockets there counts once).
	Clients int64
}

// NodeInfos returns every node holding a live lease, draining ones
// included, sorted by id, read from Redis now (not from the Client's node
// view). A node whose lease lapsed is dead and is left out. It costs two
// round trips whatever the number of nodes.
func (c *Client) NodeInfos(ctx context.Context) ([]NodeStatus, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	sts, err := call(c, ctx, "NodeInfos", c.st.NodeStatuses)
	if err != nil {
		return nil, fmt.Errorf("failed to read node registry: %w", err)
	}
	out := make([]NodeStatus, len(sts))
	for i, s := range sts {
		out[i] = NodeStatus{
			ID: s.Info.ID, URL: s.Info.URL, Started: time.UnixMilli(s.Info.Started),
			Draining: s.Info.Draining, Proto: max(s.Info.Proto, 1),
			LeaseLeft: s.LeaseLeft, Clients: s.Clients,
		}
	}
	return out, nil
}

// OnlineNode returns the node client id is recorded online on, or "" if it
// is offline. It is usually Owner(id); during a move it is the node the
// client has not left yet.
func (c *Client) OnlineNode(ctx context.Context, id string) (string, error) {
	if err := wire.ValidateClientID(id); err != nil {
		return "", err
	}
	return call(c, ctx, "OnlineNode", func(ctx context.Context) (string, error) { return c.st.ClientNode(ctx, id) })
}

// ChanMemberCounts returns the number of members of each channel, online
// or not, in the order given, in one round trip. GetChanList gives the
// online members.
func (c *Client) ChanMemberCounts(ctx context.Context, chans []string) ([]int64, error) {
	for _, ch := range chans {
		if err := wire.ValidateChannel(ch); err != nil {
			return nil, err
		}
	}
	return call(c, ctx, "ChanMemberCounts", func(ctx context.Context) ([]int64, error) { return c.st.ChanSizes(ctx, chans) })
}

// ValidateRedisURL reports whether url is a Redis URL that New can dial,
// without dialling it, so that a tool can tell a bad setting from a Redis
// it cannot reach.
func ValidateRedisURL(url string) error { return store.CheckURL(url) }
