package imserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/testnode"
)

// checkFor polls fn until it returns nil or the timeout passes.
var checkFor = testnode.WaitFor

type cluster struct {
	t testing.TB
	// redis is the test's own redis-server; nil on a Redis Cluster
	// (onRedisCluster), where url and prefix name the test's part of the
	// shared Cluster. st reads Redis' side for assertions either way.
	redis       *redistest.Server
	url, prefix string
	st          *store.Redis
	nodes       []*imserver.Server
	helper      *imhelper.Client
	mod         func(*imserver.Config)
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startCluster starts a private redis-server, n nodes and an imhelper
// client, and waits until every party sees every node.
// Under onRedisCluster the test runs on the shared Redis Cluster instead.
func startCluster(t testing.TB, n int, mod func(*imserver.Config)) *cluster {
	t.Helper()
	if url, prefix, ok := redisClusterFor(t); ok {
		return startClusterAt(t, nil, url, prefix, n, mod)
	}
	return startClusterOn(t, redistest.Start(t), n, mod)
}

// startClusterOn is startCluster on a redis-server the test started.
func startClusterOn(t testing.TB, rs *redistest.Server, n int, mod func(*imserver.Config)) *cluster {
	t.Helper()
	return startClusterAt(t, rs, rs.URL(), "", n, mod)
}

func startClusterAt(t testing.TB, rs *redistest.Server, url, prefix string, n int, mod func(*imserver.Config)) *cluster {
	t.Helper()
	c := &cluster{t: t, redis: rs, url: url, prefix: prefix, mod: mod}
	rc, err := store.Dial(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	if c.st, err = store.Open(rc, store.Options{Prefix: prefix}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		c.startNode(fmt.Sprintf("node-%d", i+1))
	}
	h, err := imhelper.New(context.Background(), c.helperOptions(imhelper.Options{RefreshInterval: 100 * time.Millisecond, Logger: quietLogger()}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	c.helper = h
	c.waitViews()
	return c
}

// helperOptions is o on the test's Redis (and prefix).
func (c *cluster) helperOptions(o imhelper.Options) imhelper.Options {
	o.RedisURL, o.Prefix = c.url, c.prefix
	return o
}

func (c *cluster) config(id string) imserver.Config {
	cfg := imserver.Config{
		Listen:   "127.0.0.1:0",
		NodeID:   id,
		RedisURL: c.url,
		Prefix:   c.prefix,
		// Long enough that a loaded machine does not let a live node's
		// lease lapse; tests of dead nodes use processes with their own.
		LeaseTTL:      5 * time.Second,
		MoveWindow:    500 * time.Millisecond,
		DrainWindow:   300 * time.Millisecond,
		ProbeInterval: 500 * time.Millisecond,
		// Every test client dials from 127.0.0.1, usually faster than
		// one source's default budget; the tests of that limit set it.
		ConnectRatePerSource: -1,
		// Tests of the offline grace set their own; the rest expect an
		// offline event when a socket closes.
		OfflineGrace: -1,
	}
	if c.mod != nil {
		c.mod(&cfg)
	}
	return cfg
}

func (c *cluster) startNode(id string) *imserver.Server {
	c.t.Helper()
	srv, err := imserver.New(c.config(id), nil, quietLogger())
	if err != nil {
		c.t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	c.nodes = append(c.nodes, srv)
	return srv
}

// waitViews waits until imhelper and every running node see the same live
// node set.
func (c *cluster) waitViews() {
	c.t.Helper()
	var want []string
	for _, n := range c.nodes {
		want = append(want, n.NodeID())
	}
	checkFor(c.t, 10*time.Second, func() error {
		_ = c.helper.RefreshNodes(context.Background())
		if got := c.helper.Nodes(); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("imhelper sees %v, want %v", got, want)
		}
		for _, n := range c.nodes {
			if got := n.Nodes(); fmt.Sprint(got) != fmt.Sprint(want) {
				return fmt.Errorf("%s sees %v, want %v", n.NodeID(), got, want)
			}
			if !n.Ready() {
				return fmt.Errorf("%s not ready", n.NodeID())
			}
		}
		return nil
	})
}

func (c *cluster) node(id string) *imserver.Server {
	for _, n := range c.nodes {
		if n.NodeID() == id {
			return n
		}
	}
	c.t.Fatalf("no node %s", id)
	return nil
}

// frame is what a browser receives.
type frame = testnode.Frame

type streamState = testnode.StreamState

// wsClient is a real WebSocket client that records every frame.
type wsClient struct {
	id     string
	url    string
	conn   *websocket.Conn
	frames chan frame
	done   chan struct{}
	// attached is closed at the socket's first recovered frame, which says
	// it is attached and caught up (replayed messages come before it);
	// first is that frame. It is not passed on to frames.
	attached chan struct{}
	first    frame
	mu       sync.Mutex
	err      error // the read error that ended the client
}

func (c *cluster) connect(id, meta string) *wsClient {
	c.t.Helper()
	wc, err := c.tryConnect(id, meta)
	if err != nil {
		c.t.Fatal(err)
	}
	return wc
}

// attachTimeout bounds a connect and the wait for its presence. It is an
// upper bound for a broken build, not a margin: a race-enabled node on a
// loaded 2-core box has taken more than 5 s for one handshake.
const attachTimeout = 30 * time.Second

// tryConnect is connect for goroutines other than the test's own, where
// t.Fatal must not be called: it returns the error instead.
func (c *cluster) tryConnect(id, meta string) (*wsClient, error) {
	// The same bound for the URL: on a loaded machine a Redis shared with
	// three race-enabled nodes has taken more than imhelper's default 5 s.
	ctx, cancel := context.WithTimeout(context.Background(), attachTimeout)
	defer cancel()
	u, err := c.helper.PrevConnectServer(ctx, id, meta)
	if err != nil {
		return nil, fmt.Errorf("PrevConnectServer(%s): %w", id, err)
	}
	wc, err := dialWS(u)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", id, err)
	}
	wc.id = id
	c.t.Cleanup(func() { wc.conn.CloseNow() })
	// The handshake completes before the node attaches the socket; its
	// first frame says it is attached (presence written, channels
	// subscribed, history replayed), so a message sent next reaches it.
	if err := wc.waitAttached(); err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	return wc, nil
}

// waitAttached waits for the socket's first frame (recovered, first).
func (w *wsClient) waitAttached() error {
	select {
	case <-w.attached:
		return nil
	case <-w.done:
		select {
		case <-w.attached:
			return nil
		default:
		}
		return fmt.Errorf("closed before its first frame: %v", w.readErr())
	case <-time.After(attachTimeout):
		return fmt.Errorf("no first frame within %v", attachTimeout)
	}
}

func (w *wsClient) readErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func dialWS(u string) (*wsClient, error) {
	ctx, cancel := context.WithTimeout(context.Background(), attachTimeout)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		if resp != nil {
			return nil, &httpError{status: resp.StatusCode}
		}
		return nil, err
	}
	wc := &wsClient{url: u, conn: conn, frames: make(chan frame, 10000), done: make(chan struct{}), attached: make(chan struct{})}
	go func() {
		defer close(wc.done)
		gotFirst := false
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				wc.mu.Lock()
				wc.err = err
				wc.mu.Unlock()
				return
			}
			var f frame
			if err := json.Unmarshal(b, &f); err != nil {
				panic(fmt.Sprintf("frame is not JSON: %s", b))
			}
			if !gotFirst && f.Type == "recovered" {
				// Replayed messages come before it.
				if !f.First {
					panic(fmt.Sprintf("the first recovered frame is not marked first: %s", b))
				}
				gotFirst = true
				wc.first = f
				close(wc.attached)
				continue
			}
			wc.frames <- f
		}
	}()
	return wc, nil
}

type httpError struct{ status int }

func (e *httpError) Error() string { return fmt.Sprintf("HTTP %d", e.status) }

func statusOf(err error) int {
	var he *httpError
	if errors.As(err, &he) {
		return he.status
	}
	return 0
}

// next waits for the next frame.
func (w *wsClient) next(t testing.TB) frame {
	t.Helper()
	select {
	case f := <-w.frames:
		return f
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no frame within 20s", w.id)
	}
	return frame{}
}

// nextData waits for the next frame that is not a recovered frame.
func (w *wsClient) nextData(t testing.TB) frame {
	t.Helper()
	for {
		f := w.next(t)
		if f.Type != "recovered" {
			return f
		}
		t.Logf("%s: skipped %+v", w.id, f)
	}
}

// none asserts that no frame arrives within d.
func (w *wsClient) none(t testing.TB, d time.Duration) {
	t.Helper()
	select {
	case f := <-w.frames:
		t.Fatalf("%s: unexpected frame %+v", w.id, f)
	case <-time.After(d):
	}
}

// closeCode waits for the socket to be closed by the server and returns
// the close code.
func (w *wsClient) closeCode(t testing.TB) websocket.StatusCode {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: not closed within 15s", w.id)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return websocket.CloseStatus(w.err)
}

// getJSON fetches url; a connection error is reported as status 0.
func getJSON(t testing.TB, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// barrier waits until the owning node of each client has handled every
// control message (join, leave) published for it so far: a direct message
// sent now travels the same node channel, handled in order by one worker,
// so once it arrives the earlier ones were applied. The barrier frame is
// consumed.
func (c *cluster) barrier(clients ...*wsClient) {
	c.t.Helper()
	for _, w := range clients {
		if _, err := c.helper.SendMessage(context.Background(), "barrier", []string{w.id}, `"barrier"`); err != nil {
			c.t.Fatal(err)
		}
		if f := w.nextData(c.t); f.From != "barrier" {
			c.t.Fatalf("%s: expected the barrier, got %+v", w.id, f)
		}
	}
}

// listed reports whether node is still in the registry's index, live or
// waiting to be reaped.
func listed(c *cluster, node string) bool {
	c.t.Helper()
	live, dead, err := c.st.Nodes(bg)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, n := range live {
		if n.ID == node {
			return true
		}
	}
	return slices.Contains(dead, node)
}
