package imhelper

import (
	"context"
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
}

// Client talks to imserver nodes through Redis.
type Client struct {
	opt    Options
	rc     rueidis.Client
	ownsRC bool
	st     store.Helper // every Redis command goes through it
	log    *slog.Logger

	view atomic.Pointer[nodeView]

	stop    context.CancelFunc
	wg      sync.WaitGroup
	closed  atomic.Bool
	refresh chan struct{}
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
	c := &Client{
		opt:     opt,
		rc:      opt.Redis,
		log:     opt.Logger,
		refresh: make(chan struct{}, 1),
	}
	if c.rc == nil {
		var err error
		if c.rc, err = store.Dial(opt.RedisURL); err != nil {
			return nil, err
		}
		c.ownsRC = true
	}
	c.st = store.NewRedis(c.rc, store.Options{Prefix: opt.Prefix})
	c.view.Store(&nodeView{})
	if err := c.loadNodes(ctx); err != nil {
		if c.ownsRC {
			c.rc.Close()
		}
		return nil, fmt.Errorf("failed to read node registry: %w", err)
	}
	bg, stop := context.WithCancel(context.Background())
	c.stop = stop
	c.wg.Add(1)
	go c.refreshLoop(bg)
	return c, nil
}

// Close stops background work and closes the Redis client if the Client
// dialled it.
func (c *Client) Close() {
	if c.closed.Swap(true) {
		return
	}
	c.stop()
	c.wg.Wait()
	if c.ownsRC {
		c.rc.Close()
	}
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
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := c.loadNodes(cctx); err != nil && ctx.Err() == nil {
			c.log.Warn("imhelper: node registry refresh failed", "err", err)
		}
		cancel()
	}
}

func (c *Client) loadNodes(ctx context.Context) error {
	live, _, err := c.st.Nodes(ctx)
	if err != nil {
		return err
	}
	v := &nodeView{urls: make(map[string]string, len(live)), proto: wire.CommonVersion(live)}
	for _, n := range live {
		v.ids = append(v.ids, n.ID)
		v.urls[n.ID] = n.URL
	}
	c.view.Store(v)
	return nil
}

// Nodes returns the ids of the live nodes in the current view.
func (c *Client) Nodes() []string { return append([]string(nil), c.view.Load().ids...) }

// Owner returns the node that owns clientID in the current view, or "".
func (c *Client) Owner(clientID string) string { return wire.Owner(clientID, c.view.Load().ids) }

// RefreshNodes reloads the node view now instead of waiting for the next
// refresh.
func (c *Client) RefreshNodes(ctx context.Context) error { return c.loadNodes(ctx) }

// nodes returns the current view, reloading it first if it is empty, so a
// service started together with its first node does not fail for a refresh
// interval.
func (c *Client) nodes(ctx context.Context) *nodeView {
	v := c.view.Load()
	if len(v.ids) == 0 {
		if err := c.loadNodes(ctx); err == nil {
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
