package imhelper

import (
	"context"
	"fmt"
	"iter"
	"slices"

	"github.com/imbroker/imbroker/internal/wire"
)

// HasOnline reports whether client id has at least one open socket (one
// HEXISTS-sized lookup).
func (c *Client) HasOnline(ctx context.Context, id string) (bool, error) {
	on, err := c.areOnline(ctx, "HasOnline", []string{id})
	if err != nil {
		return false, err
	}
	return on[0], nil
}

// HasOnlineMany is the batch form of HasOnline: one lookup for all ids.
func (c *Client) HasOnlineMany(ctx context.Context, ids []string) ([]bool, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return c.areOnline(ctx, "HasOnlineMany", ids)
}

func (c *Client) areOnline(ctx context.Context, op string, ids []string) ([]bool, error) {
	for _, id := range ids {
		if err := wire.ValidateClientID(id); err != nil {
			return nil, err
		}
	}
	return call(c, ctx, op, func(ctx context.Context) ([]bool, error) { return c.st.AreOnline(ctx, ids) })
}

// OnlineCount returns the number of online clients.
func (c *Client) OnlineCount(ctx context.Context) (int64, error) {
	return call(c, ctx, "OnlineCount", c.st.OnlineCount)
}

// OnlineClients iterates over every online clientId in pages, so that a
// million online clients never make one giant reply. HSCAN's guarantee
// holds: a client online for the whole iteration is yielded at least once
// (rarely twice, during a rehash); one that comes or goes meanwhile may or
// may not be. Each page is a call of its own: without a deadline on ctx,
// Options.CallTimeout bounds each page, not the whole iteration.
func (c *Client) OnlineClients(ctx context.Context) iter.Seq2[string, error] {
	return c.onlineClients(ctx, "OnlineClients")
}

func (c *Client) onlineClients(ctx context.Context, op string) iter.Seq2[string, error] {
	type page struct {
		ids  []string
		next uint64
	}
	return func(yield func(string, error) bool) {
		cursor := uint64(0)
		for {
			cur := cursor
			p, err := call(c, ctx, op, func(ctx context.Context) (page, error) {
				ids, next, err := c.st.OnlineClients(ctx, cur)
				return page{ids, next}, err
			})
			ids, next := p.ids, p.next
			if err != nil {
				yield("", err)
				return
			}
			for _, id := range ids {
				if !yield(id, nil) {
					return
				}
			}
			if cursor = next; cursor == 0 {
				return
			}
		}
	}
}

// GetClientListByOnline returns every online clientId. For large numbers of
// clients prefer OnlineClients, which streams. Like OnlineClients, it
// applies Options.CallTimeout to each page.
func (c *Client) GetClientListByOnline(ctx context.Context) ([]string, error) {
	var out []string
	seen := make(map[string]struct{})
	for id, err := range c.onlineClients(ctx, "GetClientListByOnline") {
		if err != nil {
			return nil, err
		}
		if _, dup := seen[id]; !dup { // a scan may repeat an element during a rehash
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	return out, nil
}

// ForceOffline closes every socket of client id with the forced-offline
// close code (4001), after which the client must not reconnect by itself.
// It tells every node on which the client has a socket (im:clientnodes)
// and the node that owns it now. A socket whose handshake is still in flight when the node handles
// the kick is not closed; to keep a client out, also stop issuing it URLs.
func (c *Client) ForceOffline(ctx context.Context, id string) error {
	if err := c.check(); err != nil {
		return err
	}
	if err := wire.ValidateClientID(id); err != nil {
		return err
	}
	return call0(c, ctx, "ForceOffline", func(ctx context.Context) error {
		// Every node that holds a socket of the client, not only the one
		// presence names: a socket from a stale token can sit on a node that
		// no longer owns the client. The owner too, for a socket still
		// attaching there.
		targets, err := c.st.ClientNodes(ctx, id)
		if err != nil {
			return fmt.Errorf("failed to look up client: %w", err)
		}
		if owner := c.Owner(id); owner != "" && !slices.Contains(targets, owner) {
			targets = append(targets, owner)
		}
		if len(targets) == 0 {
			return nil
		}
		return c.notify(ctx, wire.NodeMsg{Kind: wire.KindKick, Client: id}, targets...)
	})
}
