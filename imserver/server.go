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

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/version"
	"github.com/imbroker/imbroker/internal/wire"
)

// Server is one imserver node: it holds WebSocket connections, subscribes to
// its own Redis channel and pushes what arrives to local sockets.
//
// Its parts, one file each: accept.go (the handshake), conn.go and
// writer.go (one socket), hub.go (local clients and channels), routing.go
// (what arrives from Redis, receipts, moves), presence.go (online,
// offline, joins, resync), recovery.go (history positions, replays and
// fills), grace.go (the offline grace), forward.go (messages for moving
// clients), registry.go (the lease and the registry loop,
// reaping), heartbeat.go (the ping loop), subscriber.go (the pub/sub
// connection and its workers), probe.go (the probe loop), outbox.go (what
// the node publishes itself), ratelimit.go (the connect-rate limiters),
// source.go (whom an attempt comes from).
// Every Redis command is in internal/store.
type Server struct {
	cfg     Config
	log     *slog.Logger
	rc      rueidis.Client // nil unless the node dialled it
	st      store.Node
	hub     *hub
	metrics *metrics
	sub     *subscriber
	outbox  *outbox
	limiter *rateLimiter
	sources *sourceLimiter // nil if both per-source limits are off
	// forwardedHint is set once a forwarded request from an untrusted
	// peer has been logged (-trusted-proxies may be missing).
	forwardedHint atomic.Bool

	// stripes serialise the presence and membership changes of one clientId
	// (attach, detach, join, leave) so that their Redis writes keep order.
	stripeSeed maphash.Seed
	stripes    [1024]sync.Mutex
	// testStripeWait is nil but in tests (lockStripe).
	testStripeWait func(id string)

	nodesMu sync.RWMutex
	nodes   []string // live node ids, always including this one; guarded by nodesMu
	// peerVersion is the node message version the live nodes all read
	// (wire.CommonVersion), for the receipts this node sends them.
	peerVersion atomic.Int64

	started        int64 // unix ms
	connCount      atomic.Int64
	draining       atomic.Bool
	registered     atomic.Bool
	everRegistered atomic.Bool // a registration succeeded once
	presenceDirty  atomic.Bool // presence in Redis needs a resync
	// What the last INFO memory said (checkRedisMemory).
	redisFull   atomic.Bool // at maxmemory: refuse new connections
	redisUnsafe atomic.Bool // maxmemory-policy can evict broker keys: not ready

	// fillSlots bounds the history reads in flight (recovery.go), so that a
	// sweep over every socket does not queue thousands at once.
	fillSlots    chan struct{}
	sweepPending atomic.Bool  // a sweepStreams is scheduled
	losses       unkeptLosses // dropped messages no stream kept, told at the next sweep
	behind       atomic.Int32 // subscriber workers with a backlog (backlog.behind)
	// forwardUntil (unix nanos) ends the forwarding window that a change
	// of the node set opens (forward.go); forwardSlots bounds its lookups.
	forwardUntil atomic.Int64
	forwardSlots chan struct{}
	lastSweep    atomic.Int64 // unix nanos of the last sweep

	// grace holds the clients whose last socket closed within the offline
	// grace (grace.go); graceWG counts them for the drain.
	graceMu sync.Mutex
	grace   map[string]*graceEntry // guarded by graceMu
	graceWG sync.WaitGroup

	regMu        sync.Mutex // serialises lease writes with the final unregister
	unregistered bool       // guarded by regMu

	ctx    context.Context // cancelled when the node stops
	cancel context.CancelFunc

	// Every goroutine the server starts is tracked (startGoroutine), so
	// that Shutdown returns only once none of them can touch Redis or a
	// socket any more.
	grMu      sync.Mutex
	grStopped bool // guarded by grMu
	grWG      sync.WaitGroup
	sockets   sync.WaitGroup // attached sockets, for the drain

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
	rc := redis
	var owned rueidis.Client
	if rc == nil {
		var err error
		if rc, err = store.Dial(cfg.RedisURL); err != nil {
			return nil, err
		}
		owned = rc
	}
	st, err := store.Open(rc, store.Options{Prefix: cfg.Prefix, EventStreamMaxLen: cfg.EventStreamMaxLen})
	if err != nil {
		if owned != nil {
			owned.Close()
		}
		return nil, err
	}
	s := &Server{
		cfg:          cfg,
		log:          logger,
		rc:           owned,
		st:           st,
		started:      time.Now().UnixMilli(),
		hub:          newHub(),
		metrics:      newMetrics(),
		limiter:      newRateLimiter(cfg.ConnectRate),
		stripeSeed:   maphash.MakeSeed(),
		fillSlots:    make(chan struct{}, 64),
		forwardSlots: make(chan struct{}, forwardSlots),
		grace:        make(map[string]*graceEntry),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.outbox = newOutbox(s.st, s.metrics, s.log, cfg.RedisTimeout)
	s.metrics.registerReady(s.Ready)
	s.metrics.registerRedisMemory(s.redisFull.Load, s.redisUnsafe.Load)
	s.sources = newSourceLimiter(cfg.ConnectRatePerSource, cfg.TokenFailuresPerSource, s.metrics.untracked.Inc)
	s.metrics.registerSources(func() int64 {
		if s.sources == nil {
			return 0
		}
		return s.sources.tracked.Load()
	})
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
	s.peerVersion.Store(wire.NodeMsgVersion)
	s.sub = s.newSubscriber()

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
		s.adminSrv = &http.Server{Handler: amux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: s.cfg.IdleTimeout, ReadTimeout: 20 * time.Second}
		adminSrv, adminLn := s.adminSrv, s.adminLn
		s.startGoroutine(func() { _ = adminSrv.Serve(adminLn) })
	}
	s.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// A connection that sent one cheap complete request (GET /ws
		// without an upgrade gets 426) would otherwise hold a descriptor
		// for ever in keep-alive. ReadTimeout bounds a trickled request;
		// its deadline is cleared when a socket is hijacked (writer.go).
		IdleTimeout: s.cfg.IdleTimeout,
		ReadTimeout: 20 * time.Second,
		ErrorLog:    slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	ln = newFDGuard(ln, s.cfg.TLSCert != "", func() { s.metrics.refusals.WithLabelValues("fds").Inc() })
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
	s.startLoop(s.sub.run)
	s.startLoop(s.outbox.run)
	s.startLoop(s.registryLoop)
	s.startLoop(s.pingLoop)
	s.startLoop(s.probeLoop)
	if s.sources != nil {
		s.startLoop(s.sources.sweepLoop)
	}
	httpSrv := s.httpSrv
	s.startGoroutine(func() { _ = httpSrv.Serve(ln) })
	s.log.Info("imserver started", "node", s.cfg.NodeID, "listen", s.ln.Addr().String(), "public_url", s.cfg.PublicURL, "version", version.Get().String())
	return nil
}

// startGoroutine runs fn in a goroutine that Shutdown waits for, and
// reports false (without running fn) once the server has stopped.
func (s *Server) startGoroutine(fn func()) bool {
	s.grMu.Lock()
	if s.grStopped {
		s.grMu.Unlock()
		return false
	}
	s.grWG.Add(1)
	s.grMu.Unlock()
	go func() {
		defer s.grWG.Done()
		fn()
	}()
	return true
}

// startLoop runs a background loop until the node stops.
func (s *Server) startLoop(fn func(ctx context.Context)) {
	s.startGoroutine(func() { fn(s.ctx) })
}

// stopGoroutines refuses new goroutines and waits for the running ones.
func (s *Server) stopGoroutines() {
	s.grMu.Lock()
	s.grStopped = true
	s.grMu.Unlock()
	s.grWG.Wait()
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
	return !s.draining.Load() && s.registered.Load() && s.sub.healthy() && !s.redisUnsafe.Load()
}

// Connections returns the number of open sockets.
func (s *Server) Connections() int { return int(s.connCount.Load()) }

// Nodes returns this node's current view of the live nodes (including
// itself), sorted.
func (s *Server) Nodes() []string { return append([]string(nil), s.liveNodes()...) }

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

// Shutdown drains the node: it marks itself draining in the registry
// (imhelper stops routing to it; its lease is kept so nobody reaps it
// meanwhile), stops accepting, closes every socket with 1001 spread over
// DrainWindow, cleans presence (emitting offline events), leaves the
// registry and stops. ctx bounds the whole drain: when it ends, the
// remaining sockets are dropped and, if some presence could not be cleaned,
// the node's lease is left to lapse so that a survivor reaps it. It returns
// once every goroutine the node started has ended.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.draining.CompareAndSwap(false, true) {
		return errors.New("imserver: already shut down")
	}
	s.log.Info("draining", "node", s.cfg.NodeID, "connections", s.Connections())
	s.register(ctx) // now with the draining mark
	if s.httpSrv != nil {
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		if s.httpSrv.Shutdown(sctx) != nil {
			_ = s.httpSrv.Close()
		}
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
		delay := time.Duration(0)
		if len(all) > 1 {
			delay = window * time.Duration(i) / time.Duration(len(all))
		}
		// The callback only starts the close (a tracked goroutine).
		timers = append(timers, time.AfterFunc(delay, func() {
			cn.close(wire.CloseGoingAway, "node draining", wire.ReasonDrain)
		}))
	}
	done := make(chan struct{})
	s.startGoroutine(func() { s.sockets.Wait(); close(done) })
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
			cn.w.closeTCP() // CloseNow does nothing once a close handshake began
		}
		<-done
	}
	if err == nil {
		// The clients of the closed sockets reconnect elsewhere within
		// their grace; then their entries here go without an event.
		s.flushGrace(ctx)
	}
	s.unregister(err == nil && !s.presenceDirty.Load())
	if s.adminSrv != nil {
		_ = s.adminSrv.Close()
	}
	s.cancel()
	s.stopGoroutines()
	if s.rc != nil {
		s.rc.Close()
	}
	s.log.Info("stopped", "node", s.cfg.NodeID)
	return err
}

func (s *Server) stripe(id string) *sync.Mutex {
	return &s.stripes[maphash.String(s.stripeSeed, id)%uint64(len(s.stripes))]
}

// lockStripe locks id's stripe and returns it. testStripeWait, set only by
// tests before Start, hears of every lock that has to wait: that is how a
// test holding a client's stripe (a connect between its script and its
// socket reaching the hub) learns that a join, a detach, a grace's end or
// a resync is parked behind it rather than done.
func (s *Server) lockStripe(id string) *sync.Mutex {
	mu := s.stripe(id)
	if s.testStripeWait != nil {
		if mu.TryLock() {
			return mu
		}
		s.testStripeWait(id)
	}
	mu.Lock()
	return mu
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

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body + "\n"))
}
