package imserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// pipeConn is a conn of s whose socket is one end of a pipe; everything the
// socket writes is collected in out.
func pipeConn(t *testing.T, s *Server, id string) (*conn, *lockedBuffer) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	out := &lockedBuffer{}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := b.Read(buf)
			_, _ = out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	c := &conn{srv: s, w: s.newSockWriter(a), cl: &client{id: id}}
	c.w.onSlow, c.w.onBroken = func() {}, func() {}
	c.w.start()
	t.Cleanup(func() { c.w.Close() })
	return c, out
}

// A fill whose history read fails leaves the socket's position as a floor:
// the socket is told recovered:false, a copy at or before the position (a
// publish retried in a failover, a replay's live twin) is still dropped,
// the next frame past it goes out without a fill, and once it has, a gap
// starts a fill again. Forgetting the position instead let the failover
// test's client get a message twice.
func TestFailedFillKeepsDuplicateFloor(t *testing.T) {
	s := &Server{cfg: Config{MaxQueueBytes: 1 << 20}, metrics: newMetrics(), hub: newHub()}
	c, _ := pipeConn(t, s, "c1")

	at := func(off uint64) wire.Position { return wire.Position{Epoch: "e1", Offset: off} }
	frame := func(off uint64) heldFrame { return heldFrame{ch: "", p: at(off), f: outFrame{b: []byte("{}")}} }
	st := &c.hist
	st.mu.Lock()
	defer st.mu.Unlock()
	st.set("", at(5))

	states := s.applyFills(c, []fillRequest{{from: at(5)}}, nil, errors.New("dial tcp: connection refused"))
	if len(states) != 1 || states[0].Recovered || states[0].Pos != at(5) {
		t.Fatalf("a failed read reported %+v, want the stream not recovered at its position", states)
	}
	dups := testutil.ToFloat64(s.metrics.duplicates)
	for _, off := range []uint64{5, 3} {
		if _, fill := c.admitLocked(frame(off), false); fill {
			t.Fatalf("offset %d after a failed read started a fill", off)
		}
		if p, _ := st.get(""); p != at(5) {
			t.Fatalf("offset %d moved the position to %+v", off, p)
		}
	}
	if got := testutil.ToFloat64(s.metrics.duplicates) - dups; got != 2 {
		t.Fatalf("%v of the 2 copies at or before the position were dropped as duplicates", got)
	}
	if _, fill := c.admitLocked(frame(8), false); fill {
		t.Fatal("the first frame past the position after a failed read started a fill (a fill per frame while Redis is down)")
	}
	if p, _ := st.get(""); p != at(8) || st.loose[""] {
		t.Fatalf("after the next frame: position %+v, loose %v; want 8, not loose", p, st.loose[""])
	}
	if _, fill := c.admitLocked(frame(10), false); !fill {
		t.Fatal("a gap once the stream was taken up again started no fill")
	}
}

// A live frame of a new epoch (the stream's Redis lost its history, e.g. a
// replica promoted before it had the old master's last appends) makes the
// node tell the socket recovered:false at the new epoch's start before it
// replays the new epoch, so a client learns of the loss before it sees the
// new epoch's frames; the frame itself is not written twice. A late frame
// of the lost epoch, held meanwhile, goes out as it is (protocol.md §17.6).
func TestNewEpochToldBeforeReplay(t *testing.T) {
	s := startTestNode(t, Config{})
	ctx := context.Background()
	pos, err := s.st.PublishKept(ctx, store.KeptNodeMessage{Node: "elsewhere",
		Header: wire.NodeMsg{Kind: wire.KindSend, To: []string{"c1"}, ID: "m"},
		Frame:  []byte(`{"type":"message","data":"new"}`), Keep: []store.Keep{{Size: 10, TTL: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	now := pos[0][0] // the stream's epoch in Redis, offset 1
	c, out := pipeConn(t, s, "c1")
	st := &c.hist
	st.mu.Lock()
	st.set("", wire.Position{Epoch: "e1", Offset: 5})
	st.sentFirst = true
	st.mu.Unlock()
	live := wire.AppendPosition([]byte(`{"type":"message","data":"new"}`), now)
	c.deliver("", now, outFrame{b: live})
	c.deliver("", wire.Position{Epoch: "e1", Offset: 6}, outFrame{b: []byte(`{"type":"message","data":"late"}`)})
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(out.String(), `"data":"late"`) {
			return fmt.Errorf("the held frames are not out yet: %q", out.String())
		}
		return nil
	})
	got := out.String()
	told := strings.Index(got, `"recovered":false`)
	replay := strings.Index(got, `"data":"new"`)
	if told < 0 || !strings.Contains(got, `"epoch":"`+now.Epoch+`","offset":0,"recovered":false`) {
		t.Fatalf("the socket was not told recovered:false at the new epoch's start: %q", got)
	}
	if replay < told {
		t.Fatalf("the new epoch's frame went out before the socket was told of the loss: %q", got)
	}
	if n := strings.Count(got, `"data":"new"`); n != 1 {
		t.Fatalf("the new epoch's frame went out %d times: %q", n, got)
	}
	if p, _ := st.get(""); p != now {
		t.Fatalf("position %v, want %v", p, now)
	}
}
