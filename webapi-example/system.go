package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
)

// system is everything one webapi-example process runs. Only where Redis
// lives differs between the modes: embedded starts miniredis and a node in
// this process, external dials IM_REDIS_URL. From the Redis client on, both
// modes run the same code.
type system struct {
	embedded *miniredis.Miniredis // nil in external mode
	node     *imserver.Server     // nil in external mode
	rc       rueidis.Client
	im       *imhelper.Client
	app      *App
	ln       net.Listener
	web      *http.Server

	stopEvents context.CancelFunc
	eventsDone chan struct{}
}

// startSystem starts every part and returns once the web API accepts
// requests. On error, whatever was started is stopped again.
func startSystem(ctx context.Context, cfg config, log *slog.Logger) (sys *system, err error) {
	sys = &system{}
	defer func() {
		if err != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = sys.Close(cctx)
		}
	}()

	// Listen first: the embedded node must allow the page's origin.
	if sys.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		return sys, fmt.Errorf("failed to listen on %s (set WEBAPI_ADDR to use another address): %w", cfg.Addr, err)
	}

	if cfg.RedisURL == "" {
		if sys.embedded, err = miniredis.Run(); err != nil {
			return sys, fmt.Errorf("failed to start embedded redis: %w", err)
		}
		// miniredis speaks RESP2 only and has no cluster commands;
		// DialEmbeddedRedis sets the options rueidis needs for it.
		sys.rc, err = imhelper.DialEmbeddedRedis(sys.embedded.Addr())
	} else {
		sys.rc, err = imhelper.DialRedis(cfg.RedisURL)
	}
	if err != nil {
		return sys, fmt.Errorf("IM_REDIS_URL: %w", err)
	}

	if sys.embedded != nil {
		sys.node, err = imserver.New(imserver.Config{
			Listen:         cfg.NodeAddr,
			OriginPatterns: pageOrigins(sys.ln.Addr()),
			// A single-process demo has nobody to spread reconnects for.
			DrainWindow: 500 * time.Millisecond,
		}, sys.rc, log)
		if err != nil {
			return sys, fmt.Errorf("failed to configure the embedded node: %w", err)
		}
		if err = sys.node.Start(); err != nil {
			sys.node = nil
			return sys, fmt.Errorf("failed to start the embedded node: %w", err)
		}
		// The node registers itself once its subscription works; waiting for
		// that lets imhelper see it from the first request on.
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = sys.node.WaitReady(rctx)
		cancel()
		if err != nil {
			return sys, fmt.Errorf("the embedded node did not become ready: %w", err)
		}
	}

	if sys.im, err = imhelper.New(ctx, imhelper.Options{Redis: sys.rc, Logger: log, History: historyOptions()}); err != nil {
		return sys, fmt.Errorf("failed to start imhelper: %w", err)
	}
	adminToken := cfg.AdminToken
	if adminToken == "" {
		adminToken = randomHex(16)
	}
	sys.app = NewApp(sys.im, log, adminToken)
	sys.app.SecureCookies = cfg.SecureCookies
	if err = sys.app.Init(ctx); err != nil {
		return sys, err
	}

	evCtx, stopEvents := context.WithCancel(context.Background())
	sys.stopEvents, sys.eventsDone = stopEvents, make(chan struct{})
	go func() {
		defer close(sys.eventsDone)
		sys.app.ConsumeEvents(evCtx, consumerName(sys.ln.Addr()))
	}()

	sys.web = &http.Server{
		Handler:           sys.app.Routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	go func() { _ = sys.web.Serve(sys.ln) }()
	log.Info("webapi-example started", "url", sys.URL(), "embedded", sys.embedded != nil)
	return sys, nil
}

// historyOptions turns on the broker's history for the rooms' channels, so
// that a page that reconnects (a node restart, a move, a crash, a network
// drop) gets the room messages it missed replayed rather than reloading
// the room. Private messages keep the default personal history (100
// messages for 2 minutes). A gap larger than this makes the page reload.
func historyOptions() *imhelper.HistoryOptions {
	return &imhelper.HistoryOptions{
		Channels: []imhelper.HistoryRule{{Prefix: chanPrefix, Size: roomReplaySize, TTL: roomReplayTTL}},
	}
}

const (
	roomReplaySize = 200
	roomReplayTTL  = 5 * time.Minute
)

// URL is the address to open in a browser.
func (s *system) URL() string {
	host, port, _ := net.SplitHostPort(s.ln.Addr().String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// Close stops the web API and the event consumer, drains the embedded node
// (its sockets close with 1001, so pages reconnect) and releases Redis. Safe
// on a partially started system.
func (s *system) Close(ctx context.Context) error {
	var errs []error
	if s.web != nil {
		errs = append(errs, s.web.Shutdown(ctx))
	} else if s.ln != nil {
		errs = append(errs, s.ln.Close())
	}
	// The event consumer stops before the node: it would otherwise broadcast
	// presence for the node's own drain while the node stops, and a message
	// arriving then races with the node closing its pub/sub worker channels
	// (imserver/pubsub.go, subscriber.run).
	if s.stopEvents != nil {
		s.stopEvents()
		<-s.eventsDone
	}
	if s.node != nil {
		errs = append(errs, s.node.Shutdown(ctx))
	}
	if s.im != nil {
		s.im.Close()
	}
	if s.rc != nil {
		s.rc.Close()
	}
	if s.embedded != nil {
		s.embedded.Close()
	}
	return errors.Join(errs...)
}

// pageOrigins are the Origin host patterns under which the page may be
// opened, for the embedded node's Origin check: the page and the node listen
// on different ports, so they are never "same host".
func pageOrigins(addr net.Addr) []string {
	host, port, _ := net.SplitHostPort(addr.String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		return []string{"*:" + port}
	}
	return []string{net.JoinHostPort(host, port), "localhost:" + port}
}

// consumerName names this process in the event consumer group. It is stable
// across restarts, so a restarted process first handles the events it left
// unacknowledged, and distinct for two processes on one host.
func consumerName(addr net.Addr) string {
	hn, _ := os.Hostname()
	if hn == "" {
		hn = "webapi"
	}
	return hn + "-" + strconv.Itoa(addr.(*net.TCPAddr).Port)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails on supported platforms
	return hex.EncodeToString(b)
}
