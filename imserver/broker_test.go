package imserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/wire"
)

var bg = context.Background()

// TestThreeNodes exercises every imhelper method on three nodes with 300
// clients spread over them by the hash.
func TestThreeNodes(t *testing.T) {
	c := startCluster(t, 3, nil)
	h := c.helper
	const n = 300
	clients := make([]*wsClient, n)
	perNode := map[string]int{}
	for i := range clients {
		id := fmt.Sprintf("user-%d", i)
		clients[i] = c.connect(id, `{"i":`+strconv.Itoa(i)+`}`)
		if !strings.HasPrefix(clients[i].url, c.node(h.Owner(id)).PublicURL()) {
			t.Fatalf("%s got URL %s, not its owner %s", id, clients[i].url, h.Owner(id))
		}
		perNode[h.Owner(id)]++
	}
	for node, k := range perNode {
		if k < n/3/2 {
			t.Errorf("node %s owns only %d of %d clients", node, k, n)
		}
	}
	waitConnections(t, c, n)

	// Presence.
	online, err := h.GetClientListByOnline(bg)
	if err != nil || len(online) != n {
		t.Fatalf("GetClientListByOnline: %d clients, %v", len(online), err)
	}
	if ok, _ := h.HasOnline(bg, "user-7"); !ok {
		t.Error("HasOnline(user-7) = false")
	}
	if ok, _ := h.HasOnline(bg, "nobody"); ok {
		t.Error("HasOnline(nobody) = true")
	}
	many, err := h.HasOnlineMany(bg, []string{"user-1", "nobody", "user-299"})
	if err != nil || !slices.Equal(many, []bool{true, false, true}) {
		t.Errorf("HasOnlineMany = %v, %v", many, err)
	}

	// SendMessage to one receiver, with receipt and echo to the sender.
	sender := c.connect("alice", "")
	id, err := h.SendMessage(bg, "alice", []string{"user-5", "ghost"}, map[string]string{"text": "hi"}, imhelper.WithReceipt(), imhelper.WithEcho())
	if err != nil {
		t.Fatal(err)
	}
	f := clients[5].next(t)
	if f.Type != "message" || f.ID != id || f.From != "alice" || string(f.Data) != `{"text":"hi"}` {
		t.Fatalf("user-5 got %+v", f)
	}
	got := map[string]string{}
	var echo frame
	for i := 0; i < 3; i++ {
		f := sender.next(t)
		switch f.Type {
		case "receipt":
			var to string
			_ = json.Unmarshal(f.To, &to)
			got[to] = f.Status
			if f.ID != id {
				t.Errorf("receipt id %s, want %s", f.ID, id)
			}
		case "message":
			echo = f
		}
	}
	if got["user-5"] != "delivered" || got["ghost"] != "offline" {
		t.Errorf("receipts = %v", got)
	}
	if echo.ID != id || string(echo.To) != `["user-5","ghost"]` {
		t.Errorf("echo = %+v", echo)
	}
	clients[6].none(t, 100*time.Millisecond)

	// Channels: 30 members spread over the nodes.
	var members []string
	for i := 0; i < 30; i++ {
		members = append(members, fmt.Sprintf("user-%d", i))
	}
	if err := h.JoinChanClients(bg, "room-1", members...); err != nil {
		t.Fatal(err)
	}
	if err := h.JoinChan(bg, "user-0", "room-1", "room-2"); err != nil { // idempotent for room-1
		t.Fatal(err)
	}
	waitSubscribers(t, c, "room-1", len(c.nodes))
	c.barrier(clients[:30]...)
	list, _ := h.GetChanClientList(bg, "room-1")
	if len(list) != 30 {
		t.Errorf("GetChanClientList = %d members", len(list))
	}
	if k, _ := h.GetChanOnline(bg, "room-1"); k != 30 {
		t.Errorf("GetChanOnline = %d", k)
	}
	chans, _ := h.GetChanList(bg)
	if fmt.Sprint(chans) != "[{room-1 30} {room-2 1}]" {
		t.Errorf("GetChanList = %v", chans)
	}
	if cl, _ := h.GetChanListByClientId(bg, "user-0"); fmt.Sprint(cl) != "[room-1 room-2]" {
		t.Errorf("GetChanListByClientId = %v", cl)
	}
	mid, err := h.SendChanMessage(bg, "alice", "room-1", `{"n":1}`)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		f := clients[i].next(t)
		if f.Type != "channel" || f.ID != mid || f.Channel != "room-1" || string(f.Data) != `{"n":1}` {
			t.Fatalf("user-%d got %+v", i, f)
		}
	}
	for i := 30; i < 40; i++ {
		clients[i].none(t, 10*time.Millisecond)
	}

	// LeaveChan.
	if err := h.LeaveChan(bg, "user-1", "room-1"); err != nil {
		t.Fatal(err)
	}
	checkFor(t, 2*time.Second, func() error {
		if k, _ := h.GetChanOnline(bg, "room-1"); k != 29 {
			return fmt.Errorf("online %d", k)
		}
		return nil
	})
	c.barrier(clients[1])
	if _, err := h.SendChanMessage(bg, "alice", "room-1", `2`); err != nil {
		t.Fatal(err)
	}
	clients[0].next(t)
	clients[1].none(t, 200*time.Millisecond)
	for i := 2; i < 30; i++ {
		clients[i].next(t)
	}

	// Broadcast reaches everyone once.
	if _, err := h.SendBroadcastMessage(bg, `{"b":true}`); err != nil {
		t.Fatal(err)
	}
	for _, cl := range append(clients, sender) {
		if f := cl.next(t); f.Type != "broadcast" || string(f.Data) != `{"b":true}` {
			t.Fatalf("%s got %+v", cl.id, f)
		}
	}

	// ForceOffline closes with 4001 and presence follows.
	if err := h.ForceOffline(bg, "user-9"); err != nil {
		t.Fatal(err)
	}
	if code := clients[9].closeCode(t); code != wire.CloseForcedOffline {
		t.Errorf("kick close code = %d", code)
	}
	checkFor(t, 2*time.Second, func() error {
		if ok, _ := h.HasOnline(bg, "user-9"); ok {
			return errors.New("user-9 still online")
		}
		return nil
	})

	// Last socket closing ends membership in Redis.
	clients[0].conn.Close(websocket.StatusNormalClosure, "")
	checkFor(t, 2*time.Second, func() error {
		if cl, _ := h.GetChanListByClientId(bg, "user-0"); len(cl) != 0 {
			return fmt.Errorf("user-0 still in %v", cl)
		}
		if list, _ := h.GetChanList(bg); fmt.Sprint(list) != "[{room-1 27}]" {
			return fmt.Errorf("chan list %v", list)
		}
		return nil
	})
}

func waitSubscribers(t testing.TB, c *cluster, ch string, want int) {
	t.Helper()
	checkFor(t, 3*time.Second, func() error {
		n, err := c.st.ChannelSubscribers(bg, ch)
		if err != nil {
			return err
		}
		if n != int64(want) {
			return fmt.Errorf("%d subscribers of %s, want %d", n, ch, want)
		}
		return nil
	})
}

func publishCalls(t testing.TB, c *cluster) int {
	t.Helper()
	calls, err := c.st.CommandCalls(bg)
	if err != nil {
		t.Fatal(err)
	}
	return int(calls["publish"] + calls["spublish"]) // SPUBLISH on a Cluster
}

// TestSendCostsOnePublishPerNode counts PUBLISH commands in Redis' own
// statistics while one message goes to 1,000 receivers on 3 nodes.
func TestSendCostsOnePublishPerNode(t *testing.T) {
	c := startCluster(t, 3, func(cfg *imserver.Config) { cfg.ProbeInterval = time.Hour })
	const n = 1000
	var ids []string
	var clients []*wsClient
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("r-%d", i)
		ids = append(ids, id)
		clients = append(clients, c.connect(id, ""))
	}
	waitConnections(t, c, n)
	before := publishCalls(t, c)
	msgID, err := c.helper.SendMessage(bg, "boss", ids, `"all hands"`)
	if err != nil {
		t.Fatal(err)
	}
	for _, cl := range clients {
		if f := cl.next(t); f.ID != msgID {
			t.Fatalf("%s got %+v", cl.id, f)
		}
	}
	if d := publishCalls(t, c) - before; d != 3 {
		t.Errorf("send to %d receivers on 3 nodes cost %d PUBLISH, want 3", n, d)
	} else {
		t.Logf("send to %d receivers on 3 nodes: %d PUBLISH", n, d)
	}
	before = publishCalls(t, c)
	if err := c.helper.JoinChanClients(bg, "all", ids[:100]...); err != nil {
		t.Fatal(err)
	}
	waitSubscribers(t, c, "all", 3)
	c.barrier(clients[:100]...)
	before = publishCalls(t, c)
	if _, err := c.helper.SendChanMessage(bg, "boss", "all", `1`); err != nil {
		t.Fatal(err)
	}
	for _, cl := range clients[:100] {
		cl.next(t)
	}
	if d := publishCalls(t, c) - before; d != 1 {
		t.Errorf("channel message cost %d PUBLISH, want 1", d)
	}
}

func waitConnections(t testing.TB, c *cluster, want int) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		total := 0
		for _, nd := range c.nodes {
			total += nd.Connections()
		}
		if total != want {
			return fmt.Errorf("%d sockets, want %d", total, want)
		}
		return nil
	})
}

// TestChannelExactlyOnce checks that a channel message reaches every member
// on every node exactly once, non-members never, and that a node with no
// member is not subscribed.
func TestChannelExactlyOnce(t *testing.T) {
	c := startCluster(t, 3, nil)
	h := c.helper
	// Members only on two of the three nodes.
	nodes := h.Nodes()
	var members, others []*wsClient
	for i := 0; len(members) < 20 || len(others) < 10; i++ {
		id := fmt.Sprintf("m-%d", i)
		switch h.Owner(id) {
		case nodes[0], nodes[1]:
			if len(members) < 20 {
				members = append(members, c.connect(id, ""))
			}
		default:
			if len(others) < 10 {
				others = append(others, c.connect(id, ""))
			}
		}
	}
	for _, m := range members {
		if err := h.JoinChan(bg, m.id, "lobby"); err != nil {
			t.Fatal(err)
		}
	}
	waitSubscribers(t, c, "lobby", 2)
	c.barrier(members...)
	const msgs = 50
	for i := 0; i < msgs; i++ {
		if _, err := h.SendChanMessage(bg, "x", "lobby", strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range members {
		for i := 0; i < msgs; i++ {
			if f := m.next(t); string(f.Data) != strconv.Itoa(i) {
				t.Fatalf("%s: message %d is %s (order or duplicate)", m.id, i, f.Data)
			}
		}
		m.none(t, 10*time.Millisecond)
	}
	for _, o := range others {
		o.none(t, 10*time.Millisecond)
	}
	// Everyone leaves: no node stays subscribed.
	for _, m := range members {
		_ = h.LeaveChan(bg, m.id, "lobby")
	}
	waitSubscribers(t, c, "lobby", 0)
}

// TestMultiSocketClient: one client with three sockets is one online and one
// offline event, and keeps its channels until its last socket closes.
func TestMultiSocketClient(t *testing.T) {
	c := startCluster(t, 2, nil)
	h := c.helper
	var mu sync.Mutex
	var events []string
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	go h.EventBus(ctx, func(e imhelper.Event) {
		mu.Lock()
		events = append(events, e.Type+":"+e.Client+":"+e.Meta)
		mu.Unlock()
	}, func(e imhelper.Event) {
		mu.Lock()
		events = append(events, e.Type+":"+e.Client+":"+e.Reason)
		mu.Unlock()
	})
	checkFor(t, 3*time.Second, func() error {
		if n, _ := c.st.EventSubscribers(bg); n != 1 {
			return errors.New("EventBus not subscribed yet")
		}
		return nil
	})
	s1 := c.connect("multi", "phone")
	s2 := c.connect("multi", "laptop")
	s3 := c.connect("multi", "tablet")
	if err := h.JoinChan(bg, "multi", "r"); err != nil {
		t.Fatal(err)
	}
	waitSubscribers(t, c, "r", 1)
	s1.conn.Close(websocket.StatusNormalClosure, "")
	s2.conn.Close(websocket.StatusNormalClosure, "")
	checkFor(t, 2*time.Second, func() error {
		if n := c.node(h.Owner("multi")).Connections(); n != 1 {
			return fmt.Errorf("%d sockets", n)
		}
		return nil
	})
	if cl, _ := h.GetChanListByClientId(bg, "multi"); fmt.Sprint(cl) != "[r]" {
		t.Fatalf("membership lost before the last socket closed: %v", cl)
	}
	if _, err := h.SendChanMessage(bg, "x", "r", `1`); err != nil {
		t.Fatal(err)
	}
	if f := s3.next(t); f.Type != "channel" {
		t.Fatalf("s3 got %+v", f)
	}
	s3.conn.Close(websocket.StatusNormalClosure, "")
	checkFor(t, 3*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(events) != "[online:multi:phone offline:multi:closed]" {
			return fmt.Errorf("events = %v", events)
		}
		return nil
	})
	if cl, _ := h.GetChanListByClientId(bg, "multi"); len(cl) != 0 {
		t.Errorf("membership kept after last close: %v", cl)
	}
	waitSubscribers(t, c, "r", 0)
}

// TestTokens: a token works once; expired, replayed, forged and foreign
// tokens are refused with the right status before any upgrade.
func TestTokens(t *testing.T) {
	c := startCluster(t, 2, nil)
	h := c.helper
	u, err := h.PrevConnectServer(bg, "tok-user", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dialWS(u); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if _, err := dialWS(u); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("replay: %v, want 401", err)
	}
	// Forged: right shape, never issued; and malformed.
	base := u[:strings.Index(u, "?")]
	if _, err := dialWS(base + "?token=" + wire.NewToken()); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("forged: %v, want 401", err)
	}
	if _, err := dialWS(base + "?token=%00'--"); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("malformed: %v, want 401", err)
	}
	// Foreign: a token for one node presented to the other, which must not
	// consume it.
	u, _ = h.PrevConnectServer(bg, "tok-user2", "")
	owner := c.node(h.Owner("tok-user2"))
	var other string
	for _, n := range c.nodes {
		if n != owner {
			other = n.PublicURL()
		}
	}
	tok := u[strings.Index(u, "?"):]
	if _, err := dialWS(other + tok); statusOf(err) != http.StatusMisdirectedRequest {
		t.Errorf("foreign: %v, want 421", err)
	}
	if _, err := dialWS(u); err != nil {
		t.Errorf("the owner refused a token that a foreign node saw: %v", err)
	}
	// Expired.
	short, err := imhelper.New(bg, c.helperOptions(imhelper.Options{TokenTTL: 50 * time.Millisecond}))
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	u, _ = short.PrevConnectServer(bg, "tok-user3", "")
	time.Sleep(150 * time.Millisecond)
	if _, err := dialWS(u); statusOf(err) != http.StatusUnauthorized {
		t.Errorf("expired: %v, want 401", err)
	}
	// A refusal is a short JSON body, not an upgrade.
	resp, err := http.Get(strings.Replace(base, "ws://", "http://", 1) + "?token=x")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error, Reason string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUpgradeRequired || body.Error == "" {
		t.Errorf("plain GET: %d %+v", resp.StatusCode, body)
	}
	// Origin not allowed.
	req, _ := http.NewRequest("GET", strings.Replace(base, "ws://", "http://", 1), nil)
	req.Header.Set("Origin", "http://evil.example")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("bad origin: %d, want 403", resp.StatusCode)
	}
}

func TestValidationSentinels(t *testing.T) {
	c := startCluster(t, 1, nil)
	h := c.helper
	cases := []struct {
		name string
		err  error
		want error
	}{
		{"empty id", first(h.PrevConnectServer(bg, "", "")), imhelper.ErrInvalidClientID},
		{"space in id", first(h.PrevConnectServer(bg, "a b", "")), imhelper.ErrInvalidClientID},
		{"long id", first(h.PrevConnectServer(bg, strings.Repeat("x", 129), "")), imhelper.ErrInvalidClientID},
		{"big meta", first(h.PrevConnectServer(bg, "a", strings.Repeat("m", 4097))), imhelper.ErrMetaTooLarge},
		{"bad receiver", first(h.SendMessage(bg, "a", []string{"ok", "bad\n"}, `1`)), imhelper.ErrInvalidClientID},
		{"bad json", first(h.SendMessage(bg, "a", []string{"b"}, `{"x":`)), imhelper.ErrInvalidPayload},
		{"big payload", first(h.SendMessage(bg, "a", []string{"b"}, `"`+strings.Repeat("p", 70000)+`"`)), imhelper.ErrPayloadTooLarge},
		{"bad channel", h.JoinChan(bg, "a", "has space"), imhelper.ErrInvalidChannel},
		{"unmarshalable", first(h.SendBroadcastMessage(bg, func() {})), imhelper.ErrInvalidPayload},
	}
	for _, tc := range cases {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
		}
	}
}

func first[T any](_ T, err error) error { return err }

// TestConsumeEventsSurvivesRestart: a consumer stopped while 100 clients go
// online and offline receives all 200 events after it restarts.
func TestConsumeEventsSurvivesRestart(t *testing.T) {
	c := startCluster(t, 2, nil)
	h := c.helper
	var mu sync.Mutex
	seen := map[string]int{}
	handler := func(_ context.Context, e imhelper.Event) error {
		mu.Lock()
		seen[e.Type+":"+e.Client]++
		mu.Unlock()
		return nil
	}
	// First run creates the group, then stops.
	ctx, cancel := context.WithCancel(bg)
	done := make(chan struct{})
	go func() { _ = h.ConsumeEvents(ctx, "svc", "worker-1", handler); close(done) }()
	checkFor(t, 3*time.Second, func() error {
		if groups, _ := c.st.EventGroups(bg); !slices.Contains(groups, "svc") {
			return errors.New("group not created")
		}
		return nil
	})
	cancel()
	<-done

	for i := 0; i < 100; i++ {
		w := c.connect(fmt.Sprintf("ev-%d", i), "")
		w.conn.Close(websocket.StatusNormalClosure, "")
	}
	checkFor(t, 5*time.Second, func() error {
		if n, _ := h.OnlineCount(bg); n != 0 {
			return fmt.Errorf("%d still online", n)
		}
		return nil
	})
	mu.Lock()
	if len(seen) != 0 {
		t.Fatalf("stopped consumer saw %d events", len(seen))
	}
	mu.Unlock()

	ctx, cancel = context.WithCancel(bg)
	defer cancel()
	go h.ConsumeEvents(ctx, "svc", "worker-1", handler)
	checkFor(t, 10*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) != 200 {
			return fmt.Errorf("%d distinct events", len(seen))
		}
		for k, v := range seen {
			if v != 1 {
				return fmt.Errorf("%s seen %d times", k, v)
			}
		}
		return nil
	})
}
