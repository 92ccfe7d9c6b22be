package imhelper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// Options configures a Client. Every zero value means the default in the
// field's comment.
type Options struct {
	// Redis is an existing client to use; the caller keeps ownership and
	// closes it. If nil, the Client dials RedisURL and closes it on Close.
	Redis rueidis.Client
	// RedisURL is used when Redis is nil. Default redis://127.0.0.1:6379/0.
	RedisURL string
	// Prefix of Redis keys and channels; must match the nodes'. Default "im:".
	// EventStreamMaxLen is not an option here: only nodes append events.
	Prefix string
	// TokenTTL is how long a PrevConnectServer URL stays usable. Default 30s.
	TokenTTL time.Duration
	// MaxPayload is the largest business payload in bytes. Default 64 KiB.
	MaxPayload int
	// RefreshInterval is how often the view of live nodes is refreshed.
	// Default 1s.
	RefreshInterval time.Duration
	// Logger receives background errors. Default slog.Default().
	Logger *slog.Logger
	// CallTimeout bounds every call whose context has no deadline, New
	// included (OnlineClients: each page). A call returns by its deadline,
	// this one or its context's, even while Redis hangs, with an error that
	// is ErrRedisTimeout (and context.DeadlineExceeded). Default
	// DefaultCallTimeout (5s).
	CallTimeout time.Duration
	// History says which streams keep a window of recent messages, so
	// that a browser that reconnects is sent what it missed (see
	// HistoryOptions). Nil: personal streams keep 100 messages for 2
	// minutes, channels keep none.
	History *HistoryOptions
}

// Client talks to imserver nodes through Redis.
type Client struct {
	opt    Options
	rc     rueidis.Client
	ownsRC bool
	st     store.Helper // every Redis command goes through it
	log    *slog.Logger

	view atomic.Pointer[nodeView]

	bg      context.Context // ends on Close
	stop    context.CancelFunc
	wg      sync.WaitGroup
	closed  atomic.Bool
	refresh chan struct{}

	// calls counts the calls in flight (see call); mu orders their start
	// with Close, so that none starts once Close waits for them.
	mu    sync.RWMutex
	calls sync.WaitGroup
}

// nodeView is an immutable snapshot of the live nodes.
type nodeView struct {
	ids  []string
	urls map[string]string
	// proto is the node message version to write: the lowest that every
	// live node reads, so that old nodes understand it during an upgrade.
	proto int
}

// New creates a Client and loads the node view once. It does not fail when
// no node is up yet; calls that need one return ErrNoNodes until one is.
// Like every call it returns by ctx's deadline, or Options.CallTimeout if
// ctx has none, with ErrRedisTimeout if Redis did not answer by then.
func New(ctx context.Context, opt Options) (*Client, error) {
	if opt.RedisURL == "" {
		opt.RedisURL = "redis://127.0.0.1:6379/0"
	}
	if opt.Prefix == "" {
		opt.Prefix = store.DefaultPrefix
	}
	if opt.TokenTTL <= 0 {
		opt.TokenTTL = 30 * time.Second
	}
	if opt.MaxPayload <= 0 {
		opt.MaxPayload = wire.DefaultMaxPayload
	}
	if opt.RefreshInterval <= 0 {
		opt.RefreshInterval = time.Second
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if opt.CallTimeout <= 0 {
		opt.CallTimeout = DefaultCallTimeout
	}
	hist := HistoryOptions{}
	if opt.History != nil {
		hist = *opt.History
	}
	if hist.Clients == nil {
		hist.Clients = []HistoryRule{DefaultClientHistory}
	}
	hist.Clients = append([]HistoryRule(nil), hist.Clients...)
	hist.Channels = append([]HistoryRule(nil), hist.Channels...)
	if err := hist.check(); err != nil {
		return nil, err
	}
	opt.History = &hist
	c := &Client{
		opt:     opt,
		rc:      opt.Redis,
		log:     opt.Logger,
		refresh: make(chan struct{}, 1),
	}
	c.view.Store(&nodeView{})
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	bg, stop := context.WithCancel(context.Background())
	c.bg, c.stop = bg, stop
	c.wg.Add(1)
	go c.refreshLoop(bg)
	return c, nil
}

// connect dials Redis unless Options.Redis was given, and loads the node
// view, by ctx's deadline (or CallTimeout): rueidis dials when the client is
// made, with its own dial timeout. A client that comes up after New gave up
// is closed when it does.
func (c *Client) connect(ctx context.Context) error {
	ctx, cancel := bound(ctx, c.opt.CallTimeout)
	defer cancel()
	st, err := await(ctx, "New", func(ctx context.Context) (*store.Redis, error) {
		rc, ownsRC := c.opt.Redis, false
		if rc == nil {
			var err error
			if rc, err = store.Dial(c.opt.RedisURL); err != nil {
				return nil, err
			}
			ownsRC = true
		}
		// c is not shared yet; the view written by an abandoned dial is
		// never read.
		st, err := store.Open(rc, store.Options{Prefix: c.opt.Prefix})
		if err == nil {
			if err = loadNodes(ctx, st, &c.view); err != nil {
				err = fmt.Errorf("failed to read node registry: %w", err)
			}
		}
		if err != nil {
			if ownsRC {
				rc.Close()
			}
			return nil, err
		}
		return st, nil
	}, func(st *store.Redis, err error) { // close what comes up too late (within rueidis' dial timeout)
		if err == nil && c.opt.Redis == nil {
			st.Client().Close()
		}
	})
	if err != nil {
		return err
	}
	c.st, c.rc, c.ownsRC = st, st.Client(), c.opt.Redis == nil
	return nil
}

// Close stops background work, waits for the calls in flight (a call that
// returned ErrRedisTimeout may still be waiting in the Redis client, for at
// most its timeouts: a few seconds with DialRedis' client) and closes the
// Redis client if the Client dialled it.
func (c *Client) Close() {
	c.mu.Lock()
	already := c.closed.Swap(true)
	c.mu.Unlock()
	if already {
		return
	}
	c.stop()
	c.wg.Wait()
	if c.ownsRC {
		c.rc.Close() // fails the commands still waiting
	}
	c.calls.Wait()
}

// Redis returns the underlying client, e.g. for business data in the same
// Redis.
func (c *Client) Redis() rueidis.Client { return c.rc }

// DialRedis connects to a redis:// or rediss:// URL the way nodes and
// imhelper do, for a caller that shares one client between them.
func DialRedis(url string) (rueidis.Client, error) { return store.Dial(url) }

// DialEmbeddedRedis connects to an embedded Redis-protocol server for tests
// and demos (github.com/alicebob/miniredis/v2 at addr), with the options
// that server needs.
func DialEmbeddedRedis(addr string) (rueidis.Client, error) { return store.DialEmbedded(addr) }

func (c *Client) refreshLoop(ctx context.Context) {
	defer c.wg.Done()
	t := time.NewTicker(c.opt.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.refresh:
		}
		cctx, cancel := context.WithTimeout(ctx, refreshTimeout)
		if err := c.RefreshNodes(cctx); err != nil && ctx.Err() == nil && !errors.Is(err, ErrClosed) {
			c.log.Warn("imhelper: node registry refresh failed", "err", err)
		}
		cancel()
	}
}

// refreshTimeout bounds one background reload of the node view.
const refreshTimeout = 5 * time.Second

// loadNodes reads the live nodes into *view. Callers bound it (call).
func loadNodes(ctx context.Context, st store.Registry, view *atomic.Pointer[nodeView]) error {
	live, _, err := st.Nodes(ctx)
	if err != nil {
		return err
	}
	v := &nodeView{urls: make(map[string]string, len(live)), proto: wire.CommonVersion(live)}
	for _, n := range live {
		v.ids = append(v.ids, n.ID)
		v.urls[n.ID] = n.URL
	}
	view.Store(v)
	return nil
}

// Nodes returns the ids of the live nodes in the current view.
func (c *Client) Nodes() []string { return append([]string(nil), c.view.Load().ids...) }

// Owner returns the node that owns clientID in the current view, or "".
func (c *Client) Owner(clientID string) string { return wire.Owner(clientID, c.view.Load().ids) }

// RefreshNodes reloads the node view now instead of waiting for the next
// refresh.
func (c *Client) RefreshNodes(ctx context.Context) error {
	return call0(c, ctx, "RefreshNodes", func(ctx context.Context) error { return loadNodes(ctx, c.st, &c.view) })
}

// nodes returns the current view, reloading it first if it is empty, so a
// service started together with its first node does not fail for a refresh
// interval. It runs inside a call.
func (c *Client) nodes(ctx context.Context) *nodeView {
	v := c.view.Load()
	if len(v.ids) == 0 {
		if err := loadNodes(ctx, c.st, &c.view); err == nil {
			v = c.view.Load()
		}
	}
	return v
}

func (c *Client) check() error {
	if c.closed.Load() {
		return ErrClosed
	}
	return nil
}
