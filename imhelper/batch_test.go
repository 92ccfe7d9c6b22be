package imhelper_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/testnode"
	"github.com/imbroker/imbroker/internal/wire"
)

// fakeNode is a node in the registry whose channel the test reads: what
// imhelper publishes to it, decoded as a node would.
type fakeNode struct {
	st   *store.Redis
	msgs chan wire.NodeMsg
}

// registerNode subscribes node id on st (onMsg gets what arrives) and
// writes its lease, announcing node message version proto, for the rest of
// the test.
func registerNode(tb testing.TB, st *store.Redis, id string, proto int, onMsg func(store.Message)) {
	tb.Helper()
	ctx := context.Background()
	sub, err := st.Subscribe(ctx, id, onMsg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(sub.Close)
	if _, err := st.WriteLease(ctx, wire.NodeInfo{ID: id, URL: "ws://" + id + ".invalid/ws", Proto: proto}, time.Hour); err != nil {
		tb.Fatal(err)
	}
}

// startFakeNode registers node id (announcing proto) on a private Redis,
// subscribes to its channel, and returns an imhelper that sees it.
func startFakeNode(t *testing.T, id string, proto int) (*fakeNode, *imhelper.Client) {
	t.Helper()
	ctx := context.Background()
	r := redistest.Start(t)
	rc, err := store.Dial(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	fn := &fakeNode{st: store.NewRedis(rc, store.Options{}), msgs: make(chan wire.NodeMsg, 10000)}
	registerNode(t, fn.st, id, proto, func(m store.Message) {
		if m.Kind != store.ToNode {
			return
		}
		h, frames, err := wire.DecodeNodeMsg([]byte(m.Payload))
		if err != nil {
			panic(fmt.Sprintf("imhelper published a malformed node message %q: %v", m.Payload, err))
		}
		if h.Kind == wire.KindSend { // one send: the same shape as a batch's
			h.Sends = []wire.BatchSend{{Header: h, Frame: frames[0]}}
			if h.Echo != "" {
				h.Sends[0].Echo = frames[1]
			}
		}
		fn.msgs <- h
	})
	im, err := imhelper.New(ctx, imhelper.Options{RedisURL: r.URL(), Logger: testnode.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	if len(im.Nodes()) != 1 {
		t.Fatalf("imhelper sees %v", im.Nodes())
	}
	return fn, im
}

func (fn *fakeNode) next(t *testing.T) wire.NodeMsg {
	t.Helper()
	select {
	case h := <-fn.msgs:
		return h
	case <-time.After(testnode.MinWait):
		t.Fatal("no node message")
	}
	return wire.NodeMsg{}
}

func (fn *fakeNode) publishes(t *testing.T) int64 {
	t.Helper()
	calls, err := fn.st.CommandCalls(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return calls["publish"]
}

// An invalid message fails the whole batch before anything is published,
// with an error naming it and the reason's sentinel.
func TestSendMessagesValidation(t *testing.T) {
	fn, im := startFakeNode(t, "n1", wire.NodeMsgVersion)
	ctx := context.Background()
	good := imhelper.Outgoing{From: "a", To: []string{"b"}, Payload: `"ok"`}
	before := fn.publishes(t)
	for _, tc := range []struct {
		bad  imhelper.Outgoing
		want error
	}{
		{imhelper.Outgoing{From: "a b", To: []string{"b"}, Payload: `1`}, imhelper.ErrInvalidClientID},
		{imhelper.Outgoing{From: "a", To: []string{"b", ""}, Payload: `1`}, imhelper.ErrInvalidClientID},
		{imhelper.Outgoing{From: "a", To: []string{"b"}, Payload: `{"unclosed":`}, imhelper.ErrInvalidPayload},
		{imhelper.Outgoing{From: "a", To: []string{"b"}, Payload: "\"\xff\""}, imhelper.ErrPayloadNotUTF8},
		{imhelper.Outgoing{From: "a", To: []string{"b"}, Payload: `"` + strings.Repeat("x", wire.DefaultMaxPayload) + `"`}, imhelper.ErrPayloadTooLarge},
		{imhelper.Outgoing{From: "a", To: []string{"b"}, Payload: func() {}}, imhelper.ErrInvalidPayload},
	} {
		sent, err := im.SendMessages(ctx, []imhelper.Outgoing{good, good, tc.bad, good})
		var me *imhelper.MessageError
		if !errors.As(err, &me) || me.Index != 2 || !errors.Is(err, tc.want) || sent != nil {
			t.Errorf("%+v: %v (%#v), sent %v; want a MessageError at 2 that is %v", tc.bad, err, err, sent, tc.want)
		}
		if err != nil && !strings.Contains(err.Error(), "message 2") {
			t.Errorf("error %q does not name the message", err)
		}
	}
	if d := fn.publishes(t) - before; d != 0 {
		t.Errorf("refused batches published %d times", d)
	}
	// Nothing was published: the first node message is the one sent next.
	sent, err := im.SendMessages(ctx, []imhelper.Outgoing{{From: "marker", To: []string{"b"}, Payload: `"m"`}})
	if err != nil || len(sent) != 1 {
		t.Fatal(sent, err)
	}
	if h := fn.next(t); len(h.Sends) != 1 || h.Sends[0].Header.ID != sent[0].ID {
		t.Fatalf("first node message %+v, want the marker %s", h, sent[0].ID)
	}
	if sent, err := im.SendMessages(ctx, nil); err != nil || len(sent) != 0 {
		t.Errorf("an empty batch: %v %v", sent, err)
	}
}

// A node's share of a batch goes in one node message up to 256 sends or
// 1 MiB of frames; a larger share in several, in order, each send's copies
// kept in order.
func TestSendMessagesSplitsLargeShares(t *testing.T) {
	fn, im := startFakeNode(t, "n1", wire.NodeMsgVersion)
	ctx := context.Background()
	check := func(t *testing.T, msgs []imhelper.Outgoing, want []int) {
		t.Helper()
		sent, err := im.SendMessages(ctx, msgs)
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for i, n := range want {
			h := fn.next(t)
			if n > 1 && h.Kind != wire.KindBatch || len(h.Sends) != n {
				t.Fatalf("node message %d: %s with %d sends, want %d", i, h.Kind, len(h.Sends), n)
			}
			bytes := 0
			for _, s := range h.Sends {
				if s.Header.ID != sent[k].ID {
					t.Fatalf("send %d is %s, want %s (order)", k, s.Header.ID, sent[k].ID)
				}
				if p, _ := wire.ParsePosition(s.Header.Pos[0]); imhelper.Position(p) != sent[k].Positions["bob"] || p.IsZero() {
					t.Fatalf("send %d carries %q, returned %+v", k, s.Header.Pos, sent[k].Positions)
				}
				if k > 0 && sent[k].Positions["bob"].Offset != sent[k-1].Positions["bob"].Offset+1 {
					t.Fatalf("send %d at %+v after %+v", k, sent[k].Positions["bob"], sent[k-1].Positions["bob"])
				}
				bytes += len(s.Frame)
				k++
			}
			if n > 1 && bytes > 1<<20 {
				t.Fatalf("node message %d carries %d bytes of frames", i, bytes)
			}
		}
	}
	t.Run("by count", func(t *testing.T) {
		msgs := make([]imhelper.Outgoing, 600)
		for i := range msgs {
			msgs[i] = imhelper.Outgoing{From: "feed", To: []string{"bob"}, Payload: i}
		}
		check(t, msgs, []int{256, 256, 88})
	})
	t.Run("by size", func(t *testing.T) {
		big := `"` + strings.Repeat("x", 60<<10) + `"`
		msgs := make([]imhelper.Outgoing, 40)
		for i := range msgs {
			msgs[i] = imhelper.Outgoing{From: "feed", To: []string{"bob"}, Payload: big}
		}
		check(t, msgs, []int{17, 17, 6}) // frames of 61,5xx bytes: 17 in 1 MiB
	})
}
