package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/wire"
)

// A kept send publishes one node message carrying each receiver's position,
// appends one entry per receiver, and the positions count up per stream.
func TestPublishKept(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	sub := subscribeCmd(st, st.k.nodeChannel("n1"))
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

// A kept batch is one script run and one PUBLISH: every send's copies are
// appended in order (offsets count up per stream across the batch) and
// the batch carries each send's positions, as the sends would on their
// own.
func TestPublishKeptBatches(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	got := make(chan string, 4)
	go func() {
		_ = st.rc.Receive(ctx, subscribeCmd(st, st.k.nodeChannel("n1")), func(m rueidisMsg) { got <- m.Message })
	}()
	waitSubscribed(t, st, st.k.nodeChannel("n1"))
	keep := Keep{Size: 10, TTL: time.Minute}
	frame := func(id string) []byte { return []byte(`{"type":"message","id":"` + id + `"}`) }
	b := KeptBatch{Node: "n1", Version: wire.BatchVersion, Sends: []KeptNodeMessage{
		{Header: wire.NodeMsg{Kind: wire.KindSend, To: []string{"bob"}, ID: "1"}, Frame: frame("1"), Keep: []Keep{keep}},
		{Header: wire.NodeMsg{Kind: wire.KindSend, To: []string{"bob", "carol"}, Echo: "alice", Receipt: "alice", ID: "2"},
			Frame: frame("2"), EchoFrame: []byte(`{"type":"message","id":"2","to":["bob","carol"]}`), Keep: []Keep{keep, {}, keep}},
		{Header: wire.NodeMsg{Kind: wire.KindSend, To: []string{"bob"}, ID: "3"}, Frame: frame("3"), Keep: []Keep{keep}},
	}}
	res := st.PublishKeptBatches(ctx, b)
	if len(res) != 1 || res[0].Err != nil || len(res[0].Pos) != 3 {
		t.Fatalf("result %+v", res)
	}
	pos := res[0].Pos
	if pos[0][0].Offset != 1 || pos[1][0].Offset != 2 || !pos[1][1].IsZero() || pos[1][2].Offset != 1 || pos[2][0].Offset != 3 {
		t.Fatalf("positions %+v", pos)
	}
	msg := <-got
	h, _, err := wire.DecodeNodeMsg([]byte(msg))
	if err != nil || h.Kind != wire.KindBatch || len(h.Sends) != 3 {
		t.Fatalf("published %q: %+v %v", msg, h, err)
	}
	for i, s := range h.Sends {
		want := b.Sends[i]
		if s.Header.ID != want.Header.ID || string(s.Frame) != string(want.Frame) || string(s.Echo) != string(want.EchoFrame) || len(s.Header.Pos) != len(want.Header.To) {
			t.Fatalf("send %d: %+v, want %+v", i, s, want)
		}
		for j := range s.Header.Pos {
			if s.Header.Pos[j] != pos[i][j].String() {
				t.Fatalf("send %d receiver %d: pos %q, returned %v", i, j, s.Header.Pos[j], pos[i][j])
			}
		}
	}
	if h.Sends[1].Header.EchoPos != pos[1][2].String() || h.Sends[1].Header.Receipt != "alice" {
		t.Fatalf("echo send %+v", h.Sends[1].Header)
	}
	r, err := st.ReadHistory(ctx, HistoryRequest{Stream: Stream{Client: "bob"}, After: 0, Limit: 10})
	if err != nil || len(r[0].Entries) != 3 || string(r[0].Entries[2].Frame) != string(frame("3")) {
		t.Fatalf("bob's stream %+v %v", r, err)
	}
	// One PUBLISH: the next message on the channel is a marker sent after.
	marker := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindProbe, Nonce: "marker"})
	if err := st.PublishNodes(ctx, NodeMessage{Node: "n1", Msg: marker}); err != nil {
		t.Fatal(err)
	}
	if m := <-got; m != string(marker) {
		t.Fatalf("a second publish: %q", m)
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
		_ = st.rc.Receive(ctx, subscribeCmd(st, topic), func(m rueidisMsg) { got <- m.Message })
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

// subscribeCmd subscribes to channel: SSUBSCRIBE on a Cluster, where the
// store publishes every channel sharded.
func subscribeCmd(st *Redis, channel string) rueidis.Completed {
	if st.cluster {
		return st.rc.B().Ssubscribe().Channel(channel).Build()
	}
	return st.rc.B().Subscribe().Channel(channel).Build()
}

// waitSubscribed waits until Redis counts a subscriber on channel.
func waitSubscribed(t *testing.T, st *Redis, channel string) {
	t.Helper()
	for i := 0; ; i++ {
		n, err := st.subscribers(context.Background(), channel)
		if err == nil && n > 0 {
			return
		}
		if i > 2000 {
			t.Fatalf("no subscriber on %s: %v", channel, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// At maxmemory Redis refuses the kept sends before they run: nothing is
// appended, nothing published, and the error is ErrRedisFull, so that
// imhelper publishes plainly. (Without the "#!lua" line Redis refused a
// script only at its first command that may grow memory, and these ran a
// DEL or PEXPIRE first: they appended past maxmemory.) PUBLISH itself
// still works.
func TestKeptScriptsRefusedAtMaxmemory(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	got := make(chan string, 4)
	go func() {
		_ = st.rc.Receive(ctx, subscribeCmd(st, st.k.nodeChannel("n1")), func(m rueidisMsg) { got <- m.Message })
	}()
	waitSubscribed(t, st, st.k.nodeChannel("n1"))
	setMaxmemory := func(v string) {
		t.Helper()
		if err := st.rc.Do(ctx, st.rc.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", v).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	keep := Keep{Size: 10, TTL: time.Minute}
	send := KeptNodeMessage{Header: wire.NodeMsg{Kind: wire.KindSend, To: []string{"bob"}, ID: "1"}, Frame: []byte(`{"type":"message"}`), Keep: []Keep{keep}}
	setMaxmemory("1") // every byte Redis holds is over
	res := st.PublishKeptBatches(ctx, KeptBatch{Node: "n1", Version: wire.BatchVersion, Sends: []KeptNodeMessage{send, send}}, KeptBatch{Node: "n1", Sends: []KeptNodeMessage{send}})
	for i, r := range res {
		if !errors.Is(r.Err, ErrRedisFull) {
			t.Errorf("batch %d at maxmemory: %+v, want ErrRedisFull", i, r)
		}
	}
	if _, err := st.PublishKept(ctx, send); !errors.Is(err, ErrRedisFull) {
		t.Errorf("PublishKept at maxmemory: %v", err)
	}
	if _, err := st.PublishChannelKept(ctx, "room", []byte(`{"type":"channel"}`), keep); !errors.Is(err, ErrRedisFull) {
		t.Errorf("PublishChannelKept at maxmemory: %v", err)
	}
	marker := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindProbe, Nonce: "marker"})
	if err := st.PublishNodes(ctx, NodeMessage{Node: "n1", Msg: marker}); err != nil {
		t.Fatalf("PUBLISH at maxmemory: %v", err)
	}
	if m := <-got; m != string(marker) {
		t.Fatalf("a refused script published %q", m)
	}
	setMaxmemory("0")
	for _, s := range []Stream{{Client: "bob"}, {Channel: "room"}} {
		stream, _ := st.k.history(s)
		if n, err := st.rc.Do(ctx, st.rc.B().Exists().Key(stream).Build()).AsInt64(); err != nil || n != 0 {
			t.Errorf("%s was appended to at maxmemory (%d, %v)", stream, n, err)
		}
	}
	if res := st.PublishKeptBatches(ctx, KeptBatch{Node: "n1", Sends: []KeptNodeMessage{send}}); res[0].Err != nil || res[0].Pos[0][0].Offset != 1 {
		t.Fatalf("once Redis has room: %+v", res)
	}
}

// Scripts run several at a time (kept sends, positions, history reads) are
// sent as EVALSHA alone: rueidis' ExecMulti would load the whole script
// before every call, a round trip each. After the script cache is flushed,
// the next call loads it once and succeeds.
func TestMultiScriptsLoadOnce(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	loads := func() int {
		info, err := st.rc.Do(ctx, st.rc.B().Info().Section("commandstats").Build()).ToString()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "cmdstat_script|load:calls="); ok {
				n, _ := strconv.Atoi(strings.SplitN(v, ",", 2)[0])
				return n
			}
		}
		return 0
	}
	keep := Keep{Size: 10, TTL: time.Minute}
	send := func() {
		t.Helper()
		h := wire.NodeMsg{Kind: wire.KindSend, To: []string{"bob"}, ID: "m"}
		if _, err := st.PublishKept(ctx, KeptNodeMessage{Node: "n1", Header: h, Frame: []byte(`{"type":"message"}`), Keep: []Keep{keep}}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Positions(ctx, Stream{Client: "bob"}); err != nil {
			t.Fatal(err)
		}
	}
	send()
	first := loads()
	for range 20 {
		send()
	}
	if n := loads() - first; n != 0 {
		t.Fatalf("20 more kept sends loaded scripts %d times", n)
	}
	if err := st.rc.Do(ctx, st.rc.B().ScriptFlush().Build()).Error(); err != nil {
		t.Fatal(err)
	}
	before := loads()
	send()
	if n := loads() - before; n < 1 || n > 2 {
		t.Fatalf("after SCRIPT FLUSH the scripts were loaded %d times, want once each", n)
	}
	p, err := st.Positions(ctx, Stream{Client: "bob"})
	if err != nil || p[0].Offset != 22 {
		t.Fatalf("bob's position %v, %v; want offset 22", p, err)
	}
}

// storeAt is a store on the given standalone Redis.
func storeAt(t *testing.T, s *redistest.Server) *Redis {
	t.Helper()
	rc, err := Dial(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	return NewRedis(rc, Options{})
}

// keepInRoom sends n kept messages to channel "room" and returns the last
// one's position.
func keepInRoom(t *testing.T, st *Redis, n int, keep Keep) wire.Position {
	t.Helper()
	var last wire.Position
	for range n {
		p, err := st.PublishChannelKept(context.Background(), "room", []byte(`{"type":"channel"}`), keep)
		if err != nil {
			t.Fatal(err)
		}
		last = p
	}
	return last
}

// A replica promoted while its master had acknowledged an append it never
// received must not hand that offset out again: a node holding the lost
// message's position would drop the new one as a duplicate, silently. The
// stream starts a new epoch instead, so its readers are told
// recovered:false. (Async replication: the master answers before the
// replica has the write. Here the replica is promoted first and the
// master keeps taking writes, the same loss made certain.)
func TestPromotedReplicaStartsNewEpoch(t *testing.T) {
	master := redistest.StartWith(t, "--repl-diskless-sync-delay", "0")
	replica := redistest.StartWith(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))
	ctx := context.Background()
	keep := Keep{Size: 10, TTL: time.Minute}
	old := storeAt(t, master)
	before := keepInRoom(t, old, 3, keep)
	// WAIT (without a bound: the condition itself) until the replica has
	// the three appends.
	if out, err := master.Exec("WAIT", "1", "0"); err != nil || strings.TrimSpace(out) != "1" {
		t.Fatalf("WAIT: %q %v", out, err)
	}
	if out, err := replica.Exec("REPLICAOF", "NO", "ONE"); err != nil {
		t.Fatalf("promote: %q %v", out, err)
	}
	lost, err := old.PublishChannelKept(ctx, "room", []byte(`{"type":"channel"}`), keep)
	if err != nil || lost.Offset != before.Offset+1 {
		t.Fatalf("append acknowledged by the old master: %v %v", lost, err)
	}
	master.Kill()

	promoted := storeAt(t, replica)
	p, err := promoted.PublishChannelKept(ctx, "room", []byte(`{"type":"channel"}`), keep)
	if err != nil {
		t.Fatal(err)
	}
	if p.Epoch == before.Epoch {
		t.Fatalf("after the promotion the stream goes on in epoch %s at %v: offset %d was handed out twice", before.Epoch, p, lost.Offset)
	}
	if p.Offset != 1 {
		t.Fatalf("a new epoch starts at 1, got %v", p)
	}
	r, err := promoted.ReadHistory(ctx, HistoryRequest{Stream: Stream{Channel: "room"}, Limit: 10})
	if err != nil || len(r[0].Entries) != 1 || r[0].Top != p {
		t.Fatalf("the new epoch holds only its own entry: %+v %v", r, err)
	}
	// From now on the promoted Redis is the stream's writer: no new epoch.
	p2, err := promoted.PublishChannelKept(ctx, "room", []byte(`{"type":"channel"}`), keep)
	if err != nil || p2.Epoch != p.Epoch || p2.Offset != 2 {
		t.Fatalf("next append: %v %v, want %s.2", p2, err, p.Epoch)
	}
}

// A stream moved to another Redis that did not replace its writer (a
// Cluster slot migrated, MIGRATE between masters; a restart that changed
// the id) keeps its epoch and offsets: nothing of it was lost.
func TestMovedStreamKeepsEpoch(t *testing.T) {
	from, to := redistest.Start(t), redistest.Start(t)
	ctx := context.Background()
	keep := Keep{Size: 10, TTL: time.Minute}
	src := storeAt(t, from)
	last := keepInRoom(t, src, 2, keep)
	stream, meta := src.k.history(Stream{Channel: "room"})
	if out, err := from.Exec("MIGRATE", "127.0.0.1", strconv.Itoa(to.Port), "", "0", "5000", "KEYS", stream, meta); err != nil || strings.TrimSpace(out) != "OK" {
		t.Fatalf("MIGRATE: %q %v", out, err)
	}
	p, err := storeAt(t, to).PublishChannelKept(ctx, "room", []byte(`{"type":"channel"}`), keep)
	if err != nil || p.Epoch != last.Epoch || p.Offset != last.Offset+1 {
		t.Fatalf("after the move: %v %v, want %s.%d", p, err, last.Epoch, last.Offset+1)
	}
}
