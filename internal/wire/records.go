package wire

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"time"
)

// NodeInfo is a node's registry entry.
type NodeInfo struct {
	ID      string `json:"id"`
	URL     string `json:"url"`     // public ws(s) URL of the node's WebSocket endpoint
	Started int64  `json:"started"` // unix ms
	// Draining is set while the node shuts down: it keeps its lease (so it
	// is not reaped) but takes no new clients.
	Draining bool `json:"draining,omitempty"`
	// Proto is the highest node message version the node reads
	// (NodeMsgVersion); 0 from releases before the field, meaning 1.
	Proto int `json:"proto,omitempty"`
	// Expires is when the lease lapses unless refreshed, in unix ms of the
	// Redis server's clock (TIME), which every reader compares against. The
	// lease key has no TTL, so that no eviction policy that spares keys
	// without one (volatile-*) can take a live node's lease. 0 in leases
	// written before the field, which lapse by a key TTL instead.
	Expires int64 `json:"exp,omitempty"`
}

// CommonVersion is the node message version to write to these nodes: the
// lowest that every one of them reads, and at most NodeMsgVersion.
func CommonVersion(nodes []NodeInfo) int {
	v := NodeMsgVersion
	for _, n := range nodes {
		v = min(v, max(n.Proto, 1))
	}
	return v
}

// TokenRecord is what a connect token stands for.
type TokenRecord struct {
	Node   string `json:"node"`
	Client string `json:"client"`
	Meta   string `json:"meta,omitempty"`
	Issued int64  `json:"iat"` // unix ms
	// Pos is the client's personal stream position when the token was
	// issued (Position.String), "" without history: a first connect
	// replays what was sent after it. ChanPos is the same for the client's
	// channels with history.
	Pos     string            `json:"pos,omitempty"`
	ChanPos map[string]string `json:"cpos,omitempty"`
}

// NewToken returns 128 random bits, base64url without padding (22 chars).
func NewToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails on supported platforms (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// ValidToken reports whether s has the shape NewToken produces, so that a node
// refuses garbage without a Redis round trip.
func ValidToken(s string) bool {
	if len(s) != 22 {
		return false
	}
	_, err := base64.RawURLEncoding.DecodeString(s)
	return err == nil
}

// Event types and offline reasons.
const (
	EventOnline  = "online"
	EventOffline = "offline"

	ReasonClosed   = "closed"    // the last socket closed (client or network)
	ReasonKicked   = "kicked"    // ForceOffline
	ReasonMoved    = "moved"     // owner changed; the client reconnects elsewhere
	ReasonDrain    = "drain"     // the node shut down gracefully
	ReasonNodeLost = "node_lost" // the node's lease lapsed; a survivor cleaned up
	ReasonSlow     = "slow"      // closed as a slow consumer
	ReasonTimeout  = "timeout"   // heartbeat timed out
	ReasonInbound  = "inbound"   // the client sent more frames than its inbound budget
)

// Event is an online or offline event, on the event channel and, as field
// "e" of an entry, on the event stream (docs/protocol.md).
type Event struct {
	Type   string `json:"type"`
	Client string `json:"client"`
	Node   string `json:"node"`
	Meta   string `json:"meta,omitempty"`
	Conns  int    `json:"conns"`
	TS     int64  `json:"ts"`
	Reason string `json:"reason,omitempty"`
}

// Encode returns the event JSON.
func (e Event) Encode() []byte { b, _ := json.Marshal(e); return b }

// EncodeAroundMeta returns the event's JSON cut where its "meta" goes,
// for a script that learns the meta only from the token record it reads
// (connect.lua): head + `,"meta":` + the meta as a JSON string + tail is
// Encode of the event with that meta, and head + tail is Encode without
// one. e.Meta is ignored.
func (e Event) EncodeAroundMeta() (head, tail []byte) {
	head, _ = json.Marshal(struct {
		Type   string `json:"type"`
		Client string `json:"client"`
		Node   string `json:"node"`
	}{e.Type, e.Client, e.Node})
	tail, _ = json.Marshal(struct {
		Conns  int    `json:"conns"`
		TS     int64  `json:"ts"`
		Reason string `json:"reason,omitempty"`
	}{e.Conns, e.TS, e.Reason})
	tail[0] = ',' // the rest of the one object: {"conns":… becomes ,"conns":…
	return head[:len(head)-1], tail
}

// DecodeEvent parses an event.
func DecodeEvent(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("%w: event: %v", ErrMalformed, err)
	}
	if e.Type != EventOnline && e.Type != EventOffline {
		return e, fmt.Errorf("%w: event type %q", ErrMalformed, e.Type)
	}
	return e, nil
}

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// NewID returns a 26-character id that sorts by creation time: 48 bits of
// unix milliseconds and 80 random bits in Crockford base32 (the ULID layout).
func NewID(now time.Time) string {
	var b [26]byte
	ms := uint64(now.UnixMilli())
	for i := 9; i >= 0; i-- {
		b[i] = crockford[ms&31]
		ms >>= 5
	}
	r1, r2 := mrand.Uint64(), mrand.Uint64()
	for i := 10; i < 26; i++ {
		if i < 22 {
			b[i] = crockford[r1&31]
			r1 >>= 5
		} else {
			b[i] = crockford[r2&31]
			r2 >>= 5
		}
	}
	return string(b[:])
}

// DecodeTokenRecord parses a token record read from Redis; a record without
// a valid node or clientId is malformed.
func DecodeTokenRecord(b []byte) (TokenRecord, error) {
	var r TokenRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%w: token record: %v", ErrMalformed, err)
	}
	if ValidateClientID(r.Client) != nil || ValidateClientID(r.Node) != nil || ValidateMeta(r.Meta) != nil {
		return r, fmt.Errorf("%w: token record fields", ErrMalformed)
	}
	return r, nil
}

// ClientFromQuery extracts the clientId a /ws URL names (its client
// parameter, which PrevConnectServer adds after the token); "" if absent,
// given more than once or not a valid clientId. It is only a hint: the
// token record says who connects, and a node that trusts the hint for
// nothing but the keys of its connect script (and the client's lock)
// falls back to two round trips when it is wrong.
func ClientFromQuery(rawQuery string) string {
	q, err := url.ParseQuery(rawQuery)
	if err != nil || len(q["client"]) != 1 {
		return ""
	}
	if id := q.Get("client"); ValidateClientID(id) == nil {
		return id
	}
	return ""
}

// TokenFromQuery extracts the token from a /ws query string; "" if absent
// or malformed.
func TokenFromQuery(rawQuery string) string {
	q, err := url.ParseQuery(rawQuery)
	if err != nil || len(q["token"]) != 1 {
		return ""
	}
	if t := q.Get("token"); ValidToken(t) {
		return t
	}
	return ""
}
