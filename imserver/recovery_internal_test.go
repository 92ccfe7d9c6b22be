package imserver

import (
	"errors"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imbroker/imbroker/internal/wire"
)

// A fill whose history read fails leaves the socket's position as a floor:
// the socket is told recovered:false, a copy at or before the position (a
// publish retried in a failover, a replay's live twin) is still dropped,
// the next frame past it goes out without a fill, and once it has, a gap
// starts a fill again. Forgetting the position instead let the failover
// test's client get a message twice.
func TestFailedFillKeepsDuplicateFloor(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	go func() { // the peer reads whatever the socket writes
		buf := make([]byte, 4096)
		for {
			if _, err := b.Read(buf); err != nil {
				return
			}
		}
	}()
	s := &Server{cfg: Config{MaxQueueBytes: 1 << 20}, metrics: newMetrics(), hub: newHub()}
	c := &conn{srv: s, w: s.newSockWriter(a), cl: &client{id: "c1"}}
	c.w.onSlow, c.w.onBroken = func() {}, func() {}
	c.w.start()
	defer c.w.Close()

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
