package imhelper

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// HistoryRule is how the streams whose names start with Prefix keep
// history: at most Size messages, each for TTL. Size 0 turns history off
// for them: their messages are published at most once, at the cost of one
// PUBLISH, as before history existed.
type HistoryRule struct {
	Prefix string
	Size   int
	TTL    time.Duration
}

// HistoryOptions says which streams keep history (docs/architecture.md,
// "Delivery"). The rule with the longest matching Prefix applies; a name no
// rule matches keeps none. Nil fields take the defaults.
type HistoryOptions struct {
	// Clients applies to personal streams (direct messages and echo
	// copies), by clientId. Default: every client keeps 100 messages for
	// 2 minutes (DefaultClientHistory).
	Clients []HistoryRule
	// Channels applies to channel streams, by channel name. Default: none.
	Channels []HistoryRule
}

// DefaultClientHistory is the personal history when Options.History (or
// its Clients) is nil.
var DefaultClientHistory = HistoryRule{Size: 100, TTL: 2 * time.Minute}

// MaxHistorySize bounds a rule's Size; nodes replay at most -max-recovery
// (default 1000) messages per stream on a reconnect.
const MaxHistorySize = 100000

func (o *HistoryOptions) check() error {
	for _, r := range append(append([]HistoryRule(nil), o.Clients...), o.Channels...) {
		switch {
		case r.Size < 0 || r.Size > MaxHistorySize:
			return fmt.Errorf("imhelper: history rule %q: size %d out of 0..%d", r.Prefix, r.Size, MaxHistorySize)
		case r.Size > 0 && (r.TTL < time.Second || r.TTL > 24*time.Hour):
			return fmt.Errorf("imhelper: history rule %q: ttl %v out of 1s..24h", r.Prefix, r.TTL)
		}
	}
	return nil
}

// keepFor returns the rule for name among rules.
func keepFor(rules []HistoryRule, name string) store.Keep {
	best := -1
	for i, r := range rules {
		if strings.HasPrefix(name, r.Prefix) && (best < 0 || len(r.Prefix) > len(rules[best].Prefix)) {
			best = i
		}
	}
	if best < 0 {
		return store.Keep{}
	}
	return store.Keep{Size: rules[best].Size, TTL: rules[best].TTL}
}

// anyChanHistory reports whether some channel keeps history.
func (c *Client) anyChanHistory() bool {
	for _, r := range c.opt.History.Channels {
		if r.Size > 0 {
			return true
		}
	}
	return false
}

// chanPositions returns the current position of each channel that keeps
// history ("" for the others), or nil if none does.
func (c *Client) chanPositions(ctx context.Context, chans []string) ([]string, error) {
	var streams []store.Stream
	var idx []int
	for i, ch := range chans {
		if c.chanKeep(ch).On() {
			streams = append(streams, store.Stream{Channel: ch})
			idx = append(idx, i)
		}
	}
	if len(streams) == 0 {
		return nil, nil
	}
	pos, err := c.st.Positions(ctx, streams...)
	if err != nil {
		return nil, fmt.Errorf("failed to read channel positions: %w", err)
	}
	out := make([]string, len(chans))
	for j, i := range idx {
		out[i] = pos[j].String()
	}
	return out, nil
}

func (c *Client) clientKeep(id string) store.Keep { return keepFor(c.opt.History.Clients, id) }
func (c *Client) chanKeep(ch string) store.Keep   { return keepFor(c.opt.History.Channels, ch) }

// Position is a place in a history stream: the number of messages the
// stream has kept (Offset) in its current history (Epoch, which changes when
// that history is lost). The zero Position names no history.
type Position struct {
	Epoch  string `json:"epoch"`
	Offset uint64 `json:"offset"`
}

// String is the text form the browser's "pos" parameter uses.
func (p Position) String() string { return wire.Position(p).String() }

// Stream names a history stream: ClientStream or ChanStream.
type Stream struct{ s store.Stream }

// ClientStream is client id's personal stream.
func ClientStream(id string) Stream { return Stream{store.Stream{Client: id}} }

// ChanStream is channel ch's stream.
func ChanStream(ch string) Stream { return Stream{store.Stream{Channel: ch}} }

func (s Stream) check() error {
	if s.s.Channel != "" {
		return wire.ValidateChannel(s.s.Channel)
	}
	return wire.ValidateClientID(s.s.Client)
}

// StreamPosition returns the current position of a stream, for "load the
// state from your database, then tell the browser to go on from here": a
// browser that presents it on connect is sent every message kept after it.
func (c *Client) StreamPosition(ctx context.Context, s Stream) (Position, error) {
	if err := c.check(); err != nil {
		return Position{}, err
	}
	if err := s.check(); err != nil {
		return Position{}, err
	}
	return call(c, ctx, "StreamPosition", func(ctx context.Context) (Position, error) {
		p, err := c.st.Positions(ctx, s.s)
		if err != nil {
			return Position{}, fmt.Errorf("failed to read the stream position: %w", err)
		}
		return Position(p[0]), nil
	})
}

// HistoryMessage is one kept message: its position and the frame the
// browser got (with the position as its last fields).
type HistoryMessage struct {
	Position Position
	Frame    []byte
}

// HistoryPage is what History returns.
type HistoryPage struct {
	// Messages follow since, oldest first.
	Messages []HistoryMessage
	// Top is the stream's current position.
	Top Position
	// Complete is false if messages after since are no longer kept (the
	// window moved on, they expired, or the epoch changed): what Messages
	// holds then starts later than since.
	Complete bool
}

// ErrHistoryLimit reports a History limit out of 1..1000.
var ErrHistoryLimit = errors.New("imhelper: history limit must be 1..1000")

// History returns up to limit (1..1000) messages the stream kept after
// since, for paging through recent messages. A since of another epoch (or
// the zero Position) reads from the oldest kept message.
func (c *Client) History(ctx context.Context, s Stream, since Position, limit int) (HistoryPage, error) {
	if err := c.check(); err != nil {
		return HistoryPage{}, err
	}
	if err := s.check(); err != nil {
		return HistoryPage{}, err
	}
	if limit < 1 || limit > 1000 {
		return HistoryPage{}, ErrHistoryLimit
	}
	return call(c, ctx, "History", func(ctx context.Context) (HistoryPage, error) {
		r, err := c.st.ReadHistory(ctx, store.HistoryRequest{Stream: s.s, After: since.Offset, Limit: limit, Partial: true})
		if err != nil {
			return HistoryPage{}, fmt.Errorf("failed to read history: %w", err)
		}
		h := r[0]
		if since.Epoch != h.Top.Epoch || since.Offset > h.Top.Offset {
			// Another history: page from its oldest message.
			if r, err = c.st.ReadHistory(ctx, store.HistoryRequest{Stream: s.s, Limit: limit, Partial: true}); err != nil {
				return HistoryPage{}, fmt.Errorf("failed to read history: %w", err)
			}
			h = r[0]
			since = Position{}
		}
		page := HistoryPage{Top: Position(h.Top), Complete: since.Epoch == h.Top.Epoch}
		next := since.Offset + 1
		for _, e := range h.Entries {
			if e.Expires < h.Now {
				page.Complete = false
				continue
			}
			if e.Offset != next {
				page.Complete = false
			}
			next = e.Offset + 1
			pos := wire.Position{Epoch: h.Top.Epoch, Offset: e.Offset}
			page.Messages = append(page.Messages, HistoryMessage{Position: Position(pos), Frame: wire.AppendPosition(e.Frame, pos)})
		}
		if len(h.Entries) == 0 && since.Offset < h.Top.Offset {
			page.Complete = false
		}
		return page, nil
	})
}
