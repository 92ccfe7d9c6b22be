package imserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/wire"
)

// floodNode is a node on a private redis-server whose per-source limits
// run on the given clock (nil: the real one). A frozen clock makes the
// limits exact whatever the machine's speed: buckets never refill and
// backoffs never end.
func floodNode(t *testing.T, cfg Config, clock func() int64, log *slog.Logger) (*Server, *redistest.Server) {
	t.Helper()
	r := redistest.Start(t)
	cfg.RedisURL, cfg.AdminListen = r.URL(), "127.0.0.1:0"
	s := runTestNode(t, cfg, log, func(s *Server) {
		if clock != nil && s.sources != nil {
			s.sources.clock = clock
		}
	})
	return s, r
}

func frozen() int64 { return int64(time.Hour) }

// issueToken stores a token for client on s, as imhelper would.
func issueToken(t testing.TB, s *Server, client string) string {
	t.Helper()
	tok := wire.NewToken()
	rec, _ := json.Marshal(wire.TokenRecord{Node: s.cfg.NodeID, Client: client, Issued: time.Now().UnixMilli()})
	if err := s.st.IssueToken(context.Background(), client, tok, rec, time.Minute); err != nil {
		t.Fatal(err)
	}
	return tok
}

// garbageClient sends WebSocket upgrade requests with well-formed tokens
// that were never issued, one after the other on a keep-alive connection
// from a given loopback source address, as a cheap attacker would.
type garbageClient struct {
	addr  string // the node's host:port
	local string // source IP
	conn  net.Conn
	br    *bufio.Reader
}

// send makes one attempt with a fresh garbage token and extra header
// lines ("Name: value\r\n"), and returns the status and refusal reason.
func (g *garbageClient) send(extra string) (int, string, error) {
	if g.conn == nil {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(g.local)}, Timeout: 30 * time.Second}
		c, err := d.Dial("tcp", g.addr)
		if err != nil {
			return 0, "", err
		}
		g.conn, g.br = c, bufio.NewReader(c)
	}
	_ = g.conn.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET /ws?token=" + wire.NewToken() + " HTTP/1.1\r\nHost: " + g.addr +
		"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + extra + "\r\n"
	if _, err := io.WriteString(g.conn, req); err != nil {
		g.close()
		return 0, "", err
	}
	resp, err := http.ReadResponse(g.br, nil)
	if err != nil {
		g.close()
		return 0, "", err
	}
	var body struct{ Reason string }
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	_ = json.Unmarshal(b, &body)
	if resp.Close || resp.StatusCode == http.StatusSwitchingProtocols {
		g.close()
	}
	return resp.StatusCode, body.Reason, nil
}

func (g *garbageClient) close() {
	if g.conn != nil {
		g.conn.Close()
		g.conn = nil
	}
}

// mustSend is send for the test's goroutine.
func (g *garbageClient) mustSend(t testing.TB, extra string) string {
	t.Helper()
	_, reason, err := g.send(extra)
	if err != nil {
		t.Fatal(err)
	}
	return reason
}

// flood runs workers garbage clients from local until ctx ends and returns
// the refusals they saw by reason.
func flood(ctx context.Context, addr, local string, workers int) map[string]int {
	var mu sync.Mutex
	seen := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := &garbageClient{addr: addr, local: local}
			defer g.close()
			mine := map[string]int{}
			for ctx.Err() == nil {
				_, reason, err := g.send("")
				if err != nil {
					reason = "error"
				}
				mine[reason]++
			}
			mu.Lock()
			for k, v := range mine {
				seen[k] += v
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return seen
}

// dialFrom opens a WebSocket to u from the loopback source address local.
func dialFrom(ctx context.Context, u, local string) (*websocket.Conn, int, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	tr := &http.Transport{DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		if resp != nil {
			return nil, resp.StatusCode, err
		}
		return nil, 0, err
	}
	return conn, http.StatusSwitchingProtocols, nil
}

// scriptCalls is how many Lua script calls (EVALSHA and EVAL) Redis has
// served so far; a token lookup is one.
func scriptCalls(t testing.TB, r *redistest.Server) int64 {
	t.Helper()
	out, err := r.Exec("INFO", "commandstats")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(out, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "cmdstat_evalsha" && name != "cmdstat_eval") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		v, _ := strconv.ParseInt(calls, 10, 64)
		n += v
	}
	return n
}

func (s *Server) refusalCount(reason string) int {
	return int(testutil.ToFloat64(s.metrics.refusals.WithLabelValues(reason)))
}

// TestGarbageTokensCostNoLookup: one source presenting garbage tokens has
// the first -token-failures-per-source of them looked up in Redis and no
// more: the rest are refused with 429 before any Redis call. Counted in
// Redis itself (INFO commandstats).
func TestGarbageTokensCostNoLookup(t *testing.T) {
	// Defaults: 20/s (bursts of 40), 10 failures. A long lease keeps the
	// node's own lease refresh (a script call too) out of the counts.
	s, r := floodNode(t, Config{LeaseTTL: time.Hour}, frozen, nil)
	addr := s.Addr().String()
	// Loads the script, so that the counts below are one call per lookup.
	if reason := (&garbageClient{addr: addr, local: "127.0.0.9"}).mustSend(t, ""); reason != "token" {
		t.Fatalf("warm-up: %q", reason)
	}
	calls0 := scriptCalls(t, r)
	g := &garbageClient{addr: addr, local: "127.0.0.2"}
	defer g.close()
	var got []string
	for i := 0; i < 100; i++ {
		got = append(got, g.mustSend(t, ""))
	}
	want := slicesRepeat("token", 10)
	want = append(want, slicesRepeat("token_backoff", 30)...) // until its burst of 40 is spent
	want = append(want, slicesRepeat("source_rate", 60)...)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("refusals %v,\nwant %v", got, want)
	}
	if n := scriptCalls(t, r) - calls0; n != 10 {
		t.Fatalf("%d script calls for 100 garbage tokens, want 10", n)
	}

	// Concurrently: no more lookups than a source's burst of attempts,
	// however many are in flight before the first failure is counted.
	calls0 = scriptCalls(t, r)
	ctx, cancel := context.WithCancel(context.Background())
	var sent atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g := &garbageClient{addr: addr, local: "127.0.0.3"}
			defer g.close()
			for j := 0; j < 10 && ctx.Err() == nil; j++ {
				if _, _, err := g.send(""); err == nil {
					sent.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	if n := scriptCalls(t, r) - calls0; n < 10 || n > 40 {
		t.Fatalf("%d concurrent garbage tokens cost %d script calls, want 10 to 40", sent.Load(), n)
	}

	// Other sources are unaffected, and a working token is looked up.
	u := s.PublicURL() + "?token=" + issueToken(t, s, "legit")
	conn, status, err := dialFrom(context.Background(), u, "127.0.0.4")
	if err != nil {
		t.Fatalf("legitimate connect from another source: HTTP %d, %v", status, err)
	}
	conn.CloseNow()
}

func slicesRepeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// TestSourceFairness: with -connect-rate 200, one source flooding garbage
// tokens no longer spends the node's budget: every legitimate client from
// other sources connects during the flood, on its first attempt. (With the
// global bucket alone, 2 of 200 did; see TestConnectFloodMeasure.)
func TestSourceFairness(t *testing.T) {
	s, _ := floodNode(t, Config{ConnectRate: 200}, frozen, nil)
	addr := s.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan map[string]int, 1)
	go func() { done <- flood(ctx, addr, "127.0.0.2", 16) }()
	defer func() {
		cancel()
		<-done
	}()
	// The flood has spent its burst: it is refused per source from now on.
	waitFor(t, 30*time.Second, func() error {
		if n := s.refusalCount("source_rate"); n == 0 {
			return errors.New("no source_rate refusal yet")
		}
		return nil
	})
	type result struct {
		local  string
		status int
		err    error
	}
	results := make(chan result)
	const perSource = 30 // within one source's burst of 40
	for _, local := range []string{"127.0.0.3", "127.0.0.4"} {
		for i := 0; i < perSource; i++ {
			u := s.PublicURL() + "?token=" + issueToken(t, s, fmt.Sprintf("legit-%s-%d", local, i))
			go func() {
				dctx, dcancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer dcancel()
				conn, status, err := dialFrom(dctx, u, local)
				if conn != nil {
					conn.CloseNow()
				}
				results <- result{local, status, err}
			}()
		}
	}
	for i := 0; i < 2*perSource; i++ {
		if r := <-results; r.err != nil {
			t.Errorf("legitimate client from %s: HTTP %d, %v", r.local, r.status, r.err)
		}
	}
	cancel()
	seen := <-done
	done <- seen // for the deferred wait
	if n := s.refusalCount("token"); n > 40 {
		t.Errorf("%d garbage tokens looked up, more than the flooding source's burst of 40", n)
	}
	if n := s.refusalCount("rate"); n != 0 {
		t.Errorf("%d attempts refused by the node-wide rate", n)
	}
	t.Logf("flood refusals %v; node: %d token, %d token_backoff, %d source_rate", seen,
		s.refusalCount("token"), s.refusalCount("token_backoff"), s.refusalCount("source_rate"))
}

// lockedBuffer is a log sink for a node's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestTrustedProxyHeaders: behind a trusted proxy, the client named in
// X-Forwarded-For (the rightmost hop that is not a trusted proxy) or
// X-Real-IP is the source; from any other peer the headers are ignored
// (and that is logged once).
func TestTrustedProxyHeaders(t *testing.T) {
	var logs lockedBuffer
	s, _ := floodNode(t, Config{TrustedProxies: []string{"127.0.0.2", "10.0.0.0/8"}, TokenFailuresPerSource: 2},
		frozen, slog.New(slog.NewTextHandler(&logs, nil)))
	addr := s.Addr().String()
	proxy := &garbageClient{addr: addr, local: "127.0.0.2"}
	defer proxy.close()
	other := &garbageClient{addr: addr, local: "127.0.0.3"}
	defer other.close()
	for _, step := range []struct {
		g         *garbageClient
		hdr, want string
		why       string
	}{
		{proxy, "X-Forwarded-For: 198.51.100.7", "token", "first failure of .7"},
		{proxy, "X-Forwarded-For: 198.51.100.7", "token", "second: .7 is barred"},
		{proxy, "X-Forwarded-For: 198.51.100.7", "token_backoff", ".7 behind the proxy"},
		{proxy, "X-Forwarded-For: 198.51.100.8", "token", "another client behind the same proxy"},
		{proxy, "X-Forwarded-For: 198.51.100.8, 198.51.100.7", "token_backoff", ".7 claiming to be .8"},
		{proxy, "X-Forwarded-For: 198.51.100.7, 10.1.2.3", "token_backoff", ".7 behind two proxies"},
		{proxy, "X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: 10.1.2.3", "token_backoff", "two header lines"},
		{proxy, "X-Real-IP: 198.51.100.7", "token_backoff", "X-Real-IP"},
		{proxy, "", "token", "the proxy itself"},
		{other, "X-Forwarded-For: 198.51.100.9", "token", "untrusted peer, first failure"},
		{other, "X-Real-IP: 198.51.100.10", "token", "untrusted peer, second: barred"},
		{other, "X-Forwarded-For: 198.51.100.11", "token_backoff", "an untrusted peer's headers are ignored"},
		{other, "", "token_backoff", "the untrusted peer itself"},
	} {
		if got := step.g.mustSend(t, strings.ReplaceAll(step.hdr+"\r\n", "\r\n\r\n", "\r\n")); got != step.want {
			t.Errorf("%s (%s from %s): %q, want %q", step.why, step.hdr, step.g.local, got, step.want)
		}
	}
	if n := strings.Count(logs.String(), "not in -trusted-proxies"); n != 1 {
		t.Errorf("the untrusted forwarding peer was logged %d times, want once:\n%s", n, logs.String())
	}
}
