//go:build measure

// The flood measurement is a command, not part of CI (which never skips):
// build tag measure.

package imserver

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v >= 0 {
		return v
	}
	return def
}

// TestConnectFloodMeasure is a bounded load measurement, not a check: one
// attacker source (127.0.0.2) floods the node with well-formed garbage
// tokens on FLOOD_WORKERS keep-alive connections (default 32) for
// FLOOD_SECONDS (10), while FLOOD_LEGIT (200) legitimate clients, spread
// over ten other loopback sources (127.0.0.3–12), each make one connect
// attempt at a steady pace from the second second on. It reports how many
// of them succeed and how many garbage tokens (and Lua script calls in
// all) Redis served per second. FLOOD_CONNECT_RATE is -connect-rate
// (default 200; 0: none), FLOOD_PER_SOURCE and FLOOD_FAILURES are
// -connect-rate-per-source and -token-failures-per-source (default: the
// node's defaults; -1 turns them off, which is the node before them).
//
//	go test -tags measure -run TestConnectFloodMeasure -v ./imserver/
//	FLOOD_PER_SOURCE=-1 FLOOD_FAILURES=-1 go test -tags measure -run TestConnectFloodMeasure -v ./imserver/
func TestConnectFloodMeasure(t *testing.T) {
	cfg := Config{ConnectRate: envInt("FLOOD_CONNECT_RATE", 200)}
	for name, p := range map[string]*int{"FLOOD_PER_SOURCE": &cfg.ConnectRatePerSource, "FLOOD_FAILURES": &cfg.TokenFailuresPerSource} {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			*p = n
		}
	}
	secs := max(3, envInt("FLOOD_SECONDS", 10))
	legit := max(1, envInt("FLOOD_LEGIT", 200))
	workers := max(1, envInt("FLOOD_WORKERS", 32))
	s, r := floodNode(t, cfg, nil, nil)
	addr := s.Addr().String()
	urls := make([]string, legit)
	for i := range urls {
		urls[i] = s.PublicURL() + "?token=" + issueToken(t, s, fmt.Sprintf("legit-%d", i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs)*time.Second)
	defer cancel()
	calls0 := scriptCalls(t, r)
	start := time.Now()
	var attacker map[string]int
	done := make(chan struct{})
	go func() {
		defer close(done)
		attacker = flood(ctx, addr, "127.0.0.2", workers)
	}()
	time.Sleep(time.Second)
	gap := (time.Duration(secs)*time.Second - 2*time.Second) / time.Duration(legit)
	var ok atomic.Int64
	var mu sync.Mutex
	failed := map[string]int{}
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dctx, dcancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer dcancel()
			conn, status, err := dialFrom(dctx, u, fmt.Sprintf("127.0.0.%d", 3+i%10))
			if conn != nil {
				ok.Add(1)
				t.Cleanup(func() { conn.CloseNow() })
				return
			}
			mu.Lock()
			failed[fmt.Sprintf("%d %v", status, err)]++
			mu.Unlock()
		}()
		time.Sleep(gap)
	}
	wg.Wait()
	<-done
	elapsed := time.Since(start).Seconds()
	calls := scriptCalls(t, r) - calls0
	var reasons []string
	for _, reason := range []string{"token", "token_backoff", "source_rate", "rate", "redis"} {
		reasons = append(reasons, fmt.Sprintf("%s=%d", reason, s.refusalCount(reason)))
	}
	sort.Strings(reasons)
	total := 0
	for _, v := range attacker {
		total += v
	}
	garbage := float64(s.refusalCount("token"))
	t.Logf("-connect-rate %d, -connect-rate-per-source %d, -token-failures-per-source %d; %d attacker connections; %.1f s",
		s.cfg.ConnectRate, s.cfg.ConnectRatePerSource, s.cfg.TokenFailuresPerSource, workers, elapsed)
	t.Logf("legitimate connects: %d of %d succeeded; failures %v", ok.Load(), legit, failed)
	t.Logf("attacker: %d attempts (%.0f/s), by reason %v", total, float64(total)/elapsed, attacker)
	t.Logf("garbage tokens looked up in Redis: %.0f (%.0f/s); Lua script calls in all: %d (%.0f/s)",
		garbage, garbage/elapsed, calls, float64(calls)/elapsed)
	t.Logf("node refusals: %s; sources tracked at the end: %d", strings.Join(reasons, " "), s.sources.trackedOrZero())
}

func (l *sourceLimiter) trackedOrZero() int64 {
	if l == nil {
		return 0
	}
	return l.tracked.Load()
}
