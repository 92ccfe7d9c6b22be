package imhelper

import (
	"context"
	"fmt"
	"slices"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// JoinChan adds client id to channels. It is idempotent. The membership is
// recorded in Redis and the node holding the client starts delivering the
// channel to it; for a channel that keeps history, from the moment JoinChan
// was called (the node fills what it sent before it had subscribed). The
// membership ends on LeaveChan, ForceOffline, or when the client has had
// no socket for the nodes' -offline-grace. A client that is not online yet may join; its membership then
// starts to count once it connects.
func (c *Client) JoinChan(ctx context.Context, id string, chans ...string) error {
	if err := c.checkMembership(id, chans); err != nil || len(chans) == 0 {
		return err
	}
	return call0(c, ctx, "JoinChan", func(ctx context.Context) error {
		// The channels' positions are read before the membership is
		// written: the node fills from them once it has subscribed, so a
		// message sent the moment JoinChan returns reaches the member.
		pos, err := c.chanPositions(ctx, chans)
		if err != nil {
			return err
		}
		node, err := c.st.Join(ctx, id, chans)
		if err != nil {
			return fmt.Errorf("failed to join: %w", err)
		}
		if node == "" {
			return nil // not online: the node loads the membership on connect
		}
		return c.notify(ctx, wire.NodeMsg{Kind: wire.KindJoin, Client: id, Chans: chans, Pos: pos}, node)
	})
}

// LeaveChan removes client id from channels. It is idempotent.
func (c *Client) LeaveChan(ctx context.Context, id string, chans ...string) error {
	if err := c.checkMembership(id, chans); err != nil || len(chans) == 0 {
		return err
	}
	return call0(c, ctx, "LeaveChan", func(ctx context.Context) error {
		node, err := c.st.Leave(ctx, id, chans)
		if err != nil {
			return fmt.Errorf("failed to leave: %w", err)
		}
		if node == "" {
			return nil
		}
		return c.notify(ctx, wire.NodeMsg{Kind: wire.KindLeave, Client: id, Chans: chans}, node)
	})
}

// JoinChanClients adds several clients to one channel (the by-channel form
// of JoinChan), one after the other; the first error ends it. Without a
// deadline in ctx, Options.CallTimeout bounds each client's join, not the
// whole call: a join is a few round trips, and a batch of thousands would
// otherwise fail on a busy Redis however well each join went.
func (c *Client) JoinChanClients(ctx context.Context, ch string, ids ...string) error {
	for _, id := range ids {
		if err := c.JoinChan(ctx, id, ch); err != nil {
			return err
		}
	}
	return nil
}

// LeaveChanClients removes several clients from one channel; like
// JoinChanClients, CallTimeout bounds each client's leave.
func (c *Client) LeaveChanClients(ctx context.Context, ch string, ids ...string) error {
	for _, id := range ids {
		if err := c.LeaveChan(ctx, id, ch); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) checkMembership(id string, chans []string) error {
	if err := c.check(); err != nil {
		return err
	}
	if err := wire.ValidateClientID(id); err != nil {
		return err
	}
	for _, ch := range chans {
		if err := wire.ValidateChannel(ch); err != nil {
			return err
		}
	}
	return nil
}

// notify publishes a control message to nodes. It runs inside a call.
func (c *Client) notify(ctx context.Context, h wire.NodeMsg, nodes ...string) error {
	h.Version = c.view.Load().proto
	msg := wire.EncodeNodeMsg(h)
	msgs := make([]store.NodeMessage, len(nodes))
	for i, n := range nodes {
		msgs[i] = store.NodeMessage{Node: n, Msg: msg}
	}
	if err := c.st.PublishNodes(ctx, msgs...); err != nil {
		return fmt.Errorf("failed to notify node %v: %w", nodes, err)
	}
	return nil
}

// GetChanClientList returns the clientIds that joined ch.
func (c *Client) GetChanClientList(ctx context.Context, ch string) ([]string, error) {
	if err := wire.ValidateChannel(ch); err != nil {
		return nil, err
	}
	return call(c, ctx, "GetChanClientList", func(ctx context.Context) ([]string, error) {
		ids, err := c.st.ChanMembers(ctx, ch)
		slices.Sort(ids)
		return ids, err
	})
}

// ChanInfo is a channel with its number of online members.
type ChanInfo struct {
	Name   string `json:"name"`
	Online int    `json:"online"`
}

// GetChanList returns every channel with at least one member, with its
// online member count, sorted by name.
func (c *Client) GetChanList(ctx context.Context) ([]ChanInfo, error) {
	return call(c, ctx, "GetChanList", c.getChanList)
}

func (c *Client) getChanList(ctx context.Context) ([]ChanInfo, error) {
	names, err := c.st.Chans(ctx)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	slices.Sort(names)
	counts, err := c.st.ChanOnline(ctx, names)
	if err != nil {
		return nil, fmt.Errorf("failed to count channel members: %w", err)
	}
	out := make([]ChanInfo, len(names))
	for i, n := range names {
		out[i] = ChanInfo{Name: n, Online: counts[i]}
	}
	return out, nil
}

// GetChanListByClientId returns the channels client id has joined, sorted.
func (c *Client) GetChanListByClientId(ctx context.Context, id string) ([]string, error) {
	if err := wire.ValidateClientID(id); err != nil {
		return nil, err
	}
	return call(c, ctx, "GetChanListByClientId", func(ctx context.Context) ([]string, error) {
		chans, err := c.st.ClientChans(ctx, id)
		slices.Sort(chans)
		return chans, err
	})
}

// GetChanOnline returns the number of online members of ch.
func (c *Client) GetChanOnline(ctx context.Context, ch string) (int, error) {
	if err := wire.ValidateChannel(ch); err != nil {
		return 0, err
	}
	return call(c, ctx, "GetChanOnline", func(ctx context.Context) (int, error) {
		counts, err := c.st.ChanOnline(ctx, []string{ch})
		if err != nil {
			return 0, fmt.Errorf("failed to count channel members: %w", err)
		}
		return counts[0], nil
	})
}
