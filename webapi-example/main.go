// Command webapi-example is a small chat product built on imhelper: a go-chi
// business API and a browser page that uses the JS client package
// (imclient/ in the repository).
//
// With no configuration it starts a whole single-machine system in one
// process: an embedded Redis-protocol server (miniredis), one imserver node
// and the web API. With IM_REDIS_URL set it uses that Redis and expects
// imserver nodes to be started separately. See docs/example.md.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func main() {
	cfg := configFromEnv(os.Getenv)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	sys, err := startSystem(ctx, cfg, log)
	if err != nil {
		log.Error("failed to start", "err", err)
		os.Exit(1)
	}
	if sys.embedded != nil {
		fmt.Printf("\nEmbedded mode: in-process Redis (miniredis) at %s, imserver node at %s\n", sys.embedded.Addr(), sys.node.PublicURL())
	} else {
		fmt.Printf("\nUsing Redis at %s; imserver nodes run separately.\n", cfg.RedisURL)
	}
	if cfg.AdminToken == "" {
		fmt.Printf("Admin token (for kicking users): %s\n", sys.app.adminToken)
	}
	fmt.Printf("Open %s in two browsers and chat.\n\n", sys.URL())

	<-ctx.Done()
	stop()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := sys.Close(sctx); err != nil {
		log.Warn("shutdown did not finish cleanly", "err", err)
	}
}

// config is read from the environment; every variable is optional.
type config struct {
	// Addr is where the web API and page listen (WEBAPI_ADDR, default
	// 127.0.0.1:8080).
	Addr string
	// RedisURL selects the external mode (IM_REDIS_URL). Empty starts the
	// embedded Redis and an in-process imserver node.
	RedisURL string
	// NodeAddr is the embedded node's WebSocket listener (WEBAPI_NODE_ADDR,
	// default 127.0.0.1:0, a free port).
	NodeAddr string
	// AdminToken protects the kick endpoint (WEBAPI_ADMIN_TOKEN). Empty
	// generates a random one that is printed at startup.
	AdminToken string
	// SecureCookies marks the session cookie Secure although the request
	// arrived without TLS, because a proxy in front ended it
	// (WEBAPI_SECURE_COOKIES=true).
	SecureCookies bool
}

func configFromEnv(getenv func(string) string) config {
	c := config{
		Addr:       getenv("WEBAPI_ADDR"),
		RedisURL:   getenv("IM_REDIS_URL"),
		NodeAddr:   getenv("WEBAPI_NODE_ADDR"),
		AdminToken: getenv("WEBAPI_ADMIN_TOKEN"),
	}
	c.SecureCookies, _ = strconv.ParseBool(getenv("WEBAPI_SECURE_COOKIES"))
	if c.Addr == "" {
		c.Addr = "127.0.0.1:8080"
	}
	if c.NodeAddr == "" {
		c.NodeAddr = "127.0.0.1:0"
	}
	return c
}
