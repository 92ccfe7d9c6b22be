package store

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// A kept send publishes one node message carrying each receiver's position,
// appends one entry per receiver, and the positions count up per stream.
func TestPublishKept(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	sub := st.rc.B().Subscribe().Channel(st.k.nodeChannel("n1")).Build()
	got := make(chan string, 4)
	go func() {
		_ = st.rc.Receive(ctx, sub, func(m rueidisMsg) { got <- m.Message })
	}()
	waitSubscribed(t, st, st.k.nodeChannel("n1"))

	keep := Keep{Size: 3, TTL: time.Minute}
	send := func(to []string, echo string, k []Keep) []wire.Position {
		t.Helper()
		h := wire.NodeMsg{Kind: wire.KindSend, To: to, ID: "m", Echo: echo}
		var ef []byte
		if echo != "" {
			ef = []byte(`{"type":"message","to":["x"]}`)
		}
		pos, err := st.PublishKept(ctx, KeptNodeMessage{Node: "n1", Header: h, Frame: []byte(`{"type":"message"}`), EchoFrame: ef, Keep: k})
		if err != nil {
			t.Fatal(err)
		}
		return pos[0]
	}
	p := send([]string{"bob", "carol"}, "", []Keep{keep, {}})
	if p[0].Offset != 1 || p[0].Epoch == "" || !p[1].IsZero() {
		t.Fatalf("positions %+v", p)
	}
	msg := <-got
	h, frames, err := wire.DecodeNodeMsg([]byte(msg))
	if err != nil || len(frames) != 1 || len(h.Pos) != 2 || h.Pos[0] != p[0].String() || h.Pos[1] != "" {
		t.Fatalf("published %q: %+v %v", msg, h, err)
	}
	p2 := send([]string{"bob"}, "alice", []Keep{keep, keep})
	if p2[0].Offset != 2 || p2[0].Epoch != p[0].Epoch || p2[1].Offset != 1 {
		t.Fatalf("second positions %+v", p2)
	}
	msg = <-got
	if h, frames, err = wire.DecodeNodeMsg([]byte(msg)); err != nil || len(frames) != 2 || h.EchoPos != p2[1].String() {
		t.Fatalf("published %q: %+v %v", msg, h, err)
	}
	// Two more for bob: the window keeps the last 3 (offsets 2..4).
	send([]string{"bob"}, "", []Keep{keep})
	send([]string{"bob"}, "", []Keep{keep})
	r, err := st.ReadHistory(ctx, HistoryRequest{Stream: Stream{Client: "bob"}, After: 1, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if r[0].Top.Offset != 4 || len(r[0].Entries) != 3 || r[0].Entries[0].Offset != 2 {
		t.Fatalf("read after 1: %+v", r[0])
	}
	r, _ = st.ReadHistory(ctx, HistoryRequest{Stream: Stream{Client: "bob"}, After: 0, Limit: 10})
	if len(r[0].Entries) != 3 || r[0].Entries[0].Offset != 2 {
		t.Fatalf("read after 0 must show the gap (first entry 2): %+v", r[0])
	}
	r, _ = st.ReadHistory(ctx, HistoryRequest{Stream: Stream{Client: "bob"}, After: 1, Limit: 2})
	if len(r[0].Entries) != 0 || r[0].Top.Offset != 4 {
		t.Fatalf("more missed than the limit must read nothing: %+v", r[0])
	}
	if e := r[0]; e.Now == 0 {
		t.Fatal("no Redis clock")
	}
}

// A channel send publishes the frame with its position spliced in; losing
// the meta starts a new epoch and clears the old entries.
func TestChannelKeptAndEpoch(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	topic := st.k.topicChannel("room")
	got := make(chan string, 4)
	go func() {
		_ = st.rc.Receive(ctx, st.rc.B().Subscribe().Channel(topic).Build(), func(m rueidisMsg) { got <- m.Message })
	}()
	waitSubscribed(t, st, topic)
	keep := Keep{Size: 10, TTL: time.Minute}
	p, err := st.PublishChannelKept(ctx, "room", []byte(`{"type":"channel","data":{"epoch":"no","offset":9}}`), keep)
	if err != nil || p.Offset != 1 {
		t.Fatalf("%+v %v", p, err)
	}
	f := <-got
	fp, ok := wire.FramePosition([]byte(f))
	if !ok || fp != p || !strings.HasPrefix(f, `{"type":"channel","data":{"epoch":"no","offset":9},"epoch":"`) {
		t.Fatalf("frame %q position %+v %v", f, fp, ok)
	}
	cur, err := st.Positions(ctx, Stream{Channel: "room"}, Stream{Channel: "empty"})
	if err != nil || cur[0] != p || cur[1].Offset != 0 || cur[1].Epoch == "" {
		t.Fatalf("positions %+v %v", cur, err)
	}
	// Redis loses the meta (evicted, or restarted without it): a new epoch.
	_, meta := st.k.history(Stream{Channel: "room"})
	if err := st.rc.Do(ctx, st.rc.B().Del().Key(meta).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	p2, err := st.PublishChannelKept(ctx, "room", []byte(`{"type":"channel"}`), keep)
	if err != nil || p2.Offset != 1 || p2.Epoch == p.Epoch {
		t.Fatalf("after the meta was lost: %+v (before %+v) %v", p2, p, err)
	}
	r, _ := st.ReadHistory(ctx, HistoryRequest{Stream: Stream{Channel: "room"}, After: 0, Limit: 10})
	if len(r[0].Entries) != 1 || string(r[0].Entries[0].Frame) != `{"type":"channel"}` {
		t.Fatalf("the old epoch's entries must be gone: %+v", r[0])
	}
}

type rueidisMsg = rueidis.PubSubMessage

// waitSubscribed waits until Redis counts a subscriber on channel.
func waitSubscribed(t *testing.T, st *Redis, channel string) {
	t.Helper()
	for i := 0; ; i++ {
		m, err := st.rc.Do(context.Background(), st.rc.B().PubsubNumsub().Channel(channel).Build()).AsIntMap()
		if err == nil && m[channel] > 0 {
			return
		}
		if i > 2000 {
			t.Fatalf("no subscriber on %s: %v", channel, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
