package main

import (
	"context"
	"log/slog"
	"net/http"
	"testing"
	"time"
)

// The one-command mode: miniredis and an imserver node in this process.
// The same API flows as against a real Redis must work.
func TestEmbeddedSystem(t *testing.T) {
	sys, err := startSystem(context.Background(), config{Addr: "127.0.0.1:0", NodeAddr: "127.0.0.1:0"}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sys.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if sys.embedded == nil || sys.node == nil {
		t.Fatal("not in embedded mode")
	}
	e := &testEnv{t: t, app: sys.app, node: sys.node, base: sys.URL()}

	a, b := e.signIn("alice"), e.signIn("bob")
	for _, u := range []*browser{a, b} {
		u.mustDo("POST", "/api/rooms/lobby/join", nil, http.StatusOK, nil)
	}
	sa := a.connect()
	// A private message to offline bob waits for him.
	a.mustDo("POST", "/api/messages", map[string]string{"to": "bob", "text": "kept"}, http.StatusAccepted, nil)
	sb := b.connect()
	if f := sb.next("the kept message", kind("dm")); f.DataMap()["text"] != "kept" {
		t.Fatalf("kept message %+v", f)
	}

	a.mustDo("POST", "/api/messages", map[string]string{"to": "bob", "text": "live"}, http.StatusOK, nil)
	sb.next("the live message", func(f frame) bool { return f.DataMap()["text"] == "live" })
	sa.next("the receipt", func(f frame) bool { return f.Type == "receipt" && f.Status == "delivered" })

	a.mustDo("POST", "/api/rooms/lobby/messages", map[string]string{"text": "room"}, http.StatusCreated, nil)
	sb.next("the room message", kind("chat"))

	var rooms roomList
	a.mustDo("GET", "/api/rooms", nil, http.StatusOK, &rooms)
	if got := rooms.get("lobby"); got.Online != 2 || got.Members != 2 {
		t.Fatalf("lobby = %+v", got)
	}

	// A page opened at the printed address may connect to the node.
	if got := pageOrigins(sys.ln.Addr()); len(got) != 2 || got[0] != sys.ln.Addr().String() {
		t.Fatalf("origins = %v", got)
	}
	a.mustDo("POST", "/api/admin/kick", map[string]string{"nick": "bob"}, http.StatusOK, nil, "Authorization", "Bearer "+sys.app.adminToken)
	if code := <-sb.closed; code != 4001 {
		t.Fatalf("close code %d, want 4001", code)
	}
	// Other pages' online lists learn of the kick.
	sa.next("bob's offline presence", func(f frame) bool { d := f.DataMap(); return d["nick"] == "bob" && d["online"] == false })
}

func TestConfigFromEnv(t *testing.T) {
	c := configFromEnv(func(string) string { return "" })
	if c != (config{Addr: "127.0.0.1:8080", NodeAddr: "127.0.0.1:0"}) {
		t.Fatalf("defaults = %+v", c)
	}
	env := map[string]string{"WEBAPI_ADDR": ":9000", "IM_REDIS_URL": "redis://127.0.0.1:7000/0", "WEBAPI_ADMIN_TOKEN": "t"}
	c = configFromEnv(func(k string) string { return env[k] })
	if c.Addr != ":9000" || c.RedisURL != "redis://127.0.0.1:7000/0" || c.AdminToken != "t" {
		t.Fatalf("from env = %+v", c)
	}
}
