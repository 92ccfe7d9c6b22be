package imserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// The tests of the connect script (connect.lua, admit): one round trip per
// connect, and the races that a merge of the token and the presence into
// one script run before the socket reaches the hub could lose, made to
// happen every time: the store seam runs the racing step inside the
// connect's window (after its token step, before the socket is in the
// hub) and waits until that step has finished or is parked on the
// client's stripe. A design that leaves the window open (the script run
// without the stripe) fails each of them.

// cmdLog is the node's Redis client, recording the commands a connect
// sends: every command on a token key or on the presence of a client.
type cmdLog struct {
	rueidis.Client
	mu   sync.Mutex
	cmds []string // one entry per round trip: the scripts (or commands) it carried
}

// scriptName names a command of a connect by the keys it passes.
func scriptName(args []string) string {
	name := strings.ToUpper(args[0])
	if name != "EVALSHA" && name != "EVAL" || len(args) < 4 {
		for _, a := range args[1:] {
			if strings.HasPrefix(a, "im:token:") || a == "im:online" || strings.HasPrefix(a, "im:clientchans:") {
				return name
			}
		}
		return ""
	}
	n, _ := strconv.Atoi(args[2])
	keys := args[3:min(len(args), 3+n)]
	switch {
	case len(keys) == 6 && strings.HasPrefix(keys[0], "im:token:"):
		return "connect.lua"
	case len(keys) == 1 && strings.HasPrefix(keys[0], "im:token:"):
		return "consume_token.lua"
	case len(keys) == 5 && keys[0] == "im:online":
		return "online.lua"
	case len(keys) >= 7 && keys[0] == "im:online":
		return "offline.lua"
	}
	return ""
}

func (l *cmdLog) note(cmds ...rueidis.Completed) {
	var names []string
	for _, c := range cmds {
		if n := scriptName(c.Commands()); n != "" {
			names = append(names, n)
		}
	}
	if len(names) > 0 {
		l.mu.Lock()
		l.cmds = append(l.cmds, strings.Join(names, "+"))
		l.mu.Unlock()
	}
}

func (l *cmdLog) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	l.note(cmd) // before: the command is recycled once done
	return l.Client.Do(ctx, cmd)
}

func (l *cmdLog) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	l.note(multi...)
	return l.Client.DoMulti(ctx, multi...)
}

func (l *cmdLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.cmds
	l.cmds = nil
	return out
}

// hookStore runs a client's window step (inWindow) right after its
// connect's token step returned.
type hookStore struct {
	store.Node
	mu     sync.Mutex
	window map[string]func()
}

func (h *hookStore) take(client string) func() {
	h.mu.Lock()
	defer h.mu.Unlock()
	f := h.window[client]
	delete(h.window, client)
	return f
}

func (h *hookStore) Connect(ctx context.Context, req store.ConnectRequest) (store.ConnectResult, error) {
	res, err := h.Node.Connect(ctx, req)
	if f := h.take(req.Client); f != nil {
		f()
	}
	return res, err
}

func (h *hookStore) ConsumeToken(ctx context.Context, client, token, node string) ([]byte, store.TokenStatus, error) {
	raw, st, err := h.Node.ConsumeToken(ctx, client, token, node)
	if rec, derr := wire.DecodeTokenRecord(raw); st == store.TokenConsumed && derr == nil {
		if f := h.take(rec.Client); f != nil {
			f()
		}
	}
	return raw, st, err
}

// rig is node "solo" on a private redis-server, with imhelper (no personal
// history: a connect then has nothing to replay) and a look at Redis.
type rig struct {
	t     *testing.T
	s     *Server
	h     *imhelper.Client
	rc    rueidis.Client // the test's own
	redis *redistest.Server
	log   *cmdLog
	hooks *hookStore
	ctx   context.Context

	mu     sync.Mutex
	parked map[string]chan struct{} // clients whose stripe wait is watched
}

func newRig(t *testing.T, cfg Config, redisArgs ...string) *rig {
	t.Helper()
	r := &rig{t: t, redis: redistest.StartWith(t, redisArgs...), parked: make(map[string]chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	r.ctx = ctx
	var err error
	if r.rc, err = store.Dial(r.redis.URL()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.rc.Close)
	nodeRC, err := store.Dial(r.redis.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nodeRC.Close) // after the node's shutdown (cleanups run last first)
	r.log = &cmdLog{Client: nodeRC}
	cfg.RedisURL = r.redis.URL()
	if cfg.OfflineGrace == 0 {
		cfg.OfflineGrace = -1
	}
	cfg.ConnectRatePerSource = -1
	if cfg.TokenFailuresPerSource == 0 {
		cfg.TokenFailuresPerSource = -1
	}
	cfg.Listen, cfg.NodeID = "127.0.0.1:0", "solo"
	s, err := New(cfg, r.log, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	r.hooks = &hookStore{Node: s.st, window: make(map[string]func())}
	s.st = r.hooks
	s.testStripeWait = r.stripeWaited
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	r.s = s
	waitFor(t, 30*time.Second, func() error {
		if !s.Ready() {
			return errors.New("not ready")
		}
		return nil
	})
	off := []imhelper.HistoryRule{{Size: 0}}
	r.h, err = imhelper.New(ctx, imhelper.Options{RedisURL: r.redis.URL(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		History: &imhelper.HistoryOptions{Clients: off}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.h.Close)
	r.warm()
	return r
}

// warm runs every script of a connect once, so that the round trips the
// tests count are EVALSHAs: the first run of each also sends an EVAL
// (NOSCRIPT).
func (r *rig) warm() {
	r.t.Helper()
	a := r.dial(r.url("warm-1", ""))                                           // connect.lua
	b := r.dial(r.url("warm-1", ""))                                           // consume_token.lua
	c := r.dial(strings.Replace(r.url("warm-2", ""), "&client=warm-2", "", 1)) // online.lua
	for _, ws := range []*websocket.Conn{a, b, c} {
		_ = ws.Close(websocket.StatusNormalClosure, "") // offline.lua
	}
	waitFor(r.t, 30*time.Second, func() error {
		if n := r.clientNode("warm-1") + r.clientNode("warm-2"); n != "" {
			return errors.New("warm-up clients still online")
		}
		return nil
	})
	r.log.take()
	r.s.metrics.connectFallbacks.Reset()
}

func (r *rig) stripeWaited(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ch := r.parked[id]; ch != nil {
		close(ch)
		delete(r.parked, id)
	}
}

// window is one racing step run inside a connect's window.
type window struct {
	ran    chan struct{} // the connect went on
	done   chan struct{} // the step finished
	parked bool          // it had to wait for the client's stripe
}

// inWindow makes the next connect of id run step between its token step
// and its socket reaching the hub, and wait there until step has finished
// or waits for id's stripe. step ends when ctx does.
func (r *rig) inWindow(id string, step func(ctx context.Context)) *window {
	w := &window{ran: make(chan struct{}), done: make(chan struct{})}
	parked := make(chan struct{})
	r.mu.Lock()
	r.parked[id] = parked
	r.mu.Unlock()
	r.hooks.mu.Lock()
	r.hooks.window[id] = func() {
		defer close(w.ran)
		go func() {
			defer close(w.done)
			step(r.ctx)
		}()
		select {
		case <-w.done:
		case <-parked:
			w.parked = true
		case <-time.After(30 * time.Second):
			r.t.Error("the racing step neither finished nor waited for the stripe")
		}
	}
	r.hooks.mu.Unlock()
	return w
}

// finished waits for the step, which a parked one does once the connect
// let go of the stripe.
func (w *window) finished(t *testing.T) {
	t.Helper()
	for _, ch := range []chan struct{}{w.ran, w.done} {
		select {
		case <-ch:
		case <-time.After(30 * time.Second):
			t.Fatal("the racing step did not run or end")
		}
	}
}

func (r *rig) url(id, meta string) string {
	r.t.Helper()
	u, err := r.h.PrevConnectServer(r.ctx, id, meta)
	if err != nil {
		r.t.Fatal(err)
	}
	if !strings.Contains(u, "&client=") {
		r.t.Fatalf("URL %s names no client", u)
	}
	return u
}

// dial opens a socket and waits for its first frame (it is attached then).
func (r *rig) dial(u string) *websocket.Conn {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		r.t.Fatalf("dial %s: %v", u, err)
	}
	r.t.Cleanup(func() { ws.CloseNow() })
	if f := r.read(ws); f["type"] != "recovered" {
		r.t.Fatalf("first frame %v", f)
	}
	return ws
}

func (r *rig) read(ws *websocket.Conn) map[string]any {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	_, b, err := ws.Read(ctx)
	if err != nil {
		r.t.Fatal(err)
	}
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		r.t.Fatal(err)
	}
	return f
}

// status dials and returns the HTTP status of a refused attempt (101 if
// it was accepted).
func (r *rig) status(u string) int {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, 30*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, u, nil)
	if err == nil {
		ws.CloseNow()
		return http.StatusSwitchingProtocols
	}
	if resp == nil {
		r.t.Fatalf("dial %s: %v", u, err)
	}
	return resp.StatusCode
}

func (r *rig) clientNode(id string) string {
	r.t.Helper()
	n, err := r.rc.Do(r.ctx, r.rc.B().Hget().Key("im:online").Field(id).Build()).ToString()
	if rueidis.IsRedisNil(err) {
		return ""
	}
	if err != nil {
		r.t.Fatal(err)
	}
	return n
}

// events returns id's events in the stream, as type or type:reason.
func (r *rig) events(id string) []string {
	r.t.Helper()
	entries, err := r.rc.Do(r.ctx, r.rc.B().Xrange().Key("im:events:stream").Start("-").End("+").Build()).AsXRange()
	if err != nil && !rueidis.IsRedisNil(err) {
		r.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		ev, err := wire.DecodeEvent([]byte(e.FieldValues["e"]))
		if err != nil {
			r.t.Fatal(err)
		}
		if ev.Client == id {
			s := ev.Type
			if ev.Reason != "" {
				s += ":" + ev.Reason
			}
			out = append(out, s)
		}
	}
	return out
}

// localChans is id's channels in the node's memory (nil without a socket).
func (r *rig) localChans(id string) []string {
	c := r.s.hub.get(id)
	if c == nil {
		return nil
	}
	chans := c.chanList()
	slices.Sort(chans)
	return chans
}

func (r *rig) fallbacks(reason string) float64 {
	return testutil.ToFloat64(r.s.metrics.connectFallbacks.WithLabelValues(reason))
}

func (r *rig) tokenExists(u string) bool {
	r.t.Helper()
	tok := wire.TokenFromQuery(u[strings.Index(u, "?")+1:])
	n, err := r.rc.Do(r.ctx, r.rc.B().Exists().Key("im:token:"+tok).Build()).AsInt64()
	if err != nil {
		r.t.Fatal(err)
	}
	return n == 1
}

// TestConnectOneRoundTrip: a client's first socket costs one Redis round
// trip, connect.lua; so does a further socket (the token alone). A URL
// without the client parameter (a business service that does not add it)
// still works, in the two round trips of before.
func TestConnectOneRoundTrip(t *testing.T) {
	r := newRig(t, Config{})
	if err := r.h.JoinChan(r.ctx, "rt-0", "rt-room"); err != nil {
		t.Fatal(err)
	}
	r.dial(r.url("rt-0", ""))
	r.log.take()
	const n = 20
	for i := 1; i <= n; i++ {
		r.dial(r.url(fmt.Sprintf("rt-%d", i), `{"i":`+strconv.Itoa(i)+`}`))
	}
	want := slices.Repeat([]string{"connect.lua"}, n)
	if got := r.log.take(); !slices.Equal(got, want) {
		t.Fatalf("round trips of %d first sockets: %q, want one connect.lua each", n, got)
	}
	r.dial(r.url("rt-1", ""))
	if got := r.log.take(); !slices.Equal(got, []string{"consume_token.lua"}) {
		t.Fatalf("round trips of a second socket: %q", got)
	}
	for i := 0; i <= n; i++ {
		if node := r.clientNode(fmt.Sprintf("rt-%d", i)); node != "solo" {
			t.Fatalf("rt-%d online on %q", i, node)
		}
	}
	if got := r.localChans("rt-0"); !slices.Equal(got, []string{"rt-room"}) {
		t.Fatalf("rt-0's channels %v", got)
	}

	// Before the merge, and without the hint: the token, then online.lua.
	u := r.url("rt-old", "")
	r.dial(strings.Replace(u, "&client=rt-old", "", 1))
	if got := r.log.take(); !slices.Equal(got, []string{"consume_token.lua", "online.lua"}) {
		t.Fatalf("round trips without the hint: %q", got)
	}
	if f := r.fallbacks("no_hint"); f != 1 {
		t.Fatalf("no_hint fallbacks %v, want 1", f)
	}
	for _, why := range []string{"mismatch", "raced", "redis_full"} {
		if f := r.fallbacks(why); f != 0 {
			t.Errorf("%s fallbacks %v, want 0", why, f)
		}
	}
}

// TestConnectWindowRaces: each change that could fall between a connect's
// script and its socket reaching the hub, made to fall exactly there.
func TestConnectWindowRaces(t *testing.T) {
	r := newRig(t, Config{OfflineGrace: time.Minute})

	t.Run("join", func(t *testing.T) {
		// JoinChan writes Redis, reads im:online (set by the script: the
		// client is online here) and the join reaches the node before
		// the socket is in the hub.
		const id = "w-join"
		w := r.inWindow(id, func(ctx context.Context) {
			node, err := r.s.st.Join(ctx, id, []string{"w-room"})
			if err != nil || node != "solo" {
				t.Errorf("join: node %q, %v", node, err)
			}
			r.s.applyJoin(id, []string{"w-room"}, []string{""})
		})
		ws := r.dial(r.url(id, ""))
		w.finished(t)
		if !w.parked {
			t.Error("the join did not wait for the connect's stripe")
		}
		if got := r.localChans(id); !slices.Equal(got, []string{"w-room"}) {
			t.Fatalf("channels on the node %v: the join was lost", got)
		}
		waitFor(t, 30*time.Second, func() error {
			out, _ := r.redis.Exec("PUBSUB", "NUMSUB", "im:c:w-room")
			if f := strings.Fields(out); len(f) != 2 || f[1] != "1" {
				return fmt.Errorf("NUMSUB %q", out)
			}
			return nil
		})
		if _, err := r.h.SendChanMessage(r.ctx, "x", "w-room", `"in"`); err != nil {
			t.Fatal(err)
		}
		if f := r.read(ws); f["type"] != "channel" || f["data"] != "in" {
			t.Fatalf("got %v", f)
		}
		if got := r.events(id); !slices.Equal(got, []string{"online"}) {
			t.Fatalf("events %v", got)
		}
	})

	t.Run("leave", func(t *testing.T) {
		// Joined while offline: the script loads the channel, and a
		// LeaveChan falls before the socket is in the hub.
		const id = "w-leave"
		if err := r.h.JoinChan(r.ctx, id, "w-gone"); err != nil {
			t.Fatal(err)
		}
		w := r.inWindow(id, func(ctx context.Context) {
			node, err := r.s.st.Leave(ctx, id, []string{"w-gone"})
			if err != nil || node != "solo" {
				t.Errorf("leave: node %q, %v", node, err)
			}
			r.s.applyLeave(id, []string{"w-gone"})
		})
		r.dial(r.url(id, ""))
		w.finished(t)
		if !w.parked {
			t.Error("the leave did not wait for the connect's stripe")
		}
		if got := r.localChans(id); len(got) != 0 {
			t.Fatalf("channels on the node %v: the leave was lost", got)
		}
	})

	t.Run("last socket closes", func(t *testing.T) {
		// The client's only other socket closes (1000: no grace) while
		// the second one's token is read: the new socket is a first one
		// after all, and the client must end online, with one offline
		// and one online event for the two transitions.
		const id = "w-close"
		a := r.dial(r.url(id, ""))
		w := r.inWindow(id, func(ctx context.Context) {
			_ = a.Close(websocket.StatusNormalClosure, "")
			for r.clientNode(id) != "" && ctx.Err() == nil {
				time.Sleep(5 * time.Millisecond) // until the detach marked it offline
			}
		})
		r.dial(r.url(id, ""))
		w.finished(t)
		if node := r.clientNode(id); node != "solo" {
			t.Fatalf("online on %q with a socket attached", node)
		}
		if got := r.events(id); !slices.Equal(got, []string{"online", "offline:closed", "online"}) {
			t.Fatalf("events %v", got)
		}
		if f := r.fallbacks("raced"); f != 1 {
			t.Fatalf("raced fallbacks %v, want 1", f)
		}
	})

	t.Run("grace ends", func(t *testing.T) {
		// The last socket dropped (no close frame: the grace keeps the
		// presence and the rooms), and the grace ends while the client's
		// new socket connects.
		const id = "w-grace"
		a := r.dial(r.url(id, ""))
		if err := r.h.JoinChan(r.ctx, id, "w-kept"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 30*time.Second, func() error {
			if got := r.localChans(id); len(got) != 1 {
				return fmt.Errorf("channels %v", got)
			}
			return nil
		})
		a.CloseNow()
		waitFor(t, 30*time.Second, func() error {
			if !r.s.inGrace(id) {
				return errors.New("not in grace")
			}
			return nil
		})
		w := r.inWindow(id, func(context.Context) {
			r.s.graceMu.Lock()
			e := r.s.grace[id]
			r.s.graceMu.Unlock()
			if e != nil && e.timer.Stop() {
				r.s.endGrace(e, "expired") // what the timer would have run
			}
		})
		r.dial(r.url(id, ""))
		w.finished(t)
		if !w.parked {
			t.Error("the grace's end did not wait for the connect's stripe")
		}
		if node := r.clientNode(id); node != "solo" {
			t.Fatalf("online on %q with a socket attached", node)
		}
		if got := r.events(id); !slices.Equal(got, []string{"online"}) {
			t.Fatalf("events %v: the grace's end took the client offline", got)
		}
		if got := r.localChans(id); !slices.Equal(got, []string{"w-kept"}) {
			t.Fatalf("channels %v", got)
		}
		if cl, _ := r.h.GetChanListByClientId(r.ctx, id); !slices.Equal(cl, []string{"w-kept"}) {
			t.Fatalf("channels in Redis %v", cl)
		}
	})

	t.Run("resync", func(t *testing.T) {
		// A resync walks im:nodeclients:solo, where the script put the
		// client, and ends the presence of clients it does not hold.
		const id = "w-resync"
		w := r.inWindow(id, func(ctx context.Context) {
			if err := r.s.resync(ctx); err != nil {
				t.Errorf("resync: %v", err)
			}
		})
		r.dial(r.url(id, ""))
		w.finished(t)
		if !w.parked {
			t.Error("the resync did not wait for the connect's stripe")
		}
		if node := r.clientNode(id); node != "solo" {
			t.Fatalf("online on %q with a socket attached", node)
		}
		if got := r.events(id); !slices.Equal(got, []string{"online"}) {
			t.Fatalf("events %v", got)
		}
	})
}

// TestConnectRefusals: the connect script keeps every refusal of the
// token step, and takes back what it wrote for a socket that is then not
// attached.
func TestConnectRefusals(t *testing.T) {
	r := newRig(t, Config{})
	issue := r.issuer()

	// Foreign: 421, kept, nothing written.
	u := issue("elsewhere", "f-1", "")
	if st := r.status(u); st != http.StatusMisdirectedRequest {
		t.Fatalf("foreign: %d, want 421", st)
	}
	if !r.tokenExists(u) {
		t.Fatal("a foreign token was consumed")
	}
	if node := r.clientNode("f-1"); node != "" {
		t.Fatalf("a foreign token marked the client online on %q", node)
	}
	// Missing: 401.
	if st := r.status(r.s.PublicURL() + "?token=" + wire.NewToken() + "&client=f-2"); st != http.StatusUnauthorized {
		t.Fatalf("missing: %d, want 401", st)
	}
	// Malformed, as far as the script sees: deleted, 401.
	u = issue("solo", "f-3", "not json")
	if st := r.status(u); st != http.StatusUnauthorized || r.tokenExists(u) {
		t.Fatalf("malformed: %d, kept %v", st, r.tokenExists(u))
	}
	if got := r.log.take(); slices.Contains(got, "online.lua") || slices.Contains(got, "offline.lua") {
		t.Fatalf("round trips of refused tokens: %q", got)
	}

	// Malformed only for Go (the script checks the client and the meta,
	// not the rest): 401 all the same, and the presence the script wrote
	// is taken back.
	malformed := testutil.ToFloat64(r.s.metrics.malformed)
	u = issue("solo", "f-5", `{"node":"solo","client":"f-5","iat":"not a number"}`)
	if st := r.status(u); st != http.StatusUnauthorized {
		t.Fatalf("a record Go cannot decode: %d, want 401", st)
	}
	if node := r.clientNode("f-5"); node != "" {
		t.Fatalf("f-5 left online on %q", node)
	}
	if got := testutil.ToFloat64(r.s.metrics.malformed) - malformed; got != 1 {
		t.Fatalf("malformed count +%v", got)
	}
	if ids, _, _ := r.s.st.NodeClients(r.ctx, "solo", 0); slices.Contains(ids, "f-5") {
		t.Fatalf("node clients %v", ids)
	}

	// The URL names another client than the record: the record wins, in
	// two round trips.
	u = issue("solo", "f-real", "")
	r.log.take()
	r.dial(strings.Replace(u, "client=f-real", "client=f-fake", 1))
	if node, fake := r.clientNode("f-real"), r.clientNode("f-fake"); node != "solo" || fake != "" {
		t.Fatalf("f-real on %q, f-fake on %q", node, fake)
	}
	if got := r.log.take(); !slices.Equal(got, []string{"connect.lua", "online.lua"}) {
		t.Fatalf("round trips %q", got)
	}
	if f := r.fallbacks("mismatch"); f != 1 {
		t.Fatalf("mismatch fallbacks %v", f)
	}

	// A handshake the WebSocket library refuses after the token: the
	// client appeared and left.
	u = issue("solo", "f-hs", "")
	req, _ := http.NewRequest("GET", strings.Replace(u, "ws://", "http://", 1), nil)
	for k, v := range map[string]string{"Connection": "Upgrade", "Upgrade": "websocket",
		"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "not a 16-byte key"} {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || r.tokenExists(u) {
		t.Fatalf("bad key: %d, token kept %v", resp.StatusCode, r.tokenExists(u))
	}
	if node := r.clientNode("f-hs"); node != "" {
		t.Fatalf("f-hs left online on %q", node)
	}
	if got := r.events("f-hs"); !slices.Equal(got, []string{"online", "offline:closed"}) {
		t.Fatalf("events %v", got)
	}
}

// issuer stores a token as a business service would (raw "": a
// well-formed record) and returns its URL naming client.
func (r *rig) issuer() func(node, client, raw string) string {
	return func(node, client, raw string) string {
		r.t.Helper()
		tok := wire.NewToken()
		if raw == "" {
			b, _ := json.Marshal(wire.TokenRecord{Node: node, Client: client})
			raw = string(b)
		}
		if err := r.s.st.IssueToken(r.ctx, client, tok, []byte(raw), time.Minute); err != nil {
			r.t.Fatal(err)
		}
		return r.s.PublicURL() + "?token=" + tok + "&client=" + client
	}
}

// TestConnectTokenFailuresCount: the failed tokens of the connect script
// (foreign, missing, malformed) count against the source as before.
func TestConnectTokenFailuresCount(t *testing.T) {
	r := newRig(t, Config{TokenFailuresPerSource: 3})
	issue := r.issuer()
	for _, c := range []struct {
		u    string
		want int
	}{
		{issue("elsewhere", "b-1", ""), http.StatusMisdirectedRequest},
		{r.s.PublicURL() + "?token=" + wire.NewToken() + "&client=b-2", http.StatusUnauthorized},
		{issue("solo", "b-3", "[]"), http.StatusUnauthorized}, // the third: barred from now on
		{issue("solo", "b-4", ""), http.StatusTooManyRequests},
	} {
		if st := r.status(c.u); st != c.want {
			t.Fatalf("%s: %d, want %d", c.u, st, c.want)
		}
	}
}

// TestConnectRedisDown: a connect script that fails is a 503, as the
// token lookup was; and since it may have run all the same (Redis got it,
// the reply was late), the node resyncs, which ends a presence without a
// socket.
func TestConnectRedisDown(t *testing.T) {
	r := newRig(t, Config{RedisTimeout: 300 * time.Millisecond, LeaseTTL: 3 * time.Second})
	u := r.url("d-1", "")
	r.redis.Pause()
	st := r.status(u)
	r.redis.Resume()
	if st != http.StatusServiceUnavailable {
		t.Fatalf("redis paused: %d, want 503", st)
	}
	waitFor(t, 30*time.Second, func() error {
		if r.s.presenceDirty.Load() {
			return errors.New("not resynced yet")
		}
		if node := r.clientNode("d-1"); node != "" {
			return fmt.Errorf("d-1 online on %q without a socket", node)
		}
		return nil
	})
	r.dial(r.url("d-2", ""))
	if node := r.clientNode("d-2"); node != "solo" {
		t.Fatalf("d-2 on %q", node)
	}
}

// TestConnectAtMaxmemory: Redis refuses the script at its first write; the
// node takes the token alone and accepts the socket, as before the merge,
// and then refuses new connections (503 redis_full) until Redis has room.
func TestConnectAtMaxmemory(t *testing.T) {
	r := newRig(t, Config{LeaseTTL: 3 * time.Second}, "--maxmemory-policy", "noeviction")
	u := r.url("m-1", "")
	setMax := func(v string) {
		t.Helper()
		if err := r.rc.Do(r.ctx, r.rc.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", v).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	setMax("1")
	r.dial(u)
	if !r.s.redisFull.Load() {
		t.Fatal("the node did not learn that Redis is full")
	}
	if f := r.fallbacks("redis_full"); f != 1 {
		t.Fatalf("redis_full fallbacks %v", f)
	}
	if st := r.status(r.s.PublicURL() + "?token=" + wire.NewToken() + "&client=m-2"); st != http.StatusServiceUnavailable {
		t.Fatalf("while full: %d, want 503", st)
	}
	setMax("0")
	waitFor(t, 30*time.Second, func() error {
		if r.s.redisFull.Load() {
			return errors.New("still full")
		}
		if node := r.clientNode("m-1"); node != "solo" {
			return fmt.Errorf("m-1 on %q: not resynced", node)
		}
		return nil
	})
}
