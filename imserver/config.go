package imserver

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// Config configures a node. The zero value of every field means the default
// given in its comment; docs/configuration.md lists the same with the flag
// and IM_* environment variable of each.
type Config struct {
	// Listen is the address of the WebSocket listener. Default ":6001".
	Listen string
	// AdminListen, if set, serves /healthz, /readyz and /metrics on a separate
	// address; otherwise they are served on Listen.
	AdminListen string
	// PublicURL is the ws:// or wss:// URL of this node's WebSocket endpoint
	// that browsers are given. Default ws://<Listen host, or 127.0.0.1>:<port>/ws.
	PublicURL string
	// NodeID names this node in Redis. Default "<hostname>-<port>", stable
	// across restarts so that clients hash to the same node again.
	NodeID string
	// RedisURL is the Redis to use, e.g. redis://127.0.0.1:6379/0.
	// Default redis://127.0.0.1:6379/0.
	RedisURL string
	// Prefix of every Redis key and channel. Default "im:".
	Prefix string
	// OriginPatterns are the allowed Origin host patterns (path.Match syntax,
	// e.g. "*.example.com"). Empty allows only same-host requests and clients
	// that send no Origin (non-browser clients).
	OriginPatterns []string
	// TLSCert and TLSKey, if both set, serve TLS directly.
	TLSCert, TLSKey string

	// LeaseTTL is how long the node's registry entry lives without refresh.
	// Default 10s; refreshed every LeaseTTL/3.
	LeaseTTL time.Duration
	// PingInterval is how often each socket is pinged. Default 25s.
	PingInterval time.Duration
	// PongTimeout is how long a ping may go unanswered. Default 10s.
	PongTimeout time.Duration
	// WriteTimeout: a socket whose write has been blocked for longer is
	// dropped as a slow consumer (checked every WriteTimeout/5, at most every
	// 2s). Default 10s.
	WriteTimeout time.Duration
	// MaxQueueBytes bounds a socket's outbound queue; a socket over it is
	// closed with CloseSlowConsumer. Default 1 MiB.
	MaxQueueBytes int
	// ReadLimit is the largest client frame; larger closes with 1009.
	// Default 4096.
	ReadLimit int64
	// MaxConns is the most sockets this node holds; more get HTTP 503.
	// Default 0: unlimited.
	MaxConns int
	// MaxConnsPerClient is the most sockets one clientId may hold; more get
	// HTTP 429. Default 0: unlimited.
	MaxConnsPerClient int
	// ConnectRate is the most new sockets per second; more get HTTP 429.
	// Default 0: unlimited.
	ConnectRate int
	// ConnectRatePerSource is the most connection attempts per second from
	// one source (an IPv4 address or an IPv6 /64; see TrustedProxies), in
	// bursts of up to two seconds' worth; more get HTTP 429. Checked before
	// ConnectRate, so one source cannot spend the node's budget. Default
	// 20; negative: unlimited.
	ConnectRatePerSource int
	// TokenFailuresPerSource is how many failed tokens (missing, expired,
	// used, malformed, for another node) a source may present before each
	// further failure refuses it with HTTP 429 without a Redis lookup, for
	// 1 s doubling up to 30 s; a success halves its count, time forgets one
	// failure per 30 s. Default 10; negative: off.
	TokenFailuresPerSource int
	// TrustedProxies are the addresses and CIDR prefixes of proxies whose
	// X-Forwarded-For (rightmost entry that is not a trusted proxy) or,
	// without it, X-Real-IP names the client for the per-source limits.
	// Default empty: the TCP peer is the client.
	TrustedProxies []string
	trusted        []netip.Prefix // TrustedProxies, parsed by fill
	// IdleTimeout closes an HTTP keep-alive connection that has sent no new
	// request for this long (not WebSocket sockets). Default 60s.
	IdleTimeout time.Duration
	// InboundRate is the most frames per second (data, ping and pong) one
	// socket may send, in bursts of up to two seconds' worth; more closes
	// it with 1008. Default 10; negative: unlimited.
	InboundRate int
	// MoveWindow spreads the closes of clients whose owner changed when the
	// set of nodes changes. Default 10s.
	MoveWindow time.Duration
	// DrainWindow spreads the 1001 closes at shutdown. Default 5s.
	DrainWindow time.Duration
	// OfflineGrace is how long a client whose last socket closed keeps its
	// presence and channel memberships, so that a reconnect within it (to
	// any node: a move, a drain, a crash, a network drop) produces no
	// offline/online events and keeps its rooms. A client's own normal
	// close (1000) and ForceOffline end them at once. Default 10s;
	// negative: no grace.
	OfflineGrace time.Duration
	// MaxRecovery is the most messages the node replays per stream when a
	// socket resumes or fills a gap; a socket that missed more is told
	// recovered:false. Default 1000.
	MaxRecovery int
	// SubscriberQueueBytes bounds the payload bytes of the messages from
	// Redis waiting for the node's subscriber workers, and SubscriberQueue
	// the messages waiting for each of them. Under overload delivery is
	// late up to these bounds; past them data messages are dropped
	// (im_pubsub_overflow_total) and then filled from history. Defaults
	// 64 MiB and 262144.
	SubscriberQueueBytes int
	SubscriberQueue      int
	// ProbeInterval is how often the node checks its own subscription by
	// publishing a probe to itself. Default 5s.
	ProbeInterval time.Duration
	// EventStreamMaxLen caps the event stream (approximately). Default 100000.
	EventStreamMaxLen int
	// RedisTimeout bounds one Redis command. Default 3s.
	RedisTimeout time.Duration
}

// ErrInvalidConfig wraps every error New returns for a Config that cannot
// work (as opposed to a Redis that cannot be reached); cmd/imserver exits
// with status 2 for it.
var ErrInvalidConfig = errors.New("invalid configuration")

func (c *Config) setDefaults() error {
	if err := c.fill(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return nil
}

func (c *Config) fill() error {
	if c.Listen == "" {
		c.Listen = ":6001"
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("invalid listen address %q: %w", c.Listen, err)
	}
	if c.PublicURL != "" && !strings.HasPrefix(c.PublicURL, "ws://") && !strings.HasPrefix(c.PublicURL, "wss://") {
		return fmt.Errorf("public URL %q must start with ws:// or wss://", c.PublicURL)
	}
	if c.NodeID != "" {
		if err := wire.ValidateClientID(c.NodeID); err != nil {
			return fmt.Errorf("invalid node id %q: %w", c.NodeID, err)
		}
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("TLS needs both a cert and a key file")
	}
	if c.RedisURL == "" {
		c.RedisURL = "redis://127.0.0.1:6379/0"
	}
	if err := store.CheckURL(c.RedisURL); err != nil {
		return err
	}
	if c.Prefix == "" {
		c.Prefix = store.DefaultPrefix
	}
	setDur(&c.LeaseTTL, 10*time.Second)
	setDur(&c.PingInterval, 25*time.Second)
	setDur(&c.PongTimeout, 10*time.Second)
	setDur(&c.WriteTimeout, 10*time.Second)
	setDur(&c.MoveWindow, 10*time.Second)
	setDur(&c.DrainWindow, 5*time.Second)
	if c.OfflineGrace == 0 {
		c.OfflineGrace = 10 * time.Second
	}
	if c.MaxRecovery <= 0 {
		c.MaxRecovery = 1000
	}
	if c.SubscriberQueue <= 0 {
		c.SubscriberQueue = defaultWorkerQueue
	}
	if c.SubscriberQueueBytes <= 0 {
		c.SubscriberQueueBytes = defaultBacklogBytes
	}
	setDur(&c.ProbeInterval, 5*time.Second)
	setDur(&c.RedisTimeout, 3*time.Second)
	setDur(&c.IdleTimeout, 60*time.Second)
	if c.MaxQueueBytes <= 0 {
		c.MaxQueueBytes = 1 << 20
	}
	if c.ReadLimit <= 0 {
		c.ReadLimit = 4096
	}
	if c.InboundRate == 0 {
		c.InboundRate = 10
	}
	if c.EventStreamMaxLen <= 0 {
		c.EventStreamMaxLen = 100000
	}
	if c.ConnectRatePerSource == 0 {
		c.ConnectRatePerSource = 20
	}
	if c.TokenFailuresPerSource == 0 {
		c.TokenFailuresPerSource = 10
	}
	var err error
	if c.trusted, err = parseTrustedProxies(c.TrustedProxies); err != nil {
		return err
	}
	return nil
}

func setDur(d *time.Duration, def time.Duration) {
	if *d <= 0 {
		*d = def
	}
}

// ParseFlags fills a Config from args, with one flag per field. Each flag's
// default is taken from the IM_* environment variable of the same name (upper
// case, dashes as underscores), so flags win over the environment.
func ParseFlags(fs *flag.FlagSet, args []string) (Config, error) {
	c := &Config{}
	var envErrs []error
	// Each usage ends with its environment variable, so -h lists them.
	str := func(p *string, name, usage string) { fs.StringVar(p, name, env(name, *p), withEnv(name, usage)) }
	fromEnv := func(name string, parse func(string) error) {
		if v := env(name, ""); v != "" {
			if err := parse(v); err != nil {
				envErrs = append(envErrs, fmt.Errorf("%s: %w", envName(name), err))
			}
		}
	}
	dur := func(p *time.Duration, name, usage string) {
		fromEnv(name, func(v string) (err error) { *p, err = time.ParseDuration(v); return err })
		fs.DurationVar(p, name, *p, withEnv(name, usage))
	}
	num := func(p *int, name, usage string) {
		fromEnv(name, func(v string) (err error) { *p, err = strconv.Atoi(v); return err })
		fs.IntVar(p, name, *p, withEnv(name, usage))
	}
	str(&c.Listen, "listen", "WebSocket listen address (default :6001)")
	str(&c.AdminListen, "admin-listen", "separate address for /healthz, /readyz, /metrics (default: on -listen)")
	str(&c.PublicURL, "public-url", "ws(s):// URL browsers use to reach this node's /ws (default derived from -listen)")
	str(&c.NodeID, "node-id", "node id in Redis (default <hostname>-<port>)")
	str(&c.RedisURL, "redis-url", "Redis URL (default redis://127.0.0.1:6379/0)")
	str(&c.Prefix, "prefix", "prefix of Redis keys and channels (default im:)")
	origins := env("origins", "")
	fs.Func("origins", withEnv("origins", "comma-separated allowed Origin host patterns, e.g. *.example.com"), func(s string) error {
		origins = s
		return nil
	})
	str(&c.TLSCert, "tls-cert", "TLS certificate file")
	str(&c.TLSKey, "tls-key", "TLS key file")
	dur(&c.LeaseTTL, "lease-ttl", "registry lease (default 10s)")
	dur(&c.PingInterval, "ping-interval", "ping interval (default 25s)")
	dur(&c.PongTimeout, "pong-timeout", "pong timeout (default 10s)")
	dur(&c.WriteTimeout, "write-timeout", "socket write timeout (default 10s)")
	num(&c.MaxQueueBytes, "max-queue-bytes", "outbound queue bound per socket (default 1048576)")
	readLimit := int(c.ReadLimit)
	num(&readLimit, "read-limit", "largest client frame in bytes (default 4096)")
	num(&c.MaxConns, "max-conns", "sockets per node, 0 = unlimited")
	num(&c.MaxConnsPerClient, "max-conns-per-client", "sockets per clientId, 0 = unlimited")
	num(&c.ConnectRate, "connect-rate", "new sockets per second, 0 = unlimited")
	num(&c.ConnectRatePerSource, "connect-rate-per-source", "connection attempts per second from one IPv4 address or IPv6 /64 (default 20, -1 = unlimited)")
	num(&c.TokenFailuresPerSource, "token-failures-per-source", "failed tokens from one source before it is refused without a lookup, 1s doubling to 30s (default 10, -1 = off)")
	proxies := env("trusted-proxies", "")
	fs.Func("trusted-proxies", withEnv("trusted-proxies", "comma-separated addresses or CIDRs of proxies whose X-Forwarded-For or X-Real-IP names the client (default: none, the peer is the client)"), func(s string) error {
		proxies = s
		return nil
	})
	num(&c.InboundRate, "inbound-rate", "frames per second one socket may send, more closes with 1008 (default 10, -1 = unlimited)")
	dur(&c.MoveWindow, "move-window", "window over which moved clients are closed (default 10s)")
	dur(&c.DrainWindow, "drain-window", "window over which sockets are closed at shutdown (default 5s)")
	dur(&c.OfflineGrace, "offline-grace", "how long a client without sockets keeps its presence and rooms, so that a reconnect within it is seamless (default 10s, negative = none)")
	num(&c.MaxRecovery, "max-recovery", "most messages replayed per stream when a socket resumes (default 1000)")
	num(&c.SubscriberQueue, "subscriber-queue", "messages from Redis queued per subscriber worker before data is dropped and filled from history (default 262144)")
	num(&c.SubscriberQueueBytes, "subscriber-queue-bytes", "payload bytes from Redis queued over all subscriber workers before data is dropped and filled from history (default 67108864)")
	dur(&c.ProbeInterval, "probe-interval", "pub/sub self-probe interval (default 5s)")
	num(&c.EventStreamMaxLen, "event-stream-maxlen", "approximate event stream cap (default 100000)")
	dur(&c.RedisTimeout, "redis-timeout", "timeout of one Redis command (default 3s)")
	dur(&c.IdleTimeout, "idle-timeout", "close HTTP keep-alive connections idle this long (default 60s)")
	if len(envErrs) > 0 {
		return Config{}, fmt.Errorf("invalid environment: %w", errors.Join(envErrs...))
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	c.ReadLimit = int64(readLimit)
	c.OriginPatterns = splitList(origins)
	c.TrustedProxies = splitList(proxies)
	return *c, nil
}

func env(flagName, def string) string {
	if v, ok := os.LookupEnv(envName(flagName)); ok {
		return v
	}
	return def
}

func withEnv(flagName, usage string) string { return usage + " (" + envName(flagName) + ")" }

// envName maps a flag name to its environment variable: IM_ + upper case,
// dashes as underscores.
func envName(flagName string) string {
	return "IM_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
