package imhelper_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
)

// A business service authorises a browser and pushes to it. The URL is
// handed out by your API to a user it authenticated; it works once, on the
// node that owns the user.
func ExampleClient_PrevConnectServer() {
	im, stop := startEmbedded()
	defer stop()
	ctx := context.Background()

	url, err := im.PrevConnectServer(ctx, "alice", `{"device":"web"}`)
	check(err)

	// The browser opens the URL; here coder/websocket plays the browser.
	ws, _, err := websocket.Dial(ctx, url, nil)
	check(err)
	defer ws.CloseNow()
	// The node's first frame says the socket is live: from here on a
	// message to alice reaches it (and one sent since the URL was issued
	// came just before this frame).
	printFrame(ws)

	_, err = im.SendMessage(ctx, "bob", []string{"alice"}, map[string]string{"text": "hi"})
	check(err)
	printFrame(ws)
	// Output:
	// {"type":"recovered","first":true,"streams":[{"channel":"","recovered":true}]}
	// {"type":"message","from":"bob","data":{"text":"hi"}}
}

// With WithReceipt the sender's sockets get one receipt per receiver:
// delivered if the receiver had a socket, offline otherwise.
func ExampleClient_SendMessage() {
	im, stop := startEmbedded()
	defer stop()
	alice, bob := connect(im, "alice"), connect(im, "bob")
	defer alice.CloseNow()
	defer bob.CloseNow()

	// carol has no socket.
	_, err := im.SendMessage(context.Background(), "alice", []string{"bob", "carol"},
		map[string]string{"text": "hi"}, imhelper.WithReceipt())
	check(err)

	printFrame(bob.Conn)
	printFrame(alice.Conn)
	printFrame(alice.Conn)
	// Output:
	// {"type":"message","from":"alice","data":{"text":"hi"}}
	// {"type":"receipt","to":"bob","status":"delivered"}
	// {"type":"receipt","to":"carol","status":"offline"}
}

// A batch of different messages to different clients: one PUBLISH per
// owning node for the whole batch, each receiver getting its messages in
// batch order, and options per message.
func ExampleClient_SendMessages() {
	im, stop := startEmbedded()
	defer stop()
	alice, bob := connect(im, "alice"), connect(im, "bob")
	defer alice.CloseNow()
	defer bob.CloseNow()

	sent, err := im.SendMessages(context.Background(), []imhelper.Outgoing{
		{From: "feed", To: []string{"alice"}, Payload: map[string]int{"unread": 3}},
		{From: "feed", To: []string{"bob"}, Payload: map[string]int{"unread": 1}},
		{From: "feed", To: []string{"alice", "bob"}, Payload: `{"text":"maintenance at 22:00"}`},
		{From: "alice", To: []string{"bob"}, Payload: `{"text":"see you"}`, Opts: []imhelper.SendOption{imhelper.WithReceipt()}},
	})
	check(err)
	fmt.Println(len(sent), "messages")

	printFrame(alice.Conn)
	printFrame(alice.Conn)
	printFrame(bob.Conn)
	printFrame(bob.Conn)
	printFrame(bob.Conn)
	printFrame(alice.Conn)

	// An invalid message fails the whole batch; nothing is sent.
	_, err = im.SendMessages(context.Background(), []imhelper.Outgoing{
		{From: "feed", To: []string{"alice"}, Payload: `1`},
		{From: "feed", To: []string{"not valid"}, Payload: `2`},
	})
	var me *imhelper.MessageError
	fmt.Println(errors.As(err, &me), me.Index, errors.Is(err, imhelper.ErrInvalidClientID))
	// Output:
	// 4 messages
	// {"type":"message","from":"feed","data":{"unread":3}}
	// {"type":"message","from":"feed","data":{"text":"maintenance at 22:00"}}
	// {"type":"message","from":"feed","data":{"unread":1}}
	// {"type":"message","from":"feed","data":{"text":"maintenance at 22:00"}}
	// {"type":"message","from":"alice","data":{"text":"see you"}}
	// {"type":"receipt","to":"bob","status":"delivered"}
	// true 1 true
}

// A channel message reaches every member's sockets with one PUBLISH.
func ExampleClient_SendChanMessage() {
	im, stop := startEmbedded()
	defer stop()
	ctx := context.Background()
	bob, carol := connect(im, "bob"), connect(im, "carol")
	defer bob.CloseNow()
	defer carol.CloseNow()

	check(im.JoinChan(ctx, "bob", "room-1"))
	check(im.JoinChan(ctx, "carol", "room-1"))
	members, err := im.GetChanClientList(ctx, "room-1")
	check(err)
	slices.Sort(members)
	fmt.Println(members)

	waitJoined(im, "room-1", bob, carol)
	_, err = im.SendChanMessage(ctx, "alice", "room-1", `{"text":"hello room"}`)
	check(err)
	printFrame(bob.Conn)
	printFrame(carol.Conn)
	// Output:
	// [bob carol]
	// {"type":"channel","from":"alice","channel":"room-1","data":{"text":"hello room"}}
	// {"type":"channel","from":"alice","channel":"room-1","data":{"text":"hello room"}}
}

// A client is online while it has at least one socket on any node.
func ExampleClient_HasOnline() {
	im, stop := startEmbedded()
	defer stop()
	ctx := context.Background()
	defer connect(im, "alice").CloseNow()

	alice, err := im.HasOnline(ctx, "alice")
	check(err)
	bob, err := im.HasOnline(ctx, "bob")
	check(err)
	fmt.Println(alice, bob)
	// Output: true false
}

// OnlineClients streams the online clients in batches, so a million of them
// never make one giant reply; GetClientListByOnline returns them as one
// slice. Neither has an order.
func ExampleClient_OnlineClients() {
	im, stop := startEmbedded()
	defer stop()
	ctx := context.Background()
	for _, id := range []string{"carol", "alice", "bob"} {
		defer connect(im, id).CloseNow()
	}

	var online []string
	for id, err := range im.OnlineClients(ctx) {
		check(err)
		online = append(online, id)
	}
	slices.Sort(online)
	fmt.Println(online)
	// Output: [alice bob carol]
}

// Events that must not be lost are read from the event stream with a
// consumer group; each is acknowledged once the handler returns nil, and a
// restarted consumer first gets what it left unacknowledged.
func ExampleClient_ConsumeEvents() {
	im, stop := startEmbedded()
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan imhelper.Event)
	consumed := make(chan error)
	go func() {
		consumed <- im.ConsumeEvents(ctx, "chat-service", "instance-1", func(ctx context.Context, e imhelper.Event) error {
			select {
			case events <- e:
				return nil // acknowledged
			case <-ctx.Done():
				return ctx.Err() // left pending: handled again on the next run
			}
		}, imhelper.ConsumeOptions{FromStart: true}) // a new group reads the stream from its start
	}()

	alice := connect(im, "alice")
	check(alice.Close(websocket.StatusNormalClosure, "signed out"))
	for range 2 {
		switch e := <-events; e.Type {
		case "online":
			fmt.Println(e.Client, "is online")
		case "offline":
			fmt.Println(e.Client, "is offline:", e.Reason)
		}
	}
	cancel()
	fmt.Println(<-consumed)
	// Output:
	// alice is online
	// alice is offline: closed
	// context canceled
}

// startEmbedded starts a whole broker in this process, as webapi-example's
// embedded mode does: an in-memory Redis-protocol server (miniredis), one
// imserver node and a Client. stop shuts all of it down.
func startEmbedded() (im *imhelper.Client, stop func()) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	mr, err := miniredis.Run()
	check(err)
	rc, err := imhelper.DialEmbeddedRedis(mr.Addr())
	check(err)
	// No offline grace: an example's sockets go at its end, and its node
	// right after them (a real node keeps a client's presence for 10s).
	node, err := imserver.New(imserver.Config{Listen: "127.0.0.1:0", DrainWindow: 100 * time.Millisecond, OfflineGrace: -1}, rc, quiet)
	check(err)
	check(node.Start())
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	check(node.WaitReady(ctx))
	im, err = imhelper.New(ctx, imhelper.Options{Redis: rc, Logger: quiet})
	check(err)
	return im, func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		check(node.Shutdown(ctx))
		im.Close()
		rc.Close()
		mr.Close()
	}
}

// waitLimit bounds every wait of the examples: far more than anything
// takes, so that only a broken broker reaches it on a loaded machine.
const waitLimit = 30 * time.Second

// browser is a connected WebSocket client of the examples.
type browser struct {
	*websocket.Conn
	id string
}

// connect does what a browser of clientID does: it gets a URL (from your
// API, which calls PrevConnectServer) and opens it.
func connect(im *imhelper.Client, clientID string) *browser {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	url, err := im.PrevConnectServer(ctx, clientID, "")
	check(err)
	ws, _, err := websocket.Dial(ctx, url, nil)
	check(err)
	// The handshake completes a moment before the node has attached the
	// socket; its first frame (recovered) says it has.
	_, b, err := ws.Read(ctx)
	check(err)
	if !strings.HasPrefix(string(b), `{"type":"recovered","first":true`) {
		panic("first frame: " + string(b))
	}
	return &browser{Conn: ws, id: clientID}
}

// waitJoined waits until the node has applied the joins of members to ch
// and subscribed to the channel: JoinChan returns once Redis holds the
// membership, and the node follows a moment later.
func waitJoined(im *imhelper.Client, ch string, members ...*browser) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	// The node handles what is published to it in order, so once a direct
	// message to a member has arrived, the joins sent before it are applied.
	for _, b := range members {
		_, err := im.SendMessage(ctx, "example", []string{b.id}, `"after the join"`)
		check(err)
		_, _, err = b.Read(ctx)
		check(err)
	}
	// Subscribing to the channel's topic (docs/protocol.md) runs on its own.
	rc := im.Redis()
	waitFor("node subscribed to "+ch, func(ctx context.Context) (bool, error) {
		subs, err := rc.Do(ctx, rc.B().PubsubNumsub().Channel("im:c:"+ch).Build()).AsIntMap()
		return subs["im:c:"+ch] > 0, err
	})
}

// waitFor polls cond until it is true, failing after waitLimit.
func waitFor(what string, cond func(context.Context) (bool, error)) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for {
		ok, err := cond(ctx)
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			panic(fmt.Sprintf("waiting for %s: %v (last error: %v)", what, ctx.Err(), err))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// printFrame reads the next frame and prints it without its id and ts,
// which differ on every run.
func printFrame(ws *websocket.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	_, b, err := ws.Read(ctx)
	check(err)
	// Positions (epoch, offset) differ on every run too.
	type stream struct {
		Channel   string `json:"channel"`
		Recovered bool   `json:"recovered"`
	}
	var f struct {
		Type    string          `json:"type"`
		First   bool            `json:"first,omitempty"`
		Streams []stream        `json:"streams,omitempty"`
		From    string          `json:"from,omitempty"`
		To      json.RawMessage `json:"to,omitempty"`
		Channel string          `json:"channel,omitempty"`
		Data    json.RawMessage `json:"data,omitempty"`
		Status  string          `json:"status,omitempty"`
	}
	check(json.Unmarshal(b, &f))
	out, err := json.Marshal(f)
	check(err)
	fmt.Println(string(out))
}

func check(err error) {
	if err != nil {
		panic(err)
	}
}
