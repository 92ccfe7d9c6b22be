package imserver_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/wire"
)

func TestLimits(t *testing.T) {
	t.Run("per client", func(t *testing.T) {
		c := startCluster(t, 1, func(cfg *imserver.Config) { cfg.MaxConnsPerClient = 2 })
		c.connect("lim", "")
		c.connect("lim", "")
		u, _ := c.helper.PrevConnectServer(bg, "lim", "")
		if _, err := dialWS(u); statusOf(err) != http.StatusTooManyRequests {
			t.Errorf("third socket: %v, want 429", err)
		}
		c.connect("other", "") // other clients are unaffected
	})
	t.Run("per node", func(t *testing.T) {
		c := startCluster(t, 1, func(cfg *imserver.Config) { cfg.MaxConns = 3 })
		for i := 0; i < 3; i++ {
			c.connect(fmt.Sprintf("n-%d", i), "")
		}
		u, _ := c.helper.PrevConnectServer(bg, "n-4", "")
		if _, err := dialWS(u); statusOf(err) != http.StatusServiceUnavailable {
			t.Errorf("4th socket: %v, want 503", err)
		}
	})
	t.Run("connect rate", func(t *testing.T) {
		c := startCluster(t, 1, func(cfg *imserver.Config) { cfg.ConnectRate = 5 })
		refused := 0
		for i := 0; i < 12; i++ {
			u, _ := c.helper.PrevConnectServer(bg, fmt.Sprintf("r-%d", i), "")
			w, err := dialWS(u)
			if statusOf(err) == http.StatusTooManyRequests {
				refused++
			} else if err != nil {
				t.Fatal(err)
			} else {
				defer w.conn.CloseNow()
			}
		}
		if refused == 0 || refused > 8 {
			t.Errorf("%d of 12 rapid connects refused at 5/s", refused)
		}
	})
	t.Run("frame too big", func(t *testing.T) {
		c := startCluster(t, 1, nil)
		w := c.connect("big", "")
		if err := w.conn.Write(bg, websocket.MessageText, []byte(strings.Repeat("x", 5000))); err != nil {
			t.Fatal(err)
		}
		if code := w.closeCode(t); code != websocket.StatusMessageTooBig {
			t.Errorf("close code %d, want 1009", code)
		}
		// small uplink frames are read and discarded
		w2 := c.connect("small", "")
		if err := w2.conn.Write(bg, websocket.MessageText, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		if _, err := c.helper.SendMessage(bg, "x", []string{"small"}, `1`); err != nil {
			t.Fatal(err)
		}
		w2.next(t)
	})
}

// TestMalformedRedisMessages: garbage on every channel a node listens to is
// logged and counted; the node goes on delivering.
func TestMalformedRedisMessages(t *testing.T) {
	c := startCluster(t, 1, nil)
	node := c.nodes[0]
	w := c.connect("victim", "")
	if err := c.helper.JoinChan(bg, "victim", "room"); err != nil {
		t.Fatal(err)
	}
	waitSubscribers(t, c, "room", 1)
	for _, m := range [][2]string{
		{"im:n:" + node.NodeID(), "not json"},
		{"im:n:" + node.NodeID(), `{"k":"send","to":["victim"]}` + "\n\xff\xfe"},
		{"im:n:" + node.NodeID(), `{"k":"explode"}`},
		{"im:c:room", "\x00\x01"},
		{"im:broadcast", ""},
	} {
		rc := c.helper.Redis()
		if err := rc.Do(bg, rc.B().Publish().Channel(m[0]).Message(m[1]).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.helper.SendMessage(bg, "x", []string{"victim"}, `"still here"`); err != nil {
		t.Fatal(err)
	}
	if f := w.next(t); string(f.Data) != `"still here"` {
		t.Fatalf("got %+v", f)
	}
	checkFor(t, 2*time.Second, func() error {
		_, body := getJSON(t, "http://"+node.AdminAddr().String()+"/metrics")
		if v := metricValue(body, "im_malformed_messages_total"); v != 5 {
			return fmt.Errorf("im_malformed_messages_total = %v, want 5", v)
		}
		return nil
	})
}

// dialStalled opens a socket that never reads, with a tiny receive buffer,
// as a client on a stalled network would.
func dialStalled(u string) (*websocket.Conn, error) {
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	ctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: hc})
	return conn, err
}

// stall connects client id with a socket that never reads.
func (c *cluster) stall(id string) {
	c.t.Helper()
	u, err := c.helper.PrevConnectServer(bg, id, "")
	if err != nil {
		c.t.Fatal(err)
	}
	conn, err := dialStalled(u)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { conn.CloseNow() })
}

// TestSlowConsumers: clients that stop reading are closed with the
// slow-consumer code once their queue bound is passed; the others receive
// every message in order.
//
// How much a stalled socket absorbs before its queue overflows depends on
// the kernel's buffer autotuning, so the test does not guess a message
// count: it publishes until every stalled socket has been cut, up to a
// bound far past any kernel buffer (3,000 × 16 KiB = 48 MiB per socket).
func TestSlowConsumers(t *testing.T) {
	// No heartbeat timeouts: a stalled socket never answers a ping, and a
	// 4004 would take it before its queue overflows. (A long ping interval
	// alone is not enough: each socket's first ping falls at a random
	// moment within it.)
	c := startCluster(t, 1, func(cfg *imserver.Config) {
		cfg.MaxQueueBytes = 256 << 10
		cfg.PingInterval = time.Hour
		cfg.PongTimeout = time.Hour
		// Nor a self-probe: on a loaded machine a probe that takes longer
		// than its grace (3 × 500 ms in tests) makes the node resubscribe,
		// and a broadcast (never kept) published meanwhile is lost to
		// every reader; this test is about queue bounds, not probes.
		cfg.ProbeInterval = time.Hour
	})
	node := c.nodes[0]
	const stalled, readers, maxMsgs = 20, 50, 3000
	for i := 0; i < stalled; i++ {
		c.stall(fmt.Sprintf("stall-%d", i))
	}
	var ok []*wsClient
	for i := 0; i < readers; i++ {
		ok = append(ok, c.connect(fmt.Sprintf("fast-%d", i), ""))
	}
	admin := "http://" + node.AdminAddr().String() + "/metrics"
	slowCloses := func() float64 {
		_, body := getJSON(t, admin)
		return metricValue(body, "im_slow_consumer_closes_total")
	}
	// Lockstep: each message is published once every reader has the one
	// before, so the readers never fall behind, however loaded the machine;
	// the stalled sockets fall further behind with every message.
	payload := `"` + strings.Repeat("p", 16<<10) + `"`
	sent := 0
	for ; sent < maxMsgs; sent++ {
		if sent%25 == 0 && slowCloses() == stalled {
			break
		}
		if _, err := c.helper.SendBroadcastMessage(bg, `{"seq":`+strconv.Itoa(sent)+`,"pad":`+payload+`}`); err != nil {
			t.Fatal(err)
		}
		for _, w := range ok {
			if f := w.next(t); !strings.HasPrefix(string(f.Data), `{"seq":`+strconv.Itoa(sent)+`,`) {
				t.Fatalf("%s: message %d out of order or lost", w.id, sent)
			}
		}
	}
	if got := slowCloses(); got != stalled {
		_, body := getJSON(t, admin)
		var diag []string
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "im_closes_total") || strings.HasPrefix(line, "im_frames_dropped") || strings.HasPrefix(line, "im_connections") {
				diag = append(diag, line)
			}
		}
		for i := 0; i < stalled; i++ {
			if ok, _ := c.helper.HasOnline(bg, fmt.Sprintf("stall-%d", i)); ok {
				diag = append(diag, fmt.Sprintf("stall-%d online", i))
			}
		}
		t.Fatalf("after %d messages of 16 KiB, im_slow_consumer_closes_total = %v, want %d; %s", sent, got, stalled, strings.Join(diag, "; "))
	}
	t.Logf("all %d stalled sockets cut after %d messages", stalled, sent)
	if node.Connections() != readers {
		t.Fatalf("%d sockets open, want %d", node.Connections(), readers)
	}
	checkFor(t, 10*time.Second, func() error {
		for i := 0; i < stalled; i++ {
			if ok, _ := c.helper.HasOnline(bg, fmt.Sprintf("stall-%d", i)); ok {
				return fmt.Errorf("stall-%d still online", i)
			}
		}
		return nil
	})
}

// TestHeartbeatTimeout: a peer that never answers pings is closed, with
// reason timeout.
func TestHeartbeatTimeout(t *testing.T) {
	c := startCluster(t, 1, func(cfg *imserver.Config) {
		cfg.PingInterval = 300 * time.Millisecond
		// Long enough that the answering client's pong arrives in time on
		// a loaded box; the deaf one misses it whatever its length.
		cfg.PongTimeout = 2 * time.Second
	})
	node := c.nodes[0]
	c.stall("deaf") // never reads, so never answers a ping
	alive := c.connect("alive", "")
	// ping due within ~1 s, pong timeout, then at most 2 s of close handshake
	checkFor(t, 8*time.Second, func() error {
		_, body := getJSON(t, "http://"+node.AdminAddr().String()+"/metrics")
		if v := metricValue(body, `im_closes_total{reason="timeout"}`); v != 1 {
			return fmt.Errorf("timeout closes = %v", v)
		}
		return nil
	})
	// The close is counted when it starts; presence follows once the
	// socket is detached.
	checkFor(t, 8*time.Second, func() error {
		if ok, err := c.helper.HasOnline(bg, "deaf"); ok || err != nil {
			return fmt.Errorf("deaf client still online (%v)", err)
		}
		return nil
	})
	select {
	case <-alive.done:
		t.Error("a client that answers pings was closed")
	default:
	}
}

// TestTwoNodesOneClient: a client holding sockets on two nodes at once (a
// stale token) stays online, in its channels, when the socket on the node
// named in its presence entry closes.
func TestTwoNodesOneClient(t *testing.T) {
	c := startCluster(t, 2, func(cfg *imserver.Config) { cfg.MoveWindow = time.Hour })
	owner := c.node(c.helper.Owner("dual"))
	var other *imserver.Server
	for _, n := range c.nodes {
		if n != owner {
			other = n
		}
	}
	first := c.connect("dual", "")
	if err := c.helper.JoinChan(bg, "dual", "r"); err != nil {
		t.Fatal(err)
	}
	// A token for the other node, as a stale view would have issued.
	tok := wire.NewToken()
	rec := fmt.Sprintf(`{"node":%q,"client":"dual","iat":1}`, other.NodeID())
	rc := c.helper.Redis()
	if err := rc.Do(bg, rc.B().Set().Key("im:token:"+tok).Value(rec).Ex(30*time.Second).Build()).Error(); err != nil {
		t.Fatal(err)
	}
	second, err := dialWS(other.PublicURL() + "?token=" + tok)
	if err != nil {
		t.Fatal(err)
	}
	checkFor(t, 3*time.Second, func() error {
		out, _ := c.redis.Exec("HGET", "im:online", "dual")
		if strings.TrimSpace(out) != other.NodeID() {
			return fmt.Errorf("presence names %q", out)
		}
		return nil
	})
	second.conn.Close(websocket.StatusNormalClosure, "")
	checkFor(t, 3*time.Second, func() error {
		out, _ := c.redis.Exec("HGET", "im:online", "dual")
		if strings.TrimSpace(out) != owner.NodeID() {
			return fmt.Errorf("presence names %q, want the node that still holds a socket", out)
		}
		return nil
	})
	if cl, _ := c.helper.GetChanListByClientId(bg, "dual"); fmt.Sprint(cl) != "[r]" {
		t.Errorf("channels lost while a socket is still open: %v", cl)
	}
	if _, err := c.helper.SendMessage(bg, "x", []string{"dual"}, `1`); err != nil {
		t.Fatal(err)
	}
	first.next(t)
}

// TestForceOfflineEverySocket: a client holds a socket on a node that no
// longer owns it (a token issued before a node joined, used after) and,
// opened later, one on its owner, so presence names the owner. ForceOffline
// closes both with 4001, and the client goes offline.
func TestForceOfflineEverySocket(t *testing.T) {
	// Moves start at least LeaseTTL/3 + 1 s after the stale socket attaches
	// and are spread over MoveWindow: neither falls inside this test.
	c := startCluster(t, 1, func(cfg *imserver.Config) {
		cfg.LeaseTTL = 30 * time.Second
		cfg.MoveWindow = time.Hour
	})
	// A client that node-2 will own once it joins.
	id := ""
	for i := 0; id == ""; i++ {
		if cand := fmt.Sprintf("stale-%d", i); wire.Owner(cand, []string{"node-1", "node-2"}) == "node-2" {
			id = cand
		}
	}
	staleURL, err := c.helper.PrevConnectServer(bg, id, "")
	if err != nil {
		t.Fatal(err)
	}
	c.startNode("node-2")
	c.waitViews()
	stale, err := dialWS(staleURL) // on node-1, which no longer owns it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stale.conn.CloseNow() })
	checkFor(t, 10*time.Second, func() error {
		if n := c.node("node-1").Connections(); n != 1 {
			return fmt.Errorf("node-1 holds %d sockets, want the stale one", n)
		}
		return nil
	})
	owned := c.connect(id, "") // on node-2, the owner
	if !strings.HasPrefix(owned.url, c.node("node-2").PublicURL()) {
		t.Fatalf("fresh URL %s is not on the owner node-2", owned.url)
	}
	if err := c.helper.ForceOffline(bg, id); err != nil {
		t.Fatal(err)
	}
	for name, w := range map[string]*wsClient{"stale socket on node-1": stale, "socket on the owner": owned} {
		if code := w.closeCode(t); code != wire.CloseForcedOffline {
			t.Errorf("%s: close code %d, want %d", name, code, wire.CloseForcedOffline)
		}
	}
	checkFor(t, 10*time.Second, func() error {
		if on, err := c.helper.HasOnline(bg, id); on || err != nil {
			return fmt.Errorf("still online after ForceOffline (%v)", err)
		}
		return nil
	})
}

// TestInboundFloodClosed: the broker is push-only, so a socket that floods
// data frames or pings is closed with 1008 once it has spent its inbound
// budget (default 10 frames/s, bursts of 20), and the close is counted.
func TestInboundFloodClosed(t *testing.T) {
	c := startCluster(t, 1, nil)
	node := c.nodes[0]
	flood := map[string]func(w *wsClient) error{
		"data": func(w *wsClient) error { return w.conn.Write(bg, websocket.MessageText, []byte("x")) },
		"ping": func(w *wsClient) error {
			// No pong comes once the budget is spent: a short wait per ping.
			ctx, cancel := context.WithTimeout(bg, 200*time.Millisecond)
			defer cancel()
			err := w.conn.Ping(ctx)
			if errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return err
		},
	}
	for kind, send := range flood {
		w := c.connect("flood-"+kind, "")
		sent := 0
		for {
			if err := send(w); err != nil {
				break
			}
			if sent++; sent > 100000 {
				t.Fatalf("%s: %d frames sent and the socket is still open", kind, sent)
			}
		}
		if code := w.closeCode(t); code != websocket.StatusPolicyViolation {
			t.Errorf("%s flood: close code %d, want 1008", kind, code)
		}
		if sent < 20 {
			t.Errorf("%s flood: closed after %d frames, before the burst of 20 was spent", kind, sent)
		}
	}
	checkFor(t, 10*time.Second, func() error {
		_, body := getJSON(t, "http://"+node.AdminAddr().String()+"/metrics")
		if v := metricValue(body, `im_closes_total{reason="inbound"}`); v != 2 {
			return fmt.Errorf(`im_closes_total{reason="inbound"} = %v, want 2`, v)
		}
		return nil
	})
}
