package imhelper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// Outgoing is one message of a SendMessages batch: what one SendMessage
// call takes.
type Outgoing struct {
	From    string
	To      []string
	Payload any
	Opts    []SendOption // WithReceipt, WithEcho: for this message only
}

// MessageError is why SendMessages refused a batch: message Index of it is
// invalid, for the reason Err (ErrInvalidClientID, ErrInvalidPayload,
// ErrPayloadTooLarge, …, for errors.Is). Nothing of the batch was sent.
type MessageError struct {
	Index int
	Err   error
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("imhelper: SendMessages: message %d: %v", e.Index, e.Err)
}

func (e *MessageError) Unwrap() error { return e.Err }

// A node's share of a batch goes out as one node message unless it holds
// more than maxBatchSends sends or maxBatchBytes of frames; then as
// several, in order. A node reads its subscription one message at a time,
// Redis buffers what it publishes to a subscriber within the pub/sub
// output buffer limit (8 MiB soft by default: past it the node is cut off
// and loses what was buffered) and runs a kept batch's script, one append
// per copy, while every other client waits.
const (
	maxBatchSends = 256
	maxBatchBytes = 1 << 20
)

// SendMessages sends many messages, each as SendMessage would (receivers
// deduplicated, WithReceipt and WithEcho per message, history as
// Options.History says), for the cost of one PUBLISH per owning node per
// batch instead of one per message: every send of the batch for one node
// travels in one batch node message (docs/protocol.md §9), and with
// history one script run per node appends all of that node's copies and
// publishes them.
//
// Order: the messages of a batch reach each receiver (and each sender's
// echo copies) in batch order, after whatever the same caller sent it
// before the call returned.
//
// Every message is checked before anything is published: an invalid one
// fails the call with a *MessageError naming it, and nothing is sent.
// Otherwise the result has one Sent per message, in order (the id
// receipts carry, and the positions in the streams that kept it).
//
// A node's share larger than 256 sends or 1 MiB of frames goes in several
// node messages, in order. While some live node reads only version 1 of
// the node message format (a rolling upgrade), the batch is published as
// version 1 sends, one per message per owning node, in one round trip.
// If Redis is full (ErrRedisFull) the messages for the nodes whose appends
// it refused are published without history, at most once, as SendMessage
// does: their receivers have no position in Sent.
//
// The result is nil only when the batch was refused before anything was
// published (a *MessageError, ErrClosed). With any other error it still
// names each message's id, and the batch may have been sent in part: some
// nodes' shares published and not others, as SendMessage to several nodes
// may be.
func (c *Client) SendMessages(ctx context.Context, msgs []Outgoing) ([]Sent, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	now := time.Now()
	batch := make([]outgoing, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		if err := wire.ValidateClientID(m.From); err != nil {
			return nil, &MessageError{Index: i, Err: err}
		}
		for _, id := range m.To {
			if err := wire.ValidateClientID(id); err != nil {
				return nil, &MessageError{Index: i, Err: err}
			}
		}
		data, err := c.encodePayload(m.Payload)
		if err != nil {
			return nil, &MessageError{Index: i, Err: err}
		}
		o := &batch[i]
		o.from, o.to, o.m = m.From, m.To, message{id: wire.NewID(now), ts: now.UnixMilli(), data: data}
		for _, fn := range m.Opts {
			fn(&o.o)
		}
	}
	if len(msgs) == 0 {
		return []Sent{}, nil
	}
	sent, err := call(c, ctx, "SendMessages", func(ctx context.Context) ([]Sent, error) {
		return c.sendMessages(ctx, batch)
	})
	if sent == nil { // the call ran out of time: the ids are still the caller's to know
		sent = make([]Sent, len(batch))
		for i := range batch {
			sent[i].ID = batch[i].m.id
		}
	}
	return sent, err
}

// outgoing is a checked message of a batch.
type outgoing struct {
	from string
	to   []string
	m    message
	o    sendOptions
}

// sendRef names send j of message i's plan.
type sendRef struct{ msg, send int }

// sendMessages is SendMessages' work, inside a call.
func (c *Client) sendMessages(ctx context.Context, batch []outgoing) ([]Sent, error) {
	v := c.nodes(ctx)
	if len(v.ids) == 0 {
		return nil, ErrNoNodes
	}
	sent := make([]Sent, len(batch))
	plans := make([]msgPlan, len(batch))
	kept := false
	for i := range batch {
		b := &batch[i]
		plans[i] = c.plan(v, b.from, b.to, b.m, b.o)
		sent[i].ID = b.m.id
		kept = kept || plans[i].kept
	}
	// The node messages, and for each the sends it carries: in the order
	// one connection pipelines them, so that each node gets its sends in
	// batch order.
	var out []store.KeptBatch
	var refs [][]sendRef
	if v.proto >= wire.BatchVersion {
		perNode := make([][]sendRef, len(v.ids))
		for i := range plans {
			for j, n := range plans[i].node {
				perNode[n] = append(perNode[n], sendRef{i, j})
			}
		}
		for n, rs := range perNode {
			for len(rs) > 0 {
				k, size := 0, 0
				for k < len(rs) && k < maxBatchSends {
					km := &plans[rs[k].msg].msgs[rs[k].send]
					size += len(km.Frame) + len(km.EchoFrame)
					if k > 0 && size > maxBatchBytes {
						break
					}
					k++
				}
				b := store.KeptBatch{Node: v.ids[n], Version: v.proto, Sends: make([]store.KeptNodeMessage, k)}
				if k == 1 { // a share of one send goes as a send: the same, smaller
					b.Version = 0
				}
				for x, r := range rs[:k] {
					b.Sends[x] = plans[r.msg].msgs[r.send]
				}
				out, refs = append(out, b), append(refs, rs[:k])
				rs = rs[k:]
			}
		}
	} else {
		// Some live node reads only version 1: one send per message per
		// owning node, as SendMessage publishes them, all in one round
		// trip and in batch order.
		for i := range plans {
			for j := range plans[i].msgs {
				out = append(out, store.KeptBatch{Node: plans[i].msgs[j].Node, Sends: plans[i].msgs[j : j+1]})
				refs = append(refs, []sendRef{{i, j}})
			}
		}
	}
	if !kept {
		plain := make([]store.NodeMessage, len(out))
		for i := range out {
			plain[i] = plainMessage(out[i])
		}
		if err := c.st.PublishNodes(ctx, plain...); err != nil {
			return sent, fmt.Errorf("failed to publish: %w", err)
		}
		return sent, nil
	}
	var fallback []store.NodeMessage
	var failed []string // nodes of the node messages that may not have been published
	var firstErr error
	for i, res := range c.st.PublishKeptBatches(ctx, out...) {
		switch {
		case res.Err == nil:
			for x, r := range refs[i] {
				sent[r.msg].addPositions(&plans[r.msg].msgs[r.send], res.Pos[x])
			}
		case errors.Is(res.Err, store.ErrRedisFull):
			// Redis refused the appends, so this script published nothing:
			// publish it plainly, at most once and without positions, as
			// SendMessage does (PUBLISH needs no memory). Should Redis
			// refuse one script of a node and take a later one, the
			// refused sends reach their receivers after the later ones.
			fallback = append(fallback, plainMessage(out[i]))
		default:
			failed = append(failed, out[i].Node)
			if firstErr == nil {
				firstErr = res.Err
			}
		}
	}
	if len(fallback) > 0 {
		c.log.Warn("redis is full: messages delivered without history", "node_messages", len(fallback), "messages", len(batch))
		if err := c.st.PublishNodes(ctx, fallback...); err != nil {
			for _, m := range fallback {
				failed = append(failed, m.Node)
			}
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if firstErr != nil {
		return sent, fmt.Errorf("failed to publish %d of %d node messages (to %v): %w", len(failed), len(out), failed, firstErr)
	}
	return sent, nil
}
