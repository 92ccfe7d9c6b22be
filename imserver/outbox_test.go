package imserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// gatedPublisher holds every publish until the gate opens, as a Redis that
// answers slowly would, then publishes for real.
type gatedPublisher struct {
	store.Publisher
	entered chan struct{} // a publish is waiting at the gate
	gate    chan struct{}
	done    atomic.Int64 // publishes that went through
}

func (g *gatedPublisher) PublishNodes(ctx context.Context, msgs ...store.NodeMessage) error {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	<-g.gate
	err := g.Publisher.PublishNodes(ctx, msgs...)
	if err == nil {
		g.done.Add(int64(len(msgs)))
	}
	return err
}

// TestReceiptsNeverBlockTheWorker: a send with receipts for a sender on
// another node is handled on a pub/sub worker; while Redis holds the
// receipt's PUBLISH, the worker must already be free for the next message.
func TestReceiptsNeverBlockTheWorker(t *testing.T) {
	rc, err := store.Dial(redistest.Start(t).URL())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	pub := &gatedPublisher{Publisher: store.NewRedis(rc, store.Options{}), entered: make(chan struct{}, 1), gate: make(chan struct{})}
	s := benchServer()
	s.cfg.NodeID = "n1"
	s.nodes = []string{"n1", "n2"}
	s.st = nil // nothing on this path may reach Redis except through the outbox
	s.outbox = newOutbox(pub, s.metrics, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx, s.cancel = ctx, cancel
	s.startLoop(s.outbox.run)
	defer s.stopGoroutines()
	defer cancel()
	benchConns(s, 1, "") // client-0 is here
	sender := ""
	for i := 0; sender == ""; i++ { // a sender owned by the other node
		if id := "alice-" + strconv.Itoa(i); wire.Owner(id, s.nodes) == "n2" {
			sender = id
		}
	}
	f := wire.MessageFrame("01J", sender, nil, 1, []byte(`1`))
	msg := wire.EncodeNodeMsg(wire.NodeMsg{Kind: wire.KindSend, ID: "01J", To: []string{"client-0"}, Receipt: sender}, f)

	handled := make(chan struct{})
	go func() {
		s.route(store.Message{Kind: store.ToNode, Payload: string(msg)})
		s.route(store.Message{Kind: store.ToNode, Payload: string(msg)})
		close(handled)
	}()
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker is stuck behind a receipt's PUBLISH")
	}
	<-pub.entered // the receipt did reach the publisher, and waits there
	close(pub.gate)
	waitFor(t, 10*time.Second, func() error {
		if n := pub.done.Load(); n != 2 {
			return fmt.Errorf("published %d of 2 receipts", n)
		}
		return nil
	})
}
