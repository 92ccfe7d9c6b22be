package imserver_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/wire"
)

// garbageClient sends WebSocket upgrade requests with well-formed tokens
// that were never issued, one after the other on a keep-alive connection
// from a given loopback source address, as a cheap attacker would.
type garbageClient struct {
	addr  string // the node's host:port
	local string // source IP
	conn  net.Conn
	br    *bufio.Reader
}

func (g *garbageClient) dial() error {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(g.local)}, Timeout: 10 * time.Second}
	c, err := d.Dial("tcp", g.addr)
	if err != nil {
		return err
	}
	g.conn, g.br = c, bufio.NewReader(c)
	return nil
}

// send makes one attempt with a fresh garbage token and extra header lines,
// and returns the status and the refusal reason.
func (g *garbageClient) send(extra string) (int, string, error) {
	if g.conn == nil {
		if err := g.dial(); err != nil {
			return 0, "", err
		}
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
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Close || resp.StatusCode == http.StatusSwitchingProtocols {
		g.close()
	}
	reason := ""
	if i := strings.Index(string(b), `"reason":"`); i >= 0 {
		reason, _, _ = strings.Cut(string(b[i+len(`"reason":"`):]), `"`)
	}
	return resp.StatusCode, reason, nil
}

func (g *garbageClient) close() {
	if g.conn != nil {
		g.conn.Close()
		g.conn = nil
	}
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
	hc := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		if resp != nil {
			return nil, resp.StatusCode, err
		}
		return nil, 0, err
	}
	return conn, http.StatusSwitchingProtocols, nil
}

// scriptCalls is how many Lua script calls (EVALSHA and EVAL) Redis has
// served so far; the token lookup is one.
func scriptCalls(t testing.TB, c *cluster) int64 {
	t.Helper()
	out, err := c.redis.Exec("INFO", "commandstats")
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

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestConnectFloodMeasure is a bounded load measurement, not a check: one
// attacker source (127.0.0.2) floods the node with well-formed garbage
// tokens while legitimate clients, spread over ten other loopback sources,
// each make one connect attempt at a steady pace. It reports how many of
// them succeed and how many Lua script calls per second the flood caused.
//
//	FLOOD_MEASURE=1 go test -run TestConnectFloodMeasure -v ./imserver/
//
// FLOOD_CONNECT_RATE (default 200; 0 is not settable here, use
// FLOOD_NO_GLOBAL=1), FLOOD_SECONDS (10), FLOOD_LEGIT (200),
// FLOOD_WORKERS (32 attacker connections) and FLOOD_MOD (comma-separated
// name=value of the node's limits, see floodMods) vary it.
func TestConnectFloodMeasure(t *testing.T) {
	if os.Getenv("FLOOD_MEASURE") == "" {
		t.Skip("a load measurement: set FLOOD_MEASURE=1")
	}
	rate := envInt("FLOOD_CONNECT_RATE", 200)
	if os.Getenv("FLOOD_NO_GLOBAL") != "" {
		rate = 0
	}
	secs := envInt("FLOOD_SECONDS", 10)
	legit := envInt("FLOOD_LEGIT", 200)
	workers := envInt("FLOOD_WORKERS", 32)
	c := startCluster(t, 1, func(cfg *imserver.Config) {
		cfg.ConnectRate = rate
		floodMods(t, cfg, os.Getenv("FLOOD_MOD"))
	})
	node := c.nodes[0]
	addr := node.Addr().String()
	// The URLs first, so that imhelper's own work is not measured.
	urls := make([]string, legit)
	for i := range urls {
		u, err := c.helper.PrevConnectServer(bg, fmt.Sprintf("legit-%d", i), "")
		if err != nil {
			t.Fatal(err)
		}
		urls[i] = u
	}
	ctx, cancel := context.WithTimeout(bg, time.Duration(secs)*time.Second)
	defer cancel()
	calls0 := scriptCalls(t, c)
	start := time.Now()
	var attacker map[string]int
	done := make(chan struct{})
	go func() {
		defer close(done)
		attacker = flood(ctx, addr, "127.0.0.2", workers)
	}()
	// The legitimate attempts start after a second of flood and are spread
	// over the rest of the window.
	time.Sleep(time.Second)
	gap := (time.Duration(secs)*time.Second - 2*time.Second) / time.Duration(legit)
	var ok atomic.Int64
	var mu sync.Mutex
	failed := map[int]int{}
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, dcancel := context.WithTimeout(bg, 20*time.Second)
			defer dcancel()
			conn, status, _ := dialFrom(dctx, u, fmt.Sprintf("127.0.0.%d", 3+i%10))
			if conn != nil {
				ok.Add(1)
				t.Cleanup(func() { conn.CloseNow() })
				return
			}
			mu.Lock()
			failed[status]++
			mu.Unlock()
		}()
		time.Sleep(gap)
	}
	wg.Wait()
	<-done
	elapsed := time.Since(start)
	calls := scriptCalls(t, c) - calls0
	_, body := getJSON(t, "http://"+node.AdminAddr().String()+"/metrics")
	var refusals []string
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "im_refusals_total{") {
			refusals = append(refusals, strings.TrimPrefix(line, "im_refusals_total"))
		}
	}
	sort.Strings(refusals)
	total := 0
	for _, v := range attacker {
		total += v
	}
	garbage := metricValue(body, `im_refusals_total{reason="token"}`)
	t.Logf("connect-rate %d, mods %q, %d attacker connections, %.1f s", rate, os.Getenv("FLOOD_MOD"), workers, elapsed.Seconds())
	t.Logf("legitimate connects: %d of %d succeeded; failures by HTTP status %v", ok.Load(), legit, failed)
	t.Logf("attacker: %d attempts (%.0f/s), by reason %v", total, float64(total)/elapsed.Seconds(), attacker)
	t.Logf("Lua script calls: %d (%.0f/s); garbage tokens looked up in Redis: %.0f (%.0f/s)",
		calls, float64(calls)/elapsed.Seconds(), garbage, garbage/elapsed.Seconds())
	t.Logf("node refusals: %s", strings.Join(refusals, " "))
}

// floodMods applies FLOOD_MOD to cfg; the measurement knows no other
// settings yet.
func floodMods(t testing.TB, _ *imserver.Config, mods string) {
	if mods != "" {
		t.Fatalf("FLOOD_MOD %q: no settings known", mods)
	}
}
