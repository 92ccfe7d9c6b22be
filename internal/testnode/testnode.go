// Package testnode is what tests outside imserver need to run the real
// thing: an in-process imserver node that stops when the test ends, and a
// wait on a condition (never on a wall-clock margin: CI runs on a busy box).
package testnode

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/imserver"
)

// MinWait is the least time WaitFor waits before it gives up. A timeout a
// test names is a bound for a broken build, not a margin it relies on: on a
// loaded 2-core CI box a race-enabled node has taken more than 5 s for a
// step that takes milliseconds on a quiet one, so shorter bounds are raised
// to this.
const MinWait = 30 * time.Second

// WaitFor polls fn until it returns nil, failing the test with fn's last
// error once timeout (at least MinWait) has passed.
func WaitFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	timeout = max(timeout, MinWait)
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Quiet is a logger for nodes whose logs the test does not read.
func Quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Start runs a node with cfg (Listen defaults to a free loopback port) and
// shuts it down when the test ends.
func Start(t testing.TB, cfg imserver.Config) *imserver.Server {
	t.Helper()
	return StartOn(t, cfg, nil)
}

// StartOn is Start with the node's Redis client given (nil: it dials
// cfg.RedisURL), as imserver.New takes it.
func StartOn(t testing.TB, cfg imserver.Config, rc rueidis.Client) *imserver.Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	srv, err := imserver.New(cfg, rc, Quiet())
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return srv
}
