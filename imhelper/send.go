package imhelper

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/imbroker/imbroker/internal/store"
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
	return call(c, ctx, "PrevConnectServer", func(ctx context.Context) (string, error) {
		v := c.nodes(ctx)
		node := wire.Owner(clientID, v.ids)
		if node == "" {
			return "", ErrNoNodes
		}
		tok := wire.NewToken()
		rec, _ := json.Marshal(wire.TokenRecord{Node: node, Client: clientID, Meta: meta, Issued: time.Now().UnixMilli()})
		if err := c.st.IssueToken(ctx, tok, rec, c.opt.TokenTTL); err != nil {
			return "", fmt.Errorf("failed to store token: %w", err)
		}
		u := v.urls[node]
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		return u + sep + "token=" + url.QueryEscape(tok), nil
	})
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

// message is what every send starts with: a checked payload, an id and a
// time.
type message struct {
	id   string
	ts   int64
	data []byte
}

// newMessage is the prologue every Send* shares.
func (c *Client) newMessage(payload any) (message, error) {
	if err := c.check(); err != nil {
		return message{}, err
	}
	data, err := c.encodePayload(payload)
	if err != nil {
		return message{}, err
	}
	now := time.Now()
	return message{id: wire.NewID(now), ts: now.UnixMilli(), data: data}, nil
}

// SendMessage sends payload from one client to others. It costs one PUBLISH
// per node that owns a receiver (or the sender, for receipts and echo),
// whatever the number of receivers. It returns the message id, which
// receipts carry. Delivery is at most once: a receiver with no socket at the
// moment the node handles the message does not get it.
func (c *Client) SendMessage(ctx context.Context, from string, to []string, payload any, opts ...SendOption) (string, error) {
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
	m, err := c.newMessage(payload)
	if err != nil {
		return "", err
	}
	return call(c, ctx, "SendMessage", func(ctx context.Context) (string, error) {
		return c.sendMessage(ctx, from, to, m, o)
	})
}

// sendMessage is SendMessage's work, inside a call.
func (c *Client) sendMessage(ctx context.Context, from string, to []string, m message, o sendOptions) (string, error) {
	v := c.nodes(ctx)
	nodes := v.ids
	if len(nodes) == 0 {
		return "", ErrNoNodes
	}
	frame := wire.MessageFrame(m.id, from, nil, m.ts, m.data)

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
		echo = wire.MessageFrame(m.id, from, receivers, m.ts, m.data)
	}
	msgs := make([]store.NodeMessage, 0, len(groups))
	for i := range groups {
		g := &groups[i]
		if len(g.To) == 0 && g.Echo == "" {
			continue
		}
		g.Version, g.Kind, g.ID = v.proto, wire.KindSend, m.id
		var b []byte
		if g.Echo != "" {
			b = wire.EncodeNodeMsg(*g, frame, echo)
		} else {
			b = wire.EncodeNodeMsg(*g, frame)
		}
		msgs = append(msgs, store.NodeMessage{Node: nodes[i], Msg: b})
	}
	if err := c.st.PublishNodes(ctx, msgs...); err != nil {
		return "", fmt.Errorf("failed to publish: %w", err)
	}
	return m.id, nil
}

// SendChanMessage sends payload to every online member of channel ch with
// one PUBLISH; each node with members fans it out from one encoded frame.
func (c *Client) SendChanMessage(ctx context.Context, from, ch string, payload any) (string, error) {
	if err := wire.ValidateClientID(from); err != nil {
		return "", err
	}
	if err := wire.ValidateChannel(ch); err != nil {
		return "", err
	}
	m, err := c.newMessage(payload)
	if err != nil {
		return "", err
	}
	return call(c, ctx, "SendChanMessage", func(ctx context.Context) (string, error) {
		if err := c.st.PublishChannel(ctx, ch, wire.ChannelFrame(m.id, from, ch, m.ts, m.data)); err != nil {
			return "", fmt.Errorf("failed to publish: %w", err)
		}
		return m.id, nil
	})
}

// SendBroadcastMessage sends payload to every online client on every node
// with one PUBLISH.
func (c *Client) SendBroadcastMessage(ctx context.Context, payload any) (string, error) {
	m, err := c.newMessage(payload)
	if err != nil {
		return "", err
	}
	return call(c, ctx, "SendBroadcastMessage", func(ctx context.Context) (string, error) {
		if err := c.st.PublishBroadcast(ctx, wire.BroadcastFrame(m.id, m.ts, m.data)); err != nil {
			return "", fmt.Errorf("failed to publish: %w", err)
		}
		return m.id, nil
	})
}

// encodePayload turns payload into compact JSON: []byte, json.RawMessage and
// string are taken as JSON text and validated (ErrInvalidPayload, or
// ErrPayloadNotUTF8 for bytes that are not UTF-8); anything else is
// marshalled.
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
	return wire.CompactPayload(raw, c.opt.MaxPayload)
}
