package imserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/wire"
)

// Server is one imserver node: it holds WebSocket connections, subscribes to
// its own Redis channel and pushes what arrives to local sockets.
type Server struct {
	cfg     Config
	log     *slog.Logger
	rc      rueidis.Client
	ownsRC  bool
	names   wire.Names
	hub     *hub
	metrics *metrics
	sub     *subscriber
	limiter *rateLimiter

	consumeScript, onlineScript, offlineScript, reapDoneScript *rueidis.Lua

	// stripes serialise the presence and membership changes of one clientId
	// (attach, detach, join, leave) so that their Redis writes keep order.
	stripeSeed maphash.Seed
	stripes    [1024]sync.Mutex

	nodesMu sync.RWMutex
	nodes   []string // live node ids, always including this one; guarded by nodesMu

	started        int64 // unix ms
	connCount      atomic.Int64
	draining       atomic.Bool
	registered     atomic.Bool
	everRegistered atomic.Bool // a registration succeeded once

	regMu        sync.Mutex // serialises lease writes with the final unregister
	unregistered bool       // guarded by regMu

	ctx    context.Context // cancelled when the node stops
	cancel context.CancelFunc
	loops  sync.WaitGroup // background goroutines
	conns  sync.WaitGroup // connection handlers

	ln       net.Listener
	httpSrv  *http.Server
	adminSrv *http.Server
	adminLn  net.Listener
}

// New checks cfg and connects to Redis. redis may be nil, in which case the
// node dials cfg.RedisURL and owns that client; a given client stays the
// caller's to close.
func New(cfg Config, redis rueidis.Client, logger *slog.Logger) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{
		cfg:            cfg,
		log:            logger,
		rc:             redis,
		names:          wire.Names{Prefix: cfg.Prefix},
		started:        time.Now().UnixMilli(),
		hub:            newHub(),
		metrics:        newMetrics(),
		limiter:        newRateLimiter(cfg.ConnectRate),
		stripeSeed:     maphash.MakeSeed(),
		consumeScript:  rueidis.NewLuaScript(wire.ScriptConsumeToken),
		onlineScript:   rueidis.NewLuaScript(wire.ScriptOnline),
		offlineScript:  rueidis.NewLuaScript(wire.ScriptOffline),
		reapDoneScript: rueidis.NewLuaScript(wire.ScriptReapDone),
	}
	if s.rc == nil {
		opt, err := rueidis.ParseURL(cfg.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("failed to parse redis url: %w", err)
		}
		opt.DisableCache = true
		s.rc, err = rueidis.NewClient(opt)
		if err != nil {
			return nil, fmt.Errorf("failed to connect to redis: %w", err)
		}
		s.ownsRC = true
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.sub = newSubscriber(s)
	return s, nil
}

// Start listens, subscribes, registers the node and starts its background
// loops. It returns once the node accepts connections; the node registers
// (and imhelper starts routing to it) once pub/sub works: see WaitReady.
func (s *Server) Start() error {
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("failed to listen: %w", err)
	}
	s.ln = ln
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	if s.cfg.PublicURL == "" {
		host, _, _ := net.SplitHostPort(s.cfg.Listen)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		scheme := "ws"
		if s.cfg.TLSCert != "" {
			scheme = "wss"
		}
		s.cfg.PublicURL = scheme + "://" + net.JoinHostPort(host, port) + "/ws"
	}
	if s.cfg.NodeID == "" {
		hn, _ := os.Hostname()
		if hn == "" {
			hn = "node"
		}
		s.cfg.NodeID = hn + "-" + port
	}
	s.nodes = []string{s.cfg.NodeID}

	// A previous run of this node id may have crashed and left presence
	// behind; clean it before taking new clients.
	s.reap(s.cfg.NodeID)

	mux := http.NewServeMux()
	mux.HandleFunc("/ws", s.handleWS)
	if s.cfg.AdminListen == "" {
		s.adminRoutes(mux)
	} else {
		amux := http.NewServeMux()
		s.adminRoutes(amux)
		if s.adminLn, err = net.Listen("tcp", s.cfg.AdminListen); err != nil {
			ln.Close()
			return fmt.Errorf("failed to listen on admin address: %w", err)
		}
		s.adminSrv = &http.Server{Handler: amux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = s.adminSrv.Serve(s.adminLn) }()
	}
	s.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	if s.cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCert, s.cfg.TLSKey)
		if err != nil {
			ln.Close()
			return fmt.Errorf("failed to load TLS key pair: %w", err)
		}
		s.httpSrv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		ln = tls.NewListener(ln, s.httpSrv.TLSConfig)
	}

	// The subscriber registers the node once it is subscribed, so imhelper
	// never routes to a node that cannot receive yet.
	s.goLoop(s.sub.run)
	s.goLoop(s.registryLoop)
	s.goLoop(s.pingLoop)
	s.goLoop(s.probeLoop)
	go func() { _ = s.httpSrv.Serve(ln) }()
	s.log.Info("imserver started", "node", s.cfg.NodeID, "listen", s.ln.Addr().String(), "public_url", s.cfg.PublicURL)
	return nil
}

func (s *Server) goLoop(fn func(ctx context.Context)) {
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		fn(s.ctx)
	}()
}

// WaitReady blocks until Ready or ctx ends. After Start, a node registers
// itself only once its subscription works, so imhelper cannot route to it
// before then.
func (s *Server) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for !s.Ready() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// NodeID returns the node's id.
func (s *Server) NodeID() string { return s.cfg.NodeID }

// PublicURL returns the URL browsers are given.
func (s *Server) PublicURL() string { return s.cfg.PublicURL }

// Addr returns the WebSocket listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// AdminAddr returns the admin listener's address, or Addr if there is none.
func (s *Server) AdminAddr() net.Addr {
	if s.adminLn != nil {
		return s.adminLn.Addr()
	}
	return s.ln.Addr()
}

// Ready reports whether the node is registered and its pub/sub subscription
// is known to work.
func (s *Server) Ready() bool {
	return !s.draining.Load() && s.registered.Load() && s.sub.healthy()
}

// Connections returns the number of open sockets.
func (s *Server) Connections() int { return int(s.connCount.Load()) }

func (s *Server) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, `{"status":"ok"}`)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if s.Ready() {
			writeJSON(w, http.StatusOK, `{"ready":true}`)
			return
		}
		writeJSON(w, http.StatusServiceUnavailable, `{"ready":false}`)
	})
	mux.Handle("/metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
}

// Shutdown drains the node (SPEC §8): it marks itself draining in the
// registry (imhelper stops routing to it; its lease is kept so nobody reaps
// it meanwhile), stops accepting, closes every socket with 1001 spread over
// DrainWindow, cleans presence (emitting offline events), leaves the
// registry and stops. ctx bounds the whole drain: when it ends, the
// remaining sockets are dropped and, if some presence could not be cleaned,
// the node's lease is left to lapse so that a survivor reaps it.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.draining.CompareAndSwap(false, true) {
		return errors.New("imserver: already shut down")
	}
	s.log.Info("draining", "node", s.cfg.NodeID, "connections", s.Connections())
	s.register(ctx) // now with the draining mark
	if s.httpSrv != nil {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		_ = s.httpSrv.Shutdown(sctx)
		cancel()
	}
	var all []*conn
	s.hub.each(func(c *client) { all = append(all, c.connList()...) })
	window := s.cfg.DrainWindow
	if dl, ok := ctx.Deadline(); ok && time.Until(dl)/2 < window {
		window = time.Until(dl) / 2
	}
	var timers []*time.Timer
	for i, cn := range all {
		cn := cn
		delay := time.Duration(0)
		if len(all) > 1 {
			delay = window * time.Duration(i) / time.Duration(len(all))
		}
		timers = append(timers, time.AfterFunc(delay, func() {
			cn.close(1001, "node draining", wire.ReasonDrain)
		}))
	}
	done := make(chan struct{})
	go func() { s.conns.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		// Out of time: Redis calls fail at once from here on, so the
		// remaining detaches cannot keep us; their presence is left to a
		// survivor's reap.
		s.cancel()
		for _, t := range timers {
			t.Stop()
		}
		for _, cn := range all {
			cn.closeTCP() // CloseNow does nothing once a close handshake began
		}
		<-done
	}
	s.unregister(err == nil && !s.sub.dirty.Load())
	if s.adminSrv != nil {
		_ = s.adminSrv.Close()
	}
	s.cancel()
	s.loops.Wait()
	if s.ownsRC {
		s.rc.Close()
	}
	s.log.Info("stopped", "node", s.cfg.NodeID)
	return err
}

func (s *Server) stripe(id string) *sync.Mutex {
	return &s.stripes[maphash.String(s.stripeSeed, id)%uint64(len(s.stripes))]
}

func (s *Server) redisCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(s.ctx, s.cfg.RedisTimeout)
}

// liveNodes returns the current view of live nodes.
func (s *Server) liveNodes() []string {
	s.nodesMu.RLock()
	defer s.nodesMu.RUnlock()
	return s.nodes
}

// rateLimiter is a token bucket refilled continuously; nil allows everything.
type rateLimiter struct {
	mu     sync.Mutex
	rate   float64
	tokens float64
	last   time.Time
}

func newRateLimiter(perSec int) *rateLimiter {
	if perSec <= 0 {
		return nil
	}
	return &rateLimiter{rate: float64(perSec), tokens: float64(perSec), last: time.Now()}
}

func (l *rateLimiter) allow() bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.tokens = min(l.rate, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	if l.tokens < 1 {
		return false
	}
	l.tokens--
	return true
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body + "\n"))
}

// Nodes returns this node's current view of the live nodes (including
// itself), sorted.
func (s *Server) Nodes() []string { return append([]string(nil), s.liveNodes()...) }
