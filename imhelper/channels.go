package imhelper

import (
	"context"
	"fmt"
	"slices"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// JoinChan adds client id to channels. It is idempotent. The membership is
// recorded in Redis and the node holding the client starts delivering the
// channel to it; it ends on LeaveChan or when the client's last socket
// closes. A client that is not online yet may join; its membership then
// starts to count once it connects.
func (c *Client) JoinChan(ctx context.Context, id string, chans ...string) error {
	if err := c.checkMembership(id, chans); err != nil || len(chans) == 0 {
		return err
	}
	n := c.names
	cmds := make(rueidis.Commands, 0, 2*len(chans)+3)
	for _, ch := range chans {
		cmds = append(cmds, c.rc.B().Sadd().Key(n.ChanMembers(ch)).Member(id).Build())
	}
	cmds = append(cmds,
		c.rc.B().Sadd().Key(n.ClientChans(id)).Member(chans...).Build(),
		c.rc.B().Sadd().Key(n.Chans()).Member(chans...).Build(),
		c.rc.B().Hget().Key(n.Online()).Field(id).Build())
	res := c.rc.DoMulti(ctx, cmds...)
	if err := firstErr(res[:len(res)-1]); err != nil {
		return fmt.Errorf("failed to join: %w", err)
	}
	node, err := res[len(res)-1].ToString()
	if rueidis.IsRedisNil(err) {
		return nil // not online: the node loads the membership on connect
	} else if err != nil {
		return fmt.Errorf("failed to join: %w", err)
	}
	return c.notify(ctx, node, wire.NodeMsg{Kind: wire.KindJoin, Client: id, Chans: chans})
}

// LeaveChan removes client id from channels. It is idempotent.
func (c *Client) LeaveChan(ctx context.Context, id string, chans ...string) error {
	if err := c.checkMembership(id, chans); err != nil || len(chans) == 0 {
		return err
	}
	n := c.names
	args := append([]string{id, n.ChanMembers("")}, chans...)
	node, err := c.leaveScript.Exec(ctx, c.rc, []string{n.ClientChans(id), n.Chans(), n.Online()}, args).ToString()
	if rueidis.IsRedisNil(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("failed to leave: %w", err)
	}
	return c.notify(ctx, node, wire.NodeMsg{Kind: wire.KindLeave, Client: id, Chans: chans})
}

// JoinChanClients adds several clients to one channel (the by-channel form
// of JoinChan).
func (c *Client) JoinChanClients(ctx context.Context, ch string, ids ...string) error {
	for _, id := range ids {
		if err := c.JoinChan(ctx, id, ch); err != nil {
			return err
		}
	}
	return nil
}

// LeaveChanClients removes several clients from one channel.
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

// notify publishes a control message to a node.
func (c *Client) notify(ctx context.Context, node string, h wire.NodeMsg) error {
	if err := c.rc.Do(ctx, c.publish(c.names.NodeChannel(node), wire.EncodeNodeMsg(h))).Error(); err != nil {
		return fmt.Errorf("failed to notify node %s: %w", node, err)
	}
	return nil
}

// GetChanClientList returns the clientIds that joined ch.
func (c *Client) GetChanClientList(ctx context.Context, ch string) ([]string, error) {
	if err := wire.ValidateChannel(ch); err != nil {
		return nil, err
	}
	ids, err := c.rc.Do(ctx, c.rc.B().Smembers().Key(c.names.ChanMembers(ch)).Build()).AsStrSlice()
	slices.Sort(ids)
	return ids, err
}

// ChanInfo is a channel with its number of online members.
type ChanInfo struct {
	Name   string `json:"name"`
	Online int    `json:"online"`
}

// GetChanList returns every channel with at least one member, with its
// online member count, sorted by name.
func (c *Client) GetChanList(ctx context.Context) ([]ChanInfo, error) {
	names, err := c.rc.Do(ctx, c.rc.B().Smembers().Key(c.names.Chans()).Build()).AsStrSlice()
	if err != nil || len(names) == 0 {
		return nil, err
	}
	slices.Sort(names)
	counts, err := c.chanOnline(ctx, names)
	if err != nil {
		return nil, err
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
	chans, err := c.rc.Do(ctx, c.rc.B().Smembers().Key(c.names.ClientChans(id)).Build()).AsStrSlice()
	slices.Sort(chans)
	return chans, err
}

// GetChanOnline returns the number of online members of ch.
func (c *Client) GetChanOnline(ctx context.Context, ch string) (int, error) {
	if err := wire.ValidateChannel(ch); err != nil {
		return 0, err
	}
	counts, err := c.chanOnline(ctx, []string{ch})
	if err != nil {
		return 0, err
	}
	return counts[0], nil
}

// chanOnline counts online members, a few channels per script call so that
// no single call keeps Redis busy for long.
func (c *Client) chanOnline(ctx context.Context, chans []string) ([]int, error) {
	out := make([]int, 0, len(chans))
	for len(chans) > 0 {
		k := min(len(chans), 50)
		args := append([]string{c.names.ChanMembers("")}, chans[:k]...)
		vals, err := c.chanOnlineScript.Exec(ctx, c.rc, []string{c.names.Online()}, args).AsIntSlice()
		if err != nil {
			return nil, fmt.Errorf("failed to count channel members: %w", err)
		}
		for _, v := range vals {
			out = append(out, int(v))
		}
		chans = chans[k:]
	}
	return out, nil
}
