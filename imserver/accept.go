package imserver

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// refuse answers a connection attempt before any upgrade with a short JSON
// body and counts it by reason.
func (s *Server) refuse(w http.ResponseWriter, status int, reason, msg string) {
	s.metrics.refusals.WithLabelValues(reason).Inc()
	b, _ := json.Marshal(struct {
		Error  string `json:"error"`
		Reason string `json:"reason"`
	}{msg, reason})
	writeJSON(w, status, string(b))
}

// handleWS accepts a WebSocket. Cheap checks come first so that a refused
// attempt never consumes a token it did not need to, and the per-source
// limits before anything that costs (the node-wide rate, a Redis lookup);
// the token is consumed atomically and only by the node it was issued for.
func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	switch {
	case s.draining.Load():
		s.refuse(w, http.StatusServiceUnavailable, "draining", "node is shutting down")
		return
	case !s.originAllowed(r):
		s.refuse(w, http.StatusForbidden, "origin", "origin not allowed")
		return
	case !isUpgrade(r):
		s.refuse(w, http.StatusUpgradeRequired, "not_websocket", "WebSocket upgrade required")
		return
	case s.redisFull.Load():
		s.refuse(w, http.StatusServiceUnavailable, "redis_full", "redis is out of memory")
		return
	}
	// Per source, before anything is spent on the attempt: its share of
	// attempts, and no lookups while its failed tokens put it in backoff.
	src := s.source(r)
	if reason, retry := s.sources.admit(src); reason != "" {
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(retry.Seconds())))))
		msg := "too many connection attempts from this address"
		if reason == "token_backoff" {
			msg = "too many failed tokens from this address"
		}
		s.refuse(w, http.StatusTooManyRequests, reason, msg)
		return
	}
	token := wire.TokenFromQuery(r.URL.RawQuery)
	if token == "" {
		s.sources.failed(src)
		s.refuse(w, http.StatusUnauthorized, "bad_token", "missing or malformed token")
		return
	}
	resume, err := wire.ParseResume(r.URL.RawQuery)
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "bad_resume", "malformed pos parameter: "+err.Error())
		return
	}
	// Reserve the socket's place in the node limit first, so the limit is
	// exact under concurrent connects; the reservation is returned on any
	// refusal below, or by detach once the socket was attached.
	if n := s.connCount.Add(1); s.cfg.MaxConns > 0 && n > int64(s.cfg.MaxConns) {
		s.connCount.Add(-1)
		s.refuse(w, http.StatusServiceUnavailable, "node_full", "node connection limit reached")
		return
	}
	attached := false
	defer func() {
		if !attached {
			s.connCount.Add(-1)
		}
	}()
	if !s.limiter.allow() {
		s.refuse(w, http.StatusTooManyRequests, "rate", "connect rate limit reached")
		return
	}
	adm := s.admit(r.Context(), token, wire.ClientFromQuery(r.URL.RawQuery))
	switch adm.status {
	case tokenMissing:
		s.sources.failed(src)
		s.refuse(w, http.StatusUnauthorized, "token", "token missing, expired or already used")
		return
	case tokenForeign:
		s.sources.failed(src)
		s.refuse(w, http.StatusMisdirectedRequest, "foreign_token", "token was issued for another node")
		return
	case tokenRedisDown:
		s.refuse(w, http.StatusServiceUnavailable, "redis", "redis unavailable")
		return
	}
	s.sources.succeeded(src)

	// From here to attach the client's stripe is held (admit took it).
	rec, mu := adm.rec, adm.mu
	if s.cfg.MaxConnsPerClient > 0 && s.hub.count(rec.Client) >= s.cfg.MaxConnsPerClient {
		// Never after a connect script marked the client online: that
		// ran only with no socket of the client here.
		mu.Unlock()
		s.refuse(w, http.StatusTooManyRequests, "client_limit", "too many connections for this client")
		return
	}
	lw := &leanWriter{ResponseWriter: w, newWriter: s.newSockWriter}
	// Pings and pongs from the client count against its inbound budget
	// like data frames; the hooks run only once the read loop, started
	// after cn is set, reads.
	var cn *conn
	ws, err := websocket.Accept(lw, r, &websocket.AcceptOptions{
		InsecureSkipVerify: true, // Origin was checked above, with a JSON 403
		CompressionMode:    websocket.CompressionDisabled,
		OnPingReceived:     func(context.Context, []byte) bool { return cn.inboundFrame() },
		OnPongReceived:     func(context.Context, []byte) { cn.inboundFrame() },
	})
	if err != nil {
		s.undoOnline(adm)
		mu.Unlock()
		s.metrics.refusals.WithLabelValues("handshake").Inc()
		return
	}
	ws.SetReadLimit(s.cfg.ReadLimit)
	// A random phase spreads the pings of sockets that connected together
	// (a reconnect wave) over the whole interval.
	phase := time.Duration(rand.Int64N(int64(s.cfg.PingInterval)))
	cn = s.newConn(ws, lw.w)
	cn.lastPing = time.Now().Add(-phase)
	s.sockets.Add(1)
	topics := s.attach(cn, adm)
	attached = true
	// The socket is held (newConn) until what it missed is replayed; its
	// fills are queued before the stripe is let go, ahead of any join.
	cn.hist.mu.Lock()
	cn.hist.fills = append(resumeFills(resume, rec, cn.cl.chanList()), cn.hist.fills...)
	cn.hist.mu.Unlock()
	mu.Unlock()
	s.sub.syncTopics(topics)
	// Subscribed: what was published before is in the streams, what comes
	// after is held. The fill loop replays, sends the recovered frame
	// (the socket's first) and lets the held frames through.
	s.startFills(cn)
	if s.draining.Load() { // attached after Shutdown listed the sockets
		cn.close(websocket.StatusGoingAway, "node draining", wire.ReasonDrain)
	}
	// The socket's life goes on in a fresh goroutine, so that this handler's
	// goroutine, with the stack that HTTP parsing grew, and the request are
	// freed.
	if !s.startGoroutine(func() { s.serveConn(cn) }) {
		cn.w.closeTCP()
		s.serveConn(cn)
	}
}

// source is the per-source key of r's client (clientAddr). A request that
// names a client in forwarding headers from a peer that is not trusted is
// logged once: behind a proxy that is not in -trusted-proxies, every client
// shares the proxy's limits.
func (s *Server) source(r *http.Request) sourceKey {
	a, forwarded := clientAddr(r.RemoteAddr, r.Header, s.cfg.trusted)
	if forwarded && !isTrusted(parseHost(r.RemoteAddr), s.cfg.trusted) && s.forwardedHint.CompareAndSwap(false, true) {
		s.log.Warn("a connection attempt carries X-Forwarded-For or X-Real-IP from a peer not in -trusted-proxies; "+
			"the headers are ignored, and if that peer is your proxy all its clients share one source's limits",
			"peer", r.RemoteAddr)
	}
	return sourceOf(a)
}

// serveConn reads the socket until it closes, then detaches it.
func (s *Server) serveConn(cn *conn) {
	defer s.sockets.Done()
	cn.readLoop()
	_ = cn.ws.CloseNow() // no-op if a close handshake already finished
	mu := s.lockStripe(cn.cl.id)
	topics := s.detach(cn, cn.offlineReason())
	mu.Unlock()
	s.sub.syncTopics(topics)
}

const (
	tokenOK = iota
	tokenMissing
	tokenForeign
	tokenRedisDown
)

func (s *Server) consumeToken(ctx context.Context, token, hint string) (wire.TokenRecord, int) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RedisTimeout)
	defer cancel()
	raw, st, err := s.st.ConsumeToken(ctx, hint, token, s.cfg.NodeID)
	if err != nil {
		s.metrics.redisErrs.Inc()
		s.log.Warn("token lookup failed", "err", err)
		return wire.TokenRecord{}, tokenRedisDown
	}
	return s.tokenOutcome(st, raw)
}

// tokenOutcome is what a token lookup's status and record come to; a
// consumed record that does not decode is counted as malformed and is as
// good as missing.
func (s *Server) tokenOutcome(st store.TokenStatus, raw []byte) (wire.TokenRecord, int) {
	switch st {
	case store.TokenConsumed:
		rec, err := wire.DecodeTokenRecord(raw)
		if err != nil {
			s.metrics.malformed.Inc()
			s.log.Warn("ignored a malformed token record", "err", err)
			return rec, tokenMissing
		}
		return rec, tokenOK
	case store.TokenForeign:
		return wire.TokenRecord{}, tokenForeign
	default:
		return wire.TokenRecord{}, tokenMissing
	}
}

// admission is what the token step of a connect found. With tokenOK, mu
// is the record's client's stripe, held by the caller until the socket is
// attached, and online is set when the connect script already marked the
// client online for this, its first socket; otherwise why says why attach
// has to run online.lua itself, should the socket be the first.
type admission struct {
	rec    wire.TokenRecord
	status int
	mu     *sync.Mutex
	online *store.Online
	why    string
}

// admit takes the token in one Redis round trip, and for a client's first
// socket marks it online in the same script (connect.lua). The script runs
// under the client's stripe, which stays held until attach has put the
// socket in the hub: every other change of the client's presence or
// membership on this node (a join or leave from imhelper, a detach, the end
// of its offline grace, a resync) takes that stripe too, so none can fall
// between the script and the socket becoming visible; the script's view
// (offline or online, its channels) is still true when attach applies it.
// The stripe can be taken before the token is read only because the URL
// names the client (hint); without a usable hint, for a client that already
// has sockets here, or when the record names someone else, the token is
// taken alone, as before the merge, and attach marks a first socket online
// in a second round trip (im_connect_fallbacks_total).
func (s *Server) admit(ctx context.Context, token, hint string) admission {
	why := "no_hint"
	if hint != "" {
		mu := s.lockStripe(hint)
		if s.hub.count(hint) == 0 {
			adm, done := s.admitFirst(token, hint, mu)
			if done {
				return adm
			}
			why = adm.why
		} else {
			// Another socket of the client is here: nothing to mark, and
			// no reason to hold its stripe over a round trip. Should the
			// others close meanwhile, attach sees a first socket.
			mu.Unlock()
			why = "raced"
		}
	}
	rec, status := s.consumeToken(ctx, token, hint)
	if status != tokenOK {
		return admission{status: status}
	}
	return admission{rec: rec, status: tokenOK, mu: s.lockStripe(rec.Client), why: why}
}

// admitFirst runs connect.lua for the first socket of hint, whose stripe
// mu the caller holds. It reports done=false (with mu let go and why set)
// when the caller should take the token the way it did before the merge.
func (s *Server) admitFirst(token, hint string, mu *sync.Mutex) (admission, bool) {
	// Not the request's context: a browser that gives up must not cancel a
	// script that may already have marked it online.
	ctx, cancel := s.redisCtx()
	res, err := s.st.Connect(ctx, store.ConnectRequest{Token: token, Client: hint, Node: s.cfg.NodeID,
		Online: s.event(wire.EventOnline, hint, "", s.cfg.NodeID, "", 1)})
	cancel()
	switch {
	case errors.Is(err, store.ErrRedisFull):
		// Refused at its first write: nothing was written, the token is
		// still there. Take it alone and accept the socket, as before the
		// merge; attach's online.lua then fails the same way and marks
		// presence dirty.
		s.metrics.redisErrs.Inc()
		s.setRedisFull(true, "err", err)
		mu.Unlock()
		return admission{why: "redis_full"}, false
	case err != nil:
		s.metrics.redisErrs.Inc()
		s.log.Warn("connect script failed", "client", hint, "err", err)
		// The script may have run all the same (a reply lost to a
		// timeout): the client would then be online here without a
		// socket, which the resync finds in im:nodeclients and ends.
		s.markDirty()
		mu.Unlock()
		return admission{status: tokenRedisDown}, true
	}
	rec, status := s.tokenOutcome(res.Status, res.Record)
	if status != tokenOK {
		if res.Status == store.TokenConsumed && res.Online != nil {
			// A record that does not decode: the script vouched for the
			// client and the meta, not for everything Go decodes, so
			// take back the presence it wrote.
			s.undoOnline(admission{rec: wire.TokenRecord{Client: hint}, online: res.Online})
		}
		mu.Unlock()
		return admission{status: status}, true
	}
	if res.Online == nil {
		// Consumed without presence: the record names another client than
		// the URL, or a meta the script does not vouch for.
		mu.Unlock()
		return admission{rec: rec, status: tokenOK, mu: s.lockStripe(rec.Client), why: "mismatch"}, true
	}
	return admission{rec: rec, status: tokenOK, mu: mu, online: res.Online}, true
}

// undoOnline takes back what a connect script wrote for a first socket
// that then did not attach (the handshake failed, or the record did not
// decode); the caller holds the client's stripe, so no socket of it is
// here. A client in its offline grace keeps the presence the grace holds,
// and ends it when the grace does. The online event the script may have
// emitted is followed by an offline one: the client did appear.
func (s *Server) undoOnline(adm admission) {
	if adm.online == nil || s.hub.count(adm.rec.Client) > 0 || s.inGrace(adm.rec.Client) {
		return
	}
	if _, err := s.markOffline(adm.rec.Client, adm.rec.Meta, s.cfg.NodeID, wire.ReasonClosed, adm.online.Chans, false); err != nil {
		s.log.Warn("failed to take back a connect's presence; will resync", "client", adm.rec.Client, "err", err)
		s.markDirty()
	}
}

// isUpgrade checks what the WebSocket handshake needs, so that a request
// that would fail it is refused before its token is consumed.
func isUpgrade(r *http.Request) bool {
	return r.Method == http.MethodGet && r.ProtoAtLeast(1, 1) &&
		headerHas(r.Header, "Connection", "upgrade") && headerHas(r.Header, "Upgrade", "websocket") &&
		r.Header.Get("Sec-WebSocket-Version") == "13" && r.Header.Get("Sec-WebSocket-Key") != ""
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h[key] {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// originAllowed accepts requests without an Origin (non-browser clients),
// same-host origins, and origins whose host matches a configured pattern.
func (s *Server) originAllowed(r *http.Request) bool {
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range s.cfg.OriginPatterns {
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(u.Host)); ok {
			return true
		}
	}
	return false
}
