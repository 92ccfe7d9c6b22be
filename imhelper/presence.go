package imhelper

import (
	"context"
	"fmt"
	"iter"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// HasOnline reports whether client id has at least one open socket (one
// HEXISTS).
func (c *Client) HasOnline(ctx context.Context, id string) (bool, error) {
	if err := wire.ValidateClientID(id); err != nil {
		return false, err
	}
	return c.rc.Do(ctx, c.rc.B().Hexists().Key(c.names.Online()).Field(id).Build()).AsBool()
}

// HasOnlineMany is the batch form of HasOnline: one HMGET for all ids.
func (c *Client) HasOnlineMany(ctx context.Context, ids []string) ([]bool, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	for _, id := range ids {
		if err := wire.ValidateClientID(id); err != nil {
			return nil, err
		}
	}
	vals, err := c.rc.Do(ctx, c.rc.B().Hmget().Key(c.names.Online()).Field(ids...).Build()).ToArray()
	if err != nil {
		return nil, err
	}
	out := make([]bool, len(ids))
	for i, v := range vals {
		out[i] = !v.IsNil()
	}
	return out, nil
}

// OnlineCount returns the number of online clients (HLEN).
func (c *Client) OnlineCount(ctx context.Context) (int64, error) {
	return c.rc.Do(ctx, c.rc.B().Hlen().Key(c.names.Online()).Build()).AsInt64()
}

// OnlineClients iterates over every online clientId with HSCAN, so that a
// million online clients never make one giant reply. HSCAN's guarantee
// holds: a client online for the whole iteration is yielded at least once
// (rarely twice, during a rehash); one that comes or goes meanwhile may or
// may not be.
func (c *Client) OnlineClients(ctx context.Context) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		cursor := uint64(0)
		for {
			e, err := c.rc.Do(ctx, c.rc.B().Hscan().Key(c.names.Online()).Cursor(cursor).Count(1000).Build()).AsScanEntry()
			if err != nil {
				yield("", err)
				return
			}
			for i := 0; i < len(e.Elements); i += 2 { // field, value pairs
				if !yield(e.Elements[i], nil) {
					return
				}
			}
			if cursor = e.Cursor; cursor == 0 {
				return
			}
		}
	}
}

// GetClientListByOnline returns every online clientId. For large numbers of
// clients prefer OnlineClients, which streams.
func (c *Client) GetClientListByOnline(ctx context.Context) ([]string, error) {
	var out []string
	seen := make(map[string]struct{})
	for id, err := range c.OnlineClients(ctx) {
		if err != nil {
			return nil, err
		}
		if _, dup := seen[id]; !dup { // HSCAN may repeat an element during a rehash
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out, nil
}

// ForceOffline closes every socket of client id with the forced-offline
// close code (4001), after which the client must not reconnect by itself.
// It tells the node the client is on and, if different, the node that owns
// it now. A socket whose handshake is still in flight when the node handles
// the kick is not closed; to keep a client out, also stop issuing it URLs.
func (c *Client) ForceOffline(ctx context.Context, id string) error {
	if err := c.check(); err != nil {
		return err
	}
	if err := wire.ValidateClientID(id); err != nil {
		return err
	}
	node, err := c.rc.Do(ctx, c.rc.B().Hget().Key(c.names.Online()).Field(id).Build()).ToString()
	if err != nil && !rueidis.IsRedisNil(err) {
		return fmt.Errorf("failed to look up client: %w", err)
	}
	msg := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindKick, Client: id})
	targets := map[string]struct{}{}
	if node != "" {
		targets[node] = struct{}{}
	}
	if owner := c.Owner(id); owner != "" {
		targets[owner] = struct{}{}
	}
	cmds := make(rueidis.Commands, 0, len(targets))
	for n := range targets {
		cmds = append(cmds, c.publish(c.names.NodeChannel(n), msg))
	}
	if err := firstErr(c.rc.DoMulti(ctx, cmds...)); err != nil {
		return fmt.Errorf("failed to publish: %w", err)
	}
	return nil
}
