package imhelper

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// PrevConnectServer authorises a connection for clientID: it stores a
// one-time token (128 random bits, Options.TokenTTL) for the owning node and
// returns that node's public URL with ?token=. meta (at most 4 KiB) is
// attached to the client's presence and events.
func (c *Client) PrevConnectServer(ctx context.Context, clientID, meta string) (string, error) {
	if err := c.check(); err != nil {
		return "", err
	}
	if err := wire.ValidateClientID(clientID); err != nil {
		return "", err
	}
	if err := wire.ValidateMeta(meta); err != nil {
		return "", err
	}
	v := c.nodes(ctx)
	node := wire.Owner(clientID, v.ids)
	if node == "" {
		return "", ErrNoNodes
	}
	tok := wire.NewToken()
	rec, _ := json.Marshal(wire.TokenRecord{Node: node, Client: clientID, Meta: meta, Issued: time.Now().UnixMilli()})
	if err := c.rc.Do(ctx, c.rc.B().Set().Key(c.names.TokenKey(tok)).Value(rueidis.BinaryString(rec)).Px(c.opt.TokenTTL).Build()).Error(); err != nil {
		return "", fmt.Errorf("failed to store token: %w", err)
	}
	u := v.urls[node]
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	return u + sep + "token=" + url.QueryEscape(tok), nil
}

// SendOption changes one SendMessage call.
type SendOption func(*sendOptions)

type sendOptions struct{ receipt, echo bool }

// WithReceipt asks each owning node to send the sender's sockets a receipt
// per receiver: "delivered" if the receiver had a socket there, "offline"
// otherwise (FreeIM 是否回执).
func WithReceipt() SendOption { return func(o *sendOptions) { o.receipt = true } }

// WithEcho also delivers the message to the sender's own sockets (its other
// devices), with a "to" field listing the receivers, as FreeIM does.
func WithEcho() SendOption { return func(o *sendOptions) { o.echo = true } }

// SendMessage sends payload from one client to others. It costs one PUBLISH
// per node that owns a receiver (or the sender, for receipts and echo),
// whatever the number of receivers. It returns the message id, which
// receipts carry. Delivery is at most once: a receiver with no socket at the
// moment the node handles the message does not get it.
func (c *Client) SendMessage(ctx context.Context, from string, to []string, payload any, opts ...SendOption) (string, error) {
	if err := c.check(); err != nil {
		return "", err
	}
	var o sendOptions
	for _, fn := range opts {
		fn(&o)
	}
	if err := wire.ValidateClientID(from); err != nil {
		return "", err
	}
	for _, id := range to {
		if err := wire.ValidateClientID(id); err != nil {
			return "", err
		}
	}
	data, err := c.encodePayload(payload)
	if err != nil {
		return "", err
	}
	nodes := c.nodes(ctx).ids
	if len(nodes) == 0 {
		return "", ErrNoNodes
	}
	now := time.Now()
	id := wire.NewID(now)
	frame := wire.MessageFrame(id, from, nil, now.UnixMilli(), data)

	// Group receivers by owner (groups[i] for nodes[i]); the sender's owner
	// gets the echo and the receipts' address.
	groups := make([]wire.NodeMsg, len(nodes))
	receivers := to
	if len(to) > 1 { // drop duplicates, keeping the order
		seen := make(map[string]struct{}, len(to))
		receivers = make([]string, 0, len(to))
		for _, r := range to {
			if _, dup := seen[r]; !dup {
				seen[r] = struct{}{}
				receivers = append(receivers, r)
			}
		}
	}
	for _, r := range receivers {
		g := &groups[wire.OwnerIndex(r, nodes)]
		g.To = append(g.To, r)
		if o.receipt {
			g.Receipt = from
		}
	}
	var echo []byte
	if o.echo {
		groups[wire.OwnerIndex(from, nodes)].Echo = from
		echo = wire.MessageFrame(id, from, receivers, now.UnixMilli(), data)
	}
	cmds := make(rueidis.Commands, 0, len(groups))
	for i := range groups {
		g := &groups[i]
		if len(g.To) == 0 && g.Echo == "" {
			continue
		}
		g.Kind, g.ID = wire.KindSend, id
		var msg []byte
		if g.Echo != "" {
			msg = wire.EncodeNodeMsg(*g, frame, echo)
		} else {
			msg = wire.EncodeNodeMsg(*g, frame)
		}
		cmds = append(cmds, c.publish(c.names.NodeChannel(nodes[i]), msg))
	}
	if err := firstErr(c.rc.DoMulti(ctx, cmds...)); err != nil {
		return "", fmt.Errorf("failed to publish: %w", err)
	}
	return id, nil
}

// SendChanMessage sends payload to every online member of channel ch with
// one PUBLISH; each node with members fans it out from one encoded frame.
func (c *Client) SendChanMessage(ctx context.Context, from, ch string, payload any) (string, error) {
	if err := c.check(); err != nil {
		return "", err
	}
	if err := wire.ValidateClientID(from); err != nil {
		return "", err
	}
	if err := wire.ValidateChannel(ch); err != nil {
		return "", err
	}
	data, err := c.encodePayload(payload)
	if err != nil {
		return "", err
	}
	now := time.Now()
	id := wire.NewID(now)
	f := wire.ChannelFrame(id, from, ch, now.UnixMilli(), data)
	if err := c.rc.Do(ctx, c.publish(c.names.TopicChannel(ch), f)).Error(); err != nil {
		return "", fmt.Errorf("failed to publish: %w", err)
	}
	return id, nil
}

// SendBroadcastMessage sends payload to every online client on every node
// with one PUBLISH.
func (c *Client) SendBroadcastMessage(ctx context.Context, payload any) (string, error) {
	if err := c.check(); err != nil {
		return "", err
	}
	data, err := c.encodePayload(payload)
	if err != nil {
		return "", err
	}
	now := time.Now()
	id := wire.NewID(now)
	f := wire.BroadcastFrame(id, now.UnixMilli(), data)
	if err := c.rc.Do(ctx, c.publish(c.names.BroadcastChannel(), f)).Error(); err != nil {
		return "", fmt.Errorf("failed to publish: %w", err)
	}
	return id, nil
}

func (c *Client) publish(channel string, msg []byte) rueidis.Completed {
	return c.rc.B().Publish().Channel(channel).Message(rueidis.BinaryString(msg)).Build()
}

// encodePayload turns payload into compact JSON: []byte, json.RawMessage and
// string are taken as JSON text and validated; anything else is marshalled.
func (c *Client) encodePayload(payload any) ([]byte, error) {
	var raw []byte
	switch p := payload.(type) {
	case json.RawMessage:
		raw = p
	case []byte:
		raw = p
	case string:
		raw = []byte(p)
	default:
		b, err := json.Marshal(p)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidPayload, err)
		}
		raw = b
	}
	if len(raw) > c.opt.MaxPayload {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrPayloadTooLarge, len(raw), c.opt.MaxPayload)
	}
	var buf bytes.Buffer
	buf.Grow(len(raw))
	if err := json.Compact(&buf, raw); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidPayload, err)
	}
	if buf.Len() == 0 {
		return nil, fmt.Errorf("%w: empty", ErrInvalidPayload)
	}
	return buf.Bytes(), nil
}

func firstErr(rs []rueidis.RedisResult) error {
	for _, r := range rs {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}
