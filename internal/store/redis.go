package store

import (
	"context"
	"crypto/sha1"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/rueidis"
)

// Redis implements every interface of this package on one rueidis client.
type Redis struct {
	rc        rueidis.Client
	cluster   bool // rc is a Redis Cluster client: sharded pub/sub
	k         keys
	streamCap string // approximate MAXLEN of the event stream

	consumeToken, connect, online, offline, leave, chanOnline, reapDone *rueidis.Lua
	writeLease, sendKept, chanKept                                      *flaggedScript
	position, readHistory                                               *multiScript
	readLeases                                                          *multiScript
	cl                                                                  clusterScripts // steps_cluster.go
}

var (
	_ Tokens     = (*Redis)(nil)
	_ Registry   = (*Redis)(nil)
	_ Presence   = (*Redis)(nil)
	_ Connects   = (*Redis)(nil)
	_ Membership = (*Redis)(nil)
	_ Publisher  = (*Redis)(nil)
	_ Subscriber = (*Redis)(nil)
	_ Events     = (*Redis)(nil)
	_ Node       = (*Redis)(nil)
	_ Helper     = (*Redis)(nil)
)

// The Lua scripts; each states its KEYS and ARGV at the top.
var (
	//go:embed lua/token.lua
	luaToken string // prepended to the scripts that take a connect token
	//go:embed lua/consume_token.lua
	scriptConsumeToken string
	//go:embed lua/connect.lua
	scriptConnect string
	//go:embed lua/online.lua
	scriptOnline string
	//go:embed lua/offline.lua
	scriptOffline string
	//go:embed lua/leave.lua
	scriptLeave string
	//go:embed lua/chan_online.lua
	scriptChanOnline string
	//go:embed lua/reap_done.lua
	scriptReapDone string
	//go:embed lua/write_lease.lua
	scriptWriteLease string
	//go:embed lua/lease.lua
	luaLease string // prepended to the scripts that read a lease
	//go:embed lua/history.lua
	luaHistory string // prepended to the scripts that keep or read history
	//go:embed lua/send_kept.lua
	scriptSendKept string
	//go:embed lua/chan_kept.lua
	scriptChanKept string
	//go:embed lua/position.lua
	scriptPosition string
	//go:embed lua/read_history.lua
	scriptReadHistory string
	//go:embed lua/read_leases.lua
	scriptReadLeases string
)

// Options configures a Redis store. Zero values mean the defaults given.
type Options struct {
	// Prefix of every key and channel. Default DefaultPrefix ("im:").
	Prefix string
	// EventStreamMaxLen caps the event stream (approximately). Default 100000.
	EventStreamMaxLen int
}

// NewRedis returns a store on rc; rc stays the caller's to close.
func NewRedis(rc rueidis.Client, o Options) *Redis {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.EventStreamMaxLen <= 0 {
		o.EventStreamMaxLen = 100000
	}
	cluster := rc.Mode() == rueidis.ClientModeCluster
	return &Redis{
		rc:           rc,
		cluster:      cluster,
		k:            keys{prefix: o.Prefix, cluster: cluster},
		streamCap:    fmt.Sprint(o.EventStreamMaxLen),
		consumeToken: rueidis.NewLuaScript(luaToken + scriptConsumeToken),
		connect:      rueidis.NewLuaScript(luaToken + luaEventJSON + scriptConnect),
		online:       rueidis.NewLuaScript(scriptOnline),
		offline:      rueidis.NewLuaScript(luaLease + scriptOffline),
		leave:        rueidis.NewLuaScript(scriptLeave),
		chanOnline:   rueidis.NewLuaScript(scriptChanOnline),
		reapDone:     rueidis.NewLuaScript(luaLease + scriptReapDone),
		writeLease:   newFlaggedScript("allow-oom", luaLease+scriptWriteLease),
		sendKept:     newFlaggedScript("", luaHistory+scriptSendKept), // refused at maxmemory: imhelper publishes plainly
		chanKept:     newFlaggedScript("", luaHistory+scriptChanKept),
		position:     newMultiScript(luaHistory + scriptPosition),
		readHistory:  newMultiScript(luaHistory + scriptReadHistory),
		readLeases:   newMultiScript(scriptReadLeases),
		cl:           newClusterScripts(),
	}
}

// flaggedScript is a script run as a Redis 7 script with a shebang line
// ("#!lua", with "flags=..." if any). A server that does not know the
// line, such as the embedded miniredis (or Redis 6), fails to compile it;
// from then on the script runs without it. Such a server has no maxmemory
// either, which is what the line is for here: with flags=allow-oom the
// script runs at maxmemory; with no flags Redis refuses it before it runs
// (OOM), where a script without the line is only refused at its first
// command that may grow memory, so one that first ran a DEL or PEXPIRE
// (which do not count) went on appending past maxmemory.
type flaggedScript struct {
	flagged, plain *multiScript
	noFlags        atomic.Bool
}

func newFlaggedScript(flags, src string) *flaggedScript {
	line := "#!lua"
	if flags != "" {
		line += " flags=" + flags
	}
	return &flaggedScript{flagged: newMultiScript(line + "\n" + src), plain: newMultiScript(src)}
}

// multiScript is a script that is also run several times in one round
// trip. rueidis' Lua.ExecMulti sends SCRIPT LOAD with the whole script
// before every such call, which costs a round trip (and the script's bytes)
// each time; execMulti sends the EVALSHAs alone, and only the calls that
// find the script missing (a restarted or flushed Redis: NOSCRIPT) go
// through ExecMulti, which loads it.
type multiScript struct {
	*rueidis.Lua
	sha string
}

func newMultiScript(src string) *multiScript {
	sum := sha1.Sum([]byte(src))
	return &multiScript{Lua: rueidis.NewLuaScript(src), sha: hex.EncodeToString(sum[:])}
}

func (s *multiScript) execMulti(ctx context.Context, rc rueidis.Client, multi ...rueidis.LuaExec) []rueidis.RedisResult {
	if len(multi) == 0 {
		return nil
	}
	cmds := make(rueidis.Commands, len(multi))
	for i, e := range multi {
		cmds[i] = s.evalsha(rc, e.Keys, e.Args)
	}
	res := rc.DoMulti(ctx, cmds...)
	var missing []int
	for i, r := range res {
		if isNoScript(r) {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		again := make([]rueidis.LuaExec, len(missing))
		for j, i := range missing {
			again[j] = multi[i]
		}
		for j, r := range s.Lua.ExecMulti(ctx, rc, again...) {
			res[missing[j]] = r
		}
	}
	return res
}

// evalsha is the script's EVALSHA alone, for a round trip of several
// commands; a reply that isNoScript needs the script loaded (Lua.Exec).
func (s *multiScript) evalsha(rc rueidis.Client, keys, args []string) rueidis.Completed {
	return rc.B().Evalsha().Sha1(s.sha).Numkeys(int64(len(keys))).Key(keys...).Arg(args...).Build()
}

// isNoScript reports Redis not knowing the script (restarted or flushed).
func isNoScript(r rueidis.RedisResult) bool {
	err, ok := rueidis.IsRedisErr(r.Error())
	return ok && err.IsNoScript()
}

// noShebang reports the error of a server that cannot compile the line.
func noShebang(err error) bool { return err != nil && strings.Contains(err.Error(), "near '#'") }

func (f *flaggedScript) exec(ctx context.Context, rc rueidis.Client, keys, args []string) ([]rueidis.RedisMessage, error) {
	return scriptReply(f.execResult(ctx, rc, keys, args))
}

func (f *flaggedScript) execResult(ctx context.Context, rc rueidis.Client, keys, args []string) rueidis.RedisResult {
	if !f.noFlags.Load() {
		res := f.flagged.Exec(ctx, rc, keys, args)
		if !noShebang(res.Error()) {
			return res
		}
		f.noFlags.Store(true)
	}
	return f.plain.Exec(ctx, rc, keys, args)
}

func (f *flaggedScript) execMulti(ctx context.Context, rc rueidis.Client, multi ...rueidis.LuaExec) []rueidis.RedisResult {
	if !f.noFlags.Load() {
		res := f.flagged.execMulti(ctx, rc, multi...)
		if len(res) == 0 || !noShebang(res[0].Error()) {
			return res
		}
		f.noFlags.Store(true)
	}
	return f.plain.execMulti(ctx, rc, multi...)
}

// CheckURL reports whether url is a Redis URL that Dial can use.
func CheckURL(url string) error {
	if _, _, err := parseURL(url); err != nil {
		return fmt.Errorf("invalid redis url: %w", err)
	}
	return nil
}

// parseURL reads a redis:// or rediss:// URL (rueidis' syntax, with
// ?addr=host:port for more seeds), or a redis+cluster:// or
// rediss+cluster:// one, whose host part is a comma-separated list of seed
// addresses: redis+cluster://user:pass@h1:7000,h2:7001?dial_timeout=2s.
// cluster reports the +cluster scheme, which requires a Cluster.
func parseURL(url string) (opt rueidis.ClientOption, cluster bool, err error) {
	scheme, rest, ok := strings.Cut(url, "://")
	if ok && strings.HasSuffix(scheme, "+cluster") {
		cluster = true
		authority, tail := rest, ""
		if i := strings.IndexAny(rest, "/?"); i >= 0 {
			authority, tail = rest[:i], rest[i:]
		}
		user, hosts := "", authority
		if i := strings.LastIndexByte(authority, '@'); i >= 0 {
			user, hosts = authority[:i+1], authority[i+1:]
		}
		seeds := strings.Split(hosts, ",")
		for _, h := range seeds {
			if h == "" {
				return opt, cluster, fmt.Errorf("empty seed address in %q", hosts)
			}
		}
		url = strings.TrimSuffix(scheme, "+cluster") + "://" + user + seeds[0] + tail
		if len(seeds) > 1 {
			sep := "?"
			if strings.Contains(tail, "?") {
				sep = "&"
			}
			url += sep + "addr=" + strings.Join(seeds[1:], "&addr=")
		}
	}
	opt, err = rueidis.ParseURL(url)
	return opt, cluster, err
}

// Timeouts of the clients Dial builds, unless the URL sets them
// (dial_timeout=, write_timeout=). rueidis' defaults are 5 s and 10 s.
const (
	// DialTimeout bounds a connect and its HELLO handshake. rueidis makes
	// every command that needs a connection being (re)dialled wait for that
	// dial, whatever the command's own deadline, so this is how long a hung
	// Redis can hold a command past its deadline.
	DialTimeout = 2 * time.Second
	// ConnTimeout is rueidis' ConnWriteTimeout: a connection whose
	// keepalive PING (sent after 1 s without replies) or synchronous command
	// gets no answer for this long is closed and its commands fail. It is how
	// soon commands without a deadline give up on a hung Redis (about
	// 1 s + ConnTimeout). Blocking commands (XREADGROUP BLOCK) are exempt.
	ConnTimeout = 3 * time.Second
	// ShardsRefresh is how often rueidis reads a Cluster's topology in the
	// background. Without it rueidis learns of a promoted replica only when
	// a command fails on the dead master, and a node's subscriber, which
	// needs rueidis' connection to the new master, waited for that (up to
	// 4 s after the promotion in the failover test). Ignored on one Redis.
	ShardsRefresh = time.Second
)

// Dial builds the rueidis client for a Redis URL (parseURL): the one way
// both sides connect, with client-side caching off (nothing here reads the
// same key twice) and DialTimeout and ConnTimeout. rueidis asks the server
// whether it is a Cluster and builds a Cluster client if so, for any
// scheme; a redis+cluster:// URL fails unless it is one.
func Dial(url string) (rueidis.Client, error) {
	opt, cluster, err := parseURL(url)
	if err != nil {
		return nil, fmt.Errorf("failed to parse redis url: %w", err)
	}
	opt.DisableCache = true
	if opt.Dialer.Timeout == 0 {
		opt.Dialer.Timeout = DialTimeout
	}
	if opt.ConnWriteTimeout == 0 {
		opt.ConnWriteTimeout = ConnTimeout
	}
	if opt.ClusterOption.ShardsRefreshInterval == 0 {
		opt.ClusterOption.ShardsRefreshInterval = ShardsRefresh
	}
	rc, err := rueidis.NewClient(opt)
	if err != nil {
		return nil, fmt.Errorf("failed to connect to redis: %w", err)
	}
	if cluster && rc.Mode() != rueidis.ClientModeCluster {
		rc.Close()
		return nil, fmt.Errorf("redis url names a cluster, but %s is not a Redis Cluster (cluster_enabled:0); use redis://", opt.InitAddress[0])
	}
	return rc, nil
}

// DialEmbedded builds a client for an embedded Redis-protocol server
// (miniredis) at addr: RESP2 only, so that commands still work on the
// connection a SUBSCRIBE used, and a single client, so that rueidis does not
// take the server for a cluster.
func DialEmbedded(addr string) (rueidis.Client, error) {
	rc, err := rueidis.NewClient(rueidis.ClientOption{
		InitAddress:       []string{strings.TrimPrefix(addr, "redis://")},
		AlwaysRESP2:       true,
		DisableCache:      true,
		ForceSingleClient: true,
	})
	if err != nil {
		return nil, fmt.Errorf("failed to connect to the embedded redis: %w", err)
	}
	return rc, nil
}

// ErrPrefixTag refuses, on a Redis Cluster, a key prefix holding "{" or
// "}": it would become every key's hash tag and put the whole broker on
// one slot, or cut the tags the layout relies on (keys.go).
var ErrPrefixTag = errors.New("on a Redis Cluster the key prefix may not contain '{' or '}'")

// Open is NewRedis for a side that runs on rc: on a Redis Cluster it
// refuses a prefix that holds a hash tag (ErrPrefixTag).
func Open(rc rueidis.Client, o Options) (*Redis, error) {
	r := NewRedis(rc, o)
	if r.cluster && strings.ContainsAny(r.k.prefix, "{}") {
		return nil, fmt.Errorf("%w: %q", ErrPrefixTag, r.k.prefix)
	}
	return r, nil
}

// Client returns the underlying client.
func (r *Redis) Client() rueidis.Client { return r.rc }

var errEmptyReply = errors.New("empty reply from a Redis script")

// scriptReply is the array a script returns, which is never empty.
func scriptReply(res rueidis.RedisResult) ([]rueidis.RedisMessage, error) {
	arr, err := res.ToArray()
	if err == nil && len(arr) == 0 {
		err = errEmptyReply
	}
	return arr, err
}

func firstErr(rs []rueidis.RedisResult) error {
	for _, r := range rs {
		if err := r.Error(); err != nil {
			return err
		}
	}
	return nil
}

func strs(vals []rueidis.RedisMessage) []string {
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		if s, err := v.ToString(); err == nil {
			out = append(out, s)
		}
	}
	return out
}
