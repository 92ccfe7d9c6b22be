package imhelper

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// PrevConnectServer authorises a connection for clientID: it stores a
// one-time token (128 random bits, Options.TokenTTL) for the owning node and
// returns that node's public URL with ?token=<token>&client=<clientID>.
// meta (at most 4 KiB) is attached to the client's presence and events.
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
		tr := wire.TokenRecord{Node: node, Client: clientID, Meta: meta, Issued: time.Now().UnixMilli()}
		if err := c.recordPositions(ctx, &tr); err != nil {
			return "", err
		}
		rec, _ := json.Marshal(tr)
		if err := c.st.IssueToken(ctx, clientID, tok, rec, c.opt.TokenTTL); err != nil {
			return "", fmt.Errorf("failed to store token: %w", err)
		}
		u := v.urls[node]
		sep := "?"
		if strings.Contains(u, "?") {
			sep = "&"
		}
		// The client parameter lets the node pass the client's keys to the
		// one script that takes the token and marks the client online; the
		// record, not the URL, says who connects.
		return u + sep + "token=" + url.QueryEscape(tok) + "&client=" + url.QueryEscape(clientID), nil
	})
}

// recordPositions puts in the token the client's current positions in its
// personal stream and its channels' streams that keep history (at most
// wire.MaxResumeChannels of them), so that what is sent between now and
// the socket opening is replayed on connect.
func (c *Client) recordPositions(ctx context.Context, tr *wire.TokenRecord) error {
	var streams []store.Stream
	if c.clientKeep(tr.Client).On() {
		streams = append(streams, store.Stream{Client: tr.Client})
	}
	if c.anyChanHistory() {
		chans, err := c.st.ClientChans(ctx, tr.Client)
		if err != nil {
			return fmt.Errorf("failed to read the client's channels: %w", err)
		}
		slices.Sort(chans)
		for _, ch := range chans {
			if c.chanKeep(ch).On() && len(streams) < wire.MaxResumeChannels+1 {
				streams = append(streams, store.Stream{Channel: ch})
			}
		}
	}
	if len(streams) == 0 {
		return nil
	}
	pos, err := c.st.Positions(ctx, streams...)
	if err != nil {
		return fmt.Errorf("failed to read stream positions: %w", err)
	}
	for i, s := range streams {
		if s.Channel == "" {
			tr.Pos = pos[i].String()
			continue
		}
		if tr.ChanPos == nil {
			tr.ChanPos = make(map[string]string)
		}
		tr.ChanPos[s.Channel] = pos[i].String()
	}
	return nil
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
// whatever the number of receivers; with history (Options.History) that
// PUBLISH runs in a script that also keeps each receiver's copy. It returns
// the message id, which receipts carry. Without history delivery is at most
// once: a receiver with no socket at the moment the node handles the
// message does not get it; with history a receiver that reconnects within
// the window is sent it then.
func (c *Client) SendMessage(ctx context.Context, from string, to []string, payload any, opts ...SendOption) (string, error) {
	sent, err := c.SendMessageResult(ctx, from, to, payload, opts...)
	return sent.ID, err
}

// Sent is what a send produced: the message id and, for each stream that
// kept it, its position there (receivers by clientId; the sender's echo
// copy as Echo; a channel message as Channel).
type Sent struct {
	ID        string
	Positions map[string]Position
	Echo      Position
	Channel   Position
}

// SendMessageResult is SendMessage, returning the positions too.
func (c *Client) SendMessageResult(ctx context.Context, from string, to []string, payload any, opts ...SendOption) (Sent, error) {
	var o sendOptions
	for _, fn := range opts {
		fn(&o)
	}
	if err := wire.ValidateClientID(from); err != nil {
		return Sent{}, err
	}
	for _, id := range to {
		if err := wire.ValidateClientID(id); err != nil {
			return Sent{}, err
		}
	}
	m, err := c.newMessage(payload)
	if err != nil {
		return Sent{}, err
	}
	return call(c, ctx, "SendMessage", func(ctx context.Context) (Sent, error) {
		return c.sendMessage(ctx, from, to, m, o)
	})
}

// sendMessage is SendMessage's work, inside a call.
func (c *Client) sendMessage(ctx context.Context, from string, to []string, m message, o sendOptions) (Sent, error) {
	v := c.nodes(ctx)
	if len(v.ids) == 0 {
		return Sent{}, ErrNoNodes
	}
	p := c.plan(v, from, to, m, o)
	msgs := p.msgs
	sent := Sent{ID: m.id}
	publishPlain := func() (Sent, error) { // at most once: one PUBLISH per node
		plain := make([]store.NodeMessage, len(msgs))
		for i := range msgs {
			plain[i] = plainMessage(store.KeptBatch{Node: msgs[i].Node, Sends: msgs[i : i+1]})
		}
		if err := c.st.PublishNodes(ctx, plain...); err != nil {
			return Sent{}, fmt.Errorf("failed to publish: %w", err)
		}
		return sent, nil
	}
	if !p.kept {
		return publishPlain()
	}
	pos, err := c.st.PublishKept(ctx, msgs...)
	if errors.Is(err, store.ErrRedisFull) && len(msgs) == 1 {
		// Redis refuses writes at maxmemory, but PUBLISH needs no memory:
		// the message is still delivered to who is connected, at most
		// once, with no position (Sent.Positions stays empty). A send to
		// several nodes may have been kept by some scripts already, so it
		// is not published again.
		c.log.Warn("redis is full: message delivered without history", "id", m.id)
		return publishPlain()
	}
	if err != nil {
		return Sent{}, fmt.Errorf("failed to publish: %w", err)
	}
	sent.Positions = make(map[string]Position, len(p.receivers))
	for i := range msgs {
		sent.addPositions(&msgs[i], pos[i])
	}
	return sent, nil
}

// msgPlan is one message grouped by owner: a send per node that owns a
// receiver or, with echo, the sender (msgs[i] for nodes[node[i]]), in node
// order.
type msgPlan struct {
	receivers []string // without duplicates, in the caller's order
	msgs      []store.KeptNodeMessage
	node      []int
	kept      bool // some copy keeps history
}

// plan groups a message's receivers by owner in view v (which has nodes):
// every group gets the frame, with receipts the sender as rcpt, and the
// group of the sender's owner (created if needed, possibly with no
// receivers) the echo copy.
func (c *Client) plan(v *nodeView, from string, to []string, m message, o sendOptions) msgPlan {
	nodes := v.ids
	frame := wire.MessageFrame(m.id, from, nil, m.ts, m.data)
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
	p := msgPlan{receivers: receivers}
	for i := range groups {
		g := &groups[i]
		if len(g.To) == 0 && g.Echo == "" {
			continue
		}
		g.Version, g.Kind, g.ID = v.proto, wire.KindSend, m.id
		km := store.KeptNodeMessage{Node: nodes[i], Header: *g, Frame: frame, Keep: make([]store.Keep, 0, len(g.To)+1)}
		for _, r := range g.To {
			km.Keep = append(km.Keep, c.clientKeep(r))
		}
		if g.Echo != "" {
			km.EchoFrame = echo
			km.Keep = append(km.Keep, c.clientKeep(from))
		}
		for _, k := range km.Keep {
			p.kept = p.kept || k.On()
		}
		p.msgs = append(p.msgs, km)
		p.node = append(p.node, i)
	}
	return p
}

// addPositions records what one send of the message kept: pos has a slot
// per receiver of km, then one for its echo.
func (s *Sent) addPositions(km *store.KeptNodeMessage, pos []wire.Position) {
	if s.Positions == nil {
		s.Positions = make(map[string]Position, len(km.Header.To))
	}
	for j, r := range km.Header.To {
		if !pos[j].IsZero() {
			s.Positions[r] = Position(pos[j])
		}
	}
	if km.Header.Echo != "" {
		s.Echo = Position(pos[len(km.Header.To)])
	}
}

// plainMessage is b published without history: its one send as a send
// node message (Version 0), or a batch.
func plainMessage(b store.KeptBatch) store.NodeMessage {
	if b.Version == 0 {
		km := &b.Sends[0]
		if km.EchoFrame != nil {
			return store.NodeMessage{Node: b.Node, Msg: wire.EncodeNodeMsg(km.Header, km.Frame, km.EchoFrame)}
		}
		return store.NodeMessage{Node: b.Node, Msg: wire.EncodeNodeMsg(km.Header, km.Frame)}
	}
	sends := make([]wire.BatchSend, len(b.Sends))
	for i := range b.Sends {
		km := &b.Sends[i]
		sends[i] = wire.BatchSend{Header: km.Header, Frame: km.Frame, Echo: km.EchoFrame}
	}
	return store.NodeMessage{Node: b.Node, Msg: wire.EncodeBatch(b.Version, sends)}
}

// SendChanMessage sends payload to every online member of channel ch with
// one PUBLISH; each node with members fans it out from one encoded frame.
// If the channel keeps history (Options.History) the PUBLISH runs in a
// script that also appends the message to the channel's stream.
func (c *Client) SendChanMessage(ctx context.Context, from, ch string, payload any) (string, error) {
	sent, err := c.SendChanMessageResult(ctx, from, ch, payload)
	return sent.ID, err
}

// SendChanMessageResult is SendChanMessage, returning the message's
// position in the channel's stream too (Sent.Channel; zero without
// history).
func (c *Client) SendChanMessageResult(ctx context.Context, from, ch string, payload any) (Sent, error) {
	if err := wire.ValidateClientID(from); err != nil {
		return Sent{}, err
	}
	if err := wire.ValidateChannel(ch); err != nil {
		return Sent{}, err
	}
	m, err := c.newMessage(payload)
	if err != nil {
		return Sent{}, err
	}
	return call(c, ctx, "SendChanMessage", func(ctx context.Context) (Sent, error) {
		frame := wire.ChannelFrame(m.id, from, ch, m.ts, m.data)
		sent := Sent{ID: m.id}
		if k := c.chanKeep(ch); k.On() {
			p, err := c.st.PublishChannelKept(ctx, ch, frame, k)
			if errors.Is(err, store.ErrRedisFull) {
				c.log.Warn("redis is full: channel message delivered without history", "id", m.id, "channel", ch)
			} else if err != nil {
				return Sent{}, fmt.Errorf("failed to publish: %w", err)
			}
			if err == nil {
				sent.Channel = Position(p)
				return sent, nil
			}
		}
		if err := c.st.PublishChannel(ctx, ch, frame); err != nil {
			return Sent{}, fmt.Errorf("failed to publish: %w", err)
		}
		return sent, nil
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
