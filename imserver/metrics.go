package imserver

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/imbroker/imbroker/internal/version"
)

// metrics are the node's Prometheus series; docs/operations.md lists them.
type metrics struct {
	reg            *prometheus.Registry
	conns          prometheus.Gauge
	clients        prometheus.Gauge
	nodes          prometheus.Gauge
	connects       prometheus.Counter
	refusals       *prometheus.CounterVec
	closes         *prometheus.CounterVec
	messagesIn     *prometheus.CounterVec
	delivered      prometheus.Counter
	dropped        prometheus.Counter
	slowCloses     prometheus.Counter
	malformed      prometheus.Counter
	overflow       prometheus.Counter
	unknownVersion prometheus.Counter
	outboxDropped  prometheus.Counter
	reconnects     prometheus.Counter
	redisErrs      prometheus.Counter
	untracked      prometheus.Counter
	latency        prometheus.Histogram
	// History (recovery.go).
	recoveries *prometheus.CounterVec
	replayed   prometheus.Counter
	duplicates prometheus.Counter
	gaps       prometheus.Counter
	sweeps     *prometheus.CounterVec
	graceEnds  *prometheus.CounterVec
	forwarded  prometheus.Counter
	// First sockets whose presence took a second round trip (admit).
	connectFallbacks *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.conns = prometheus.NewGauge(prometheus.GaugeOpts{Name: "im_connections", Help: "Open WebSocket connections."})
	m.clients = prometheus.NewGauge(prometheus.GaugeOpts{Name: "im_clients", Help: "Distinct online clientIds on this node."})
	m.nodes = prometheus.NewGauge(prometheus.GaugeOpts{Name: "im_nodes", Help: "Live nodes in this node's view of the registry, itself included."})
	m.connects = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_connects_total", Help: "Accepted WebSocket connections."})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "im_refusals_total", Help: "Refused connection attempts by reason."}, []string{"reason"})
	m.connectFallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "im_connect_fallbacks_total",
		Help: "First sockets of a client whose presence took a second Redis round trip (online.lua after the token) instead of the connect script's one, by reason: " +
			"no_hint (the URL names no client), mismatch (the token record names another client than the URL, or a meta the script does not vouch for), " +
			"raced (the client's other sockets here closed while its token was read), redis_full (the script was refused at maxmemory)."}, []string{"reason"})
	for _, r := range []string{"no_hint", "mismatch", "raced", "redis_full"} {
		m.connectFallbacks.WithLabelValues(r) // exported at 0, so that a rate can be taken from the start
	}
	m.closes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "im_closes_total", Help: "Closed connections by reason."}, []string{"reason"})
	m.messagesIn = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "im_messages_in_total", Help: "Messages received from Redis by kind."}, []string{"kind"})
	m.delivered = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_frames_delivered_total", Help: "Frames written to sockets."})
	m.dropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_frames_dropped_total", Help: "Frames dropped because a socket's queue overflowed."})
	m.slowCloses = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_slow_consumer_closes_total", Help: "Sockets closed as slow consumers."})
	m.malformed = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_malformed_messages_total", Help: "Malformed messages received from Redis and ignored."})
	m.overflow = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_pubsub_overflow_total", Help: "Messages from Redis dropped because the node could not keep up."})
	m.unknownVersion = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_unknown_version_messages_total", Help: "Node messages of a newer format version than this node reads, ignored."})
	m.outboxDropped = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_outbox_dropped_total", Help: "Receipts for senders on other nodes dropped because the node's outbox was full."})
	m.reconnects = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_redis_reconnects_total", Help: "Re-established Redis pub/sub subscriptions."})
	m.redisErrs = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_redis_errors_total", Help: "Failed Redis commands."})
	m.untracked = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_connect_sources_untracked_total", Help: "Connection attempts from sources the full per-source table could not track; they shared a per-shard budget."})
	m.latency = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "im_delivery_latency_seconds",
		Help:    "Time from publish (the frame's ts, millisecond resolution) to the socket write.",
		Buckets: []float64{.001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5},
	})
	m.recoveries = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "im_stream_recoveries_total", Help: "Stream fills by outcome: recovered (everything missed was replayed), lost (told recovered:false), error (Redis failed)."}, []string{"outcome"})
	m.replayed = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_replayed_messages_total", Help: "Messages written to sockets from history."})
	m.duplicates = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_duplicate_messages_total", Help: "Live messages a socket already had from a replay, not written again."})
	m.gaps = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_stream_gaps_total", Help: "Live messages that showed a socket had missed one before it (a fill followed)."})
	m.sweeps = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "im_stream_sweeps_total", Help: "Fills of every local socket, by cause (resubscribe, overflow)."}, []string{"why"})
	m.graceEnds = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "im_offline_grace_total", Help: "Clients whose last socket closed under the offline grace, by how it ended: back (reconnected here), expired (offline, unless online elsewhere), flushed (at shutdown)."}, []string{"end"})
	m.forwarded = prometheus.NewCounter(prometheus.CounterOpts{Name: "im_forwarded_messages_total", Help: "Direct messages for clients this node does not hold, passed to the node that does while clients move."})
	m.reg.MustRegister(m.recoveries, m.replayed, m.duplicates, m.gaps, m.sweeps, m.graceEnds, m.forwarded)
	// im_build_info is the usual constant 1 with the build in its labels, so
	// a dashboard can show which version each node runs during a rollout.
	bi := version.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "im_build_info", Help: "Always 1; the labels name the running build."}, []string{"version", "revision", "goversion"})
	build.WithLabelValues(bi.Version, bi.Revision, bi.GoVersion).Set(1)
	m.reg.MustRegister(build)
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(m.conns, m.clients, m.nodes, m.connects, m.refusals, m.connectFallbacks, m.closes, m.messagesIn,
		m.delivered, m.dropped, m.slowCloses, m.malformed, m.overflow, m.unknownVersion, m.outboxDropped, m.reconnects, m.redisErrs, m.untracked, m.latency)
	return m
}

// registerReady exports the node's readiness (what /readyz answers) as
// im_ready, so a dashboard and an alert see it without probing.
func (m *metrics) registerReady(ready func() bool) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "im_ready", Help: "1 while the node is registered, subscribed, not draining and Redis' eviction policy is safe (what /readyz reports), else 0."}, boolGauge(ready)))
}

// registerRedisMemory exports what the node last read of Redis' memory
// (checkRedisMemory): at its limit, and with a policy that can evict broker
// state.
func (m *metrics) registerRedisMemory(full, unsafe func() bool) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "im_redis_full", Help: "1 while Redis is at maxmemory (writes fail with OOM; the node refuses new connections), else 0."}, boolGauge(full)),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "im_redis_eviction_unsafe", Help: "1 while Redis' maxmemory-policy can evict broker keys (allkeys-*; the node reports not ready), else 0."}, boolGauge(unsafe)))
}

func boolGauge(f func() bool) func() float64 {
	return func() float64 {
		if f() {
			return 1
		}
		return 0
	}
}

// registerSources exports how many sources the per-source limits track.
func (m *metrics) registerSources(n func() int64) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "im_connect_sources", Help: "Sources (IPv4 addresses, IPv6 /64s) the per-source connect limits hold state for."}, func() float64 {
		return float64(n())
	}))
}

func (m *metrics) observeDelivery(ts int64) {
	m.delivered.Inc()
	if ts > 0 {
		d := time.Now().UnixMilli() - ts
		if d < 0 {
			d = 0
		}
		m.latency.Observe(float64(d) / 1000)
	}
}
