package store

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/wire"
)

// issueRaw stores a token whose record is raw, as a business service in
// another language (or a buggy one) might write it.
func issueRaw(t *testing.T, st *Redis, client, raw string) string {
	t.Helper()
	tok := wire.NewToken()
	if err := st.IssueToken(context.Background(), client, tok, []byte(raw), time.Minute); err != nil {
		t.Fatal(err)
	}
	return tok
}

func issueRec(t *testing.T, st *Redis, rec wire.TokenRecord) string {
	t.Helper()
	b, _ := json.Marshal(rec)
	return issueRaw(t, st, rec.Client, string(b))
}

func tokenExists(t *testing.T, st *Redis, client, tok string) bool {
	t.Helper()
	n, err := st.rc.Do(context.Background(), st.rc.B().Exists().Key(st.k.token(client, tok)).Build()).AsInt64()
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// eventPayloads returns the payloads of the event stream, oldest first.
func eventPayloads(t *testing.T, st *Redis) []string {
	t.Helper()
	entries, err := st.rc.Do(context.Background(), st.rc.B().Xrange().Key(st.k.eventStream()).Start("-").End("+").Build()).AsXRange()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.FieldValues["e"])
	}
	return out
}

func onlineEvent(client string) wire.Event {
	return wire.Event{Type: wire.EventOnline, Client: client, Node: "n1", Conns: 1, TS: 1732340000123}
}

// Connect does in one script what ConsumeToken and MarkOnline did in two:
// every outcome of the token, the presence and the event, and nothing
// written for a client the record does not name.
func TestConnect(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	if _, err := st.Join(ctx, "c1", []string{"r1", "r2"}); err != nil {
		t.Fatal(err)
	}
	connect := func(tok, client string) ConnectResult {
		t.Helper()
		res, err := st.Connect(ctx, ConnectRequest{Token: tok, Client: client, Node: "n1", Online: onlineEvent(client)})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}

	// First socket: consumed, online, channels loaded, one event.
	rec := wire.TokenRecord{Node: "n1", Client: "c1", Meta: `{"name":"<Bob & co>"}`, Issued: 1, Pos: "E.3"}
	tok := issueRec(t, st, rec)
	res := connect(tok, "c1")
	if res.Status != TokenConsumed || res.Online == nil || res.Online.Existed {
		t.Fatalf("first connect: %+v", res)
	}
	if got, err := wire.DecodeTokenRecord(res.Record); err != nil || got.Pos != "E.3" || got.Meta != rec.Meta {
		t.Fatalf("record %+v %v", got, err)
	}
	if slices.Sort(res.Online.Chans); !slices.Equal(res.Online.Chans, []string{"r1", "r2"}) {
		t.Fatalf("channels %v", res.Online.Chans)
	}
	if tokenExists(t, st, "c1", tok) {
		t.Fatal("token not consumed")
	}
	if node, _ := st.ClientNode(ctx, "c1"); node != "n1" {
		t.Fatalf("c1 online on %q", node)
	}
	if ids, _, _ := st.NodeClients(ctx, "n1", 0); !slices.Equal(ids, []string{"c1"}) {
		t.Fatalf("node clients %v", ids)
	}
	if nodes, _ := st.ClientNodes(ctx, "c1"); !slices.Equal(nodes, []string{"n1"}) {
		t.Fatalf("client nodes %v", nodes)
	}
	ev := onlineEvent("c1")
	ev.Meta = rec.Meta
	if got := eventPayloads(t, st); !slices.Equal(got, []string{string(ev.Encode())}) {
		t.Fatalf("events %q, want %s", got, ev.Encode())
	}

	// Already online (another socket, another node): no event.
	res = connect(issueRec(t, st, rec), "c1")
	if res.Status != TokenConsumed || res.Online == nil || !res.Online.Existed {
		t.Fatalf("second connect: %+v", res)
	}
	if n := len(eventPayloads(t, st)); n != 1 {
		t.Fatalf("%d events after a connect of an online client", n)
	}

	// Foreign: kept, nothing written.
	tok = issueRec(t, st, wire.TokenRecord{Node: "n2", Client: "c3"})
	if res := connect(tok, "c3"); res.Status != TokenForeign || res.Online != nil {
		t.Fatalf("foreign: %+v", res)
	}
	if !tokenExists(t, st, "c3", tok) {
		t.Fatal("a foreign token was consumed")
	}

	// Missing, and malformed (deleted, as before).
	if res := connect(wire.NewToken(), "c3"); res.Status != TokenMissing {
		t.Fatalf("missing: %+v", res)
	}
	for _, raw := range []string{"not json", `{"node":5,"client":"c3"}`, `[1,2]`, `"n1"`, `{"client":"c3"}`, `{"node":"n1"`} {
		tok := issueRaw(t, st, "c3", raw)
		if res := connect(tok, "c3"); res.Status != TokenMissing {
			t.Errorf("malformed %q: %+v", raw, res)
		}
		if tokenExists(t, st, "c3", tok) {
			t.Errorf("malformed %q kept", raw)
		}
	}

	// The record names another client than the URL, or a meta the script
	// does not vouch for: consumed, no presence for anybody.
	for _, raw := range []string{
		`{"node":"n1","client":"c4"}`,
		`{"node":"n1","client":5}`,
		`{"node":"n1","client":"c3","meta":7}`,
		`{"node":"n1","client":"c3","meta":"` + strings.Repeat("m", wire.MaxMetaLen+1) + `"}`,
		`{"node":"n1","client":"c3","meta":"bad ` + "\xff" + ` byte"}`,
	} {
		tok := issueRaw(t, st, "c3", raw)
		res := connect(tok, "c3")
		if res.Status != TokenConsumed || res.Online != nil || string(res.Record) != raw {
			t.Errorf("%q: %+v", raw, res)
		}
		if tokenExists(t, st, "c3", tok) {
			t.Errorf("%q: token kept", raw)
		}
	}
	if on, _ := st.AreOnline(ctx, []string{"c3", "c4"}); on[0] || on[1] {
		t.Fatalf("online %v after connects that wrote no presence", on)
	}
	if n := len(eventPayloads(t, st)); n != 1 {
		t.Fatalf("%d events, want 1", n)
	}

	// A null meta is no meta.
	res = connect(issueRaw(t, st, "c5", `{"node":"n1","client":"c5","meta":null}`), "c5")
	if res.Online == nil || res.Online.Existed {
		t.Fatalf("null meta: %+v", res)
	}
	if got := eventPayloads(t, st); got[len(got)-1] != string(onlineEvent("c5").Encode()) {
		t.Fatalf("event %s, want %s", got[len(got)-1], onlineEvent("c5").Encode())
	}
}

// The script puts the record's meta into the event as encoding/json would
// have, byte for byte; and it vouches exactly for the metas Go's
// utf8.ValidString accepts (others go to the node, which decodes the
// record itself).
func TestConnectEventBytes(t *testing.T) {
	st := newTestStore(t)
	ctx := context.Background()
	metas := []string{
		"plain", `{"name":"Bob"}`, "<script>&amp;</script>", "quote\" back\\slash /slash",
		"\b\f\n\r\t\x00\x01\x1f\x7f", "\u2028\u2029 line seps", "用户 é 😀", "\u00a0\u0085",
		strings.Repeat("x", wire.MaxMetaLen),
	}
	for i, meta := range metas {
		id := "e" + string(rune('a'+i))
		res, err := st.Connect(ctx, ConnectRequest{Token: issueRec(t, st, wire.TokenRecord{Node: "n1", Client: id, Meta: meta}),
			Client: id, Node: "n1", Online: onlineEvent(id)})
		if err != nil || res.Online == nil {
			t.Fatalf("meta %q: %+v %v", meta, res, err)
		}
		ev := onlineEvent(id)
		ev.Meta = meta
		got := eventPayloads(t, st)
		if last := got[len(got)-1]; last != string(ev.Encode()) {
			t.Errorf("meta %q:\n got %s\nwant %s", meta, last, ev.Encode())
		}
	}
	// Raw bytes in the record (encoding/json would have replaced invalid
	// ones, so the record is written by hand).
	raws := []string{"\xc3\xa9", "\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\xa0\x80", "\xed\x9f\xbf", "\xed\xa0\x80",
		"\xef\xbf\xbf", "\xf0\x8f\xbf\xbf", "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80",
		"\xe2\x82", "\x80", "a\xff", "\xc3", "\xe2\x28\xa1", "\xf0\x9f\x98"}
	for i, raw := range raws {
		id := "u" + string(rune('a'+i))
		tok := issueRaw(t, st, id, `{"node":"n1","client":"`+id+`","meta":"`+raw+`"}`)
		res, err := st.Connect(ctx, ConnectRequest{Token: tok, Client: id, Node: "n1", Online: onlineEvent(id)})
		if err != nil || res.Status != TokenConsumed {
			t.Fatalf("%q: %+v %v", raw, res, err)
		}
		if vouched := res.Online != nil; vouched != utf8.ValidString(raw) {
			t.Errorf("%q: script vouched %v, utf8.ValidString %v", raw, vouched, utf8.ValidString(raw))
		}
	}
}

// At maxmemory the script is refused at its first write: nothing is
// written and the token stays, so the node can take it the way it did
// before the merge.
func TestConnectAtMaxmemory(t *testing.T) {
	rs := redistest.StartWith(t, "--maxmemory-policy", "noeviction")
	rc, err := Dial(rs.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	st := NewRedis(rc, Options{})
	ctx := context.Background()
	tok := issueRec(t, st, wire.TokenRecord{Node: "n1", Client: "c1"})
	// A connect before, so that the script is loaded (EVALSHA, not EVAL).
	if _, err := st.Connect(ctx, ConnectRequest{Token: wire.NewToken(), Client: "c0", Node: "n1"}); err != nil {
		t.Fatal(err)
	}
	setMax := func(v string) {
		t.Helper()
		if err := rc.Do(ctx, rc.B().ConfigSet().ParameterValue().ParameterValue("maxmemory", v).Build()).Error(); err != nil {
			t.Fatal(err)
		}
	}
	setMax("1")
	_, err = st.Connect(ctx, ConnectRequest{Token: tok, Client: "c1", Node: "n1", Online: onlineEvent("c1")})
	setMax("0")
	if !errors.Is(err, ErrRedisFull) {
		t.Fatalf("connect at maxmemory: %v, want ErrRedisFull", err)
	}
	if !tokenExists(t, st, "c1", tok) {
		t.Fatal("the token was consumed by a refused connect")
	}
	if on, _ := st.AreOnline(ctx, []string{"c1"}); on[0] {
		t.Fatal("c1 online after a refused connect")
	}
	if n := len(eventPayloads(t, st)); n != 0 {
		t.Fatalf("%d events", n)
	}
	// consume_token.lua still works at maxmemory: a DEL needs no memory.
	setMax("1")
	_, status, err := st.ConsumeToken(ctx, "c1", tok, "n1")
	setMax("0")
	if err != nil || status != TokenConsumed {
		t.Fatalf("consume at maxmemory: %v %v", status, err)
	}
}
