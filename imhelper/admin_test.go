package imhelper_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/testnode"
	"github.com/imbroker/imbroker/internal/wire"
)

// NodeInfos reads a real node's lease and client count, lists a draining
// node (which the routing view leaves out) and leaves out a node whose
// lease lapsed.
func TestNodeInfos(t *testing.T) {
	ctx := context.Background()
	r := redistest.Start(t)
	const leaseTTL = 5 * time.Second
	srv := testnode.Start(t, imserver.Config{NodeID: "node-a", RedisURL: r.URL(),
		LeaseTTL: leaseTTL, ProbeInterval: 500 * time.Millisecond})
	// Each wait gets its own bound (for a broken build, not a margin): one
	// context for all of them ran out on a loaded machine.
	wait := func() context.Context {
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		t.Cleanup(cancel)
		return wctx
	}
	if err := srv.WaitReady(wait()); err != nil {
		t.Fatal(err)
	}

	// A draining node and a dead one, written the way nodes write them.
	rc, err := store.Dial(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	st := store.NewRedis(rc, store.Options{})
	started := time.Now().Add(-time.Minute).UnixMilli()
	if _, err := st.WriteLease(ctx, wire.NodeInfo{ID: "node-b", URL: "ws://b.invalid/ws", Started: started, Draining: true, Proto: 1}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := st.WriteLease(ctx, wire.NodeInfo{ID: "node-c", URL: "ws://c.invalid/ws", Started: started}, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	// Wait until node-c's lease is really gone, so that no view below
	// routes a client to it.
	testnode.WaitFor(t, 10*time.Second, func() error {
		if n, err := rc.Do(ctx, rc.B().Exists().Key("im:node:node-c").Build()).AsInt64(); err != nil || n != 0 {
			return fmt.Errorf("node-c's lease still there (%d, %v)", n, err)
		}
		return nil
	})

	im, err := imhelper.New(ctx, imhelper.Options{RedisURL: r.URL(), Logger: testnode.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	for _, id := range []string{"alice", "bob"} {
		u, err := im.PrevConnectServer(ctx, id, "")
		if err != nil {
			t.Fatal(err)
		}
		conn, _, err := websocket.Dial(wait(), u, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.CloseNow()
	}
	// The second socket of alice counts once.
	u, err := im.PrevConnectServer(ctx, "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := websocket.Dial(wait(), u, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer again.CloseNow()

	var got []imhelper.NodeStatus
	deadline := time.Now().Add(10 * time.Second)
	for {
		if got, err = im.NodeInfos(ctx); err != nil {
			t.Fatal(err)
		}
		if len(got) == 2 && got[0].Clients == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(got) != 2 {
		t.Fatalf("NodeInfos = %+v, want node-a and node-b", got)
	}
	a, b := got[0], got[1]
	if a.ID != "node-a" || a.URL != srv.PublicURL() || a.Draining || a.Clients != 2 || a.Proto != wire.NodeMsgVersion {
		t.Errorf("node-a = %+v, want url %s, not draining, 2 clients", a, srv.PublicURL())
	}
	if a.LeaseLeft <= 0 || a.LeaseLeft > leaseTTL {
		t.Errorf("node-a lease left %v, want within (0, %v]", a.LeaseLeft, leaseTTL)
	}
	if a.Started.After(time.Now()) || time.Since(a.Started) > time.Minute {
		t.Errorf("node-a started %v", a.Started)
	}
	if b.ID != "node-b" || !b.Draining || b.Clients != 0 || b.LeaseLeft <= 50*time.Minute || !b.Started.Equal(time.UnixMilli(started)) {
		t.Errorf("node-b = %+v, want draining with about an hour of lease", b)
	}
	if fmt.Sprint(im.Nodes()) != "[node-a]" {
		t.Errorf("routing view %v, want only node-a", im.Nodes())
	}

	if node, err := im.OnlineNode(ctx, "bob"); node != "node-a" || err != nil {
		t.Errorf("OnlineNode(bob) = %q, %v", node, err)
	}
	if node, err := im.OnlineNode(ctx, "nobody"); node != "" || err != nil {
		t.Errorf("OnlineNode(nobody) = %q, %v", node, err)
	}

	if err := im.JoinChan(ctx, "alice", "room-1", "room-2"); err != nil {
		t.Fatal(err)
	}
	if err := im.JoinChan(ctx, "carol", "room-1"); err != nil { // offline members count too
		t.Fatal(err)
	}
	counts, err := im.ChanMemberCounts(ctx, []string{"room-1", "room-2", "empty"})
	if err != nil || fmt.Sprint(counts) != "[2 1 0]" {
		t.Errorf("ChanMemberCounts = %v, %v; want [2 1 0]", counts, err)
	}
	if _, err := im.ChanMemberCounts(ctx, []string{"bad name"}); err == nil {
		t.Error("ChanMemberCounts accepted an invalid channel name")
	}
}

func TestValidateRedisURL(t *testing.T) {
	if err := imhelper.ValidateRedisURL("redis://127.0.0.1:6379/0"); err != nil {
		t.Errorf("valid URL refused: %v", err)
	}
	if err := imhelper.ValidateRedisURL("http://127.0.0.1:6379"); err == nil {
		t.Error("an http:// URL was accepted")
	}
}
