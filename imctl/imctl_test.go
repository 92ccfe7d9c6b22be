package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/wire"
)

// unreachable is a Redis URL nothing listens on: commands that must fail
// before dialling are run against it.
const unreachable = "redis://127.0.0.1:1/0"

func TestUsageAndExitCodes(t *testing.T) {
	r := runImctl(t, nil, "-h")
	if r.code != 0 || !strings.Contains(r.stdout, "Usage:") {
		t.Errorf("imctl -h: %s", r)
	}
	for _, c := range commands {
		if !strings.Contains(r.stdout, "  "+c.name+" ") {
			t.Errorf("imctl -h does not list %s", c.name)
		}
		cr := runImctl(t, nil, c.name, "-h")
		if cr.code != 0 || !strings.Contains(cr.stdout, "Usage: imctl "+c.name) || !strings.Contains(cr.stdout, "-redis-url") {
			t.Errorf("imctl %s -h: %s", c.name, cr)
		}
	}
	// version needs no Redis: it answers against an unreachable one.
	if r := runImctl(t, nil, "-redis-url", unreachable, "version", "--json"); r.code != 0 || !strings.Contains(r.stdout, `"goversion":"go`) {
		t.Errorf("imctl version --json: %s", r)
	}
	if r := runImctl(t, nil, "help", "send"); r.code != 0 || !strings.Contains(r.stdout, "-from") {
		t.Errorf("imctl help send: %s", r)
	}

	usage := [][]string{
		{},                         // no command
		{"frobnicate"},             // unknown command
		{"nodes", "-bogus"},        // unknown flag
		{"nodes", "extra"},         // too many arguments
		{"who"},                    // too few
		{"send", `{"a":1}`},        // no receiver
		{"kick", "a", "b"},         // too many
		{"-timeout", "0", "nodes"}, // not a deadline
		{"events", "-group", "g"},  // group without consumer
		{"events", "-from-start"},  // from-start without group
	}
	for _, args := range usage {
		if r := runImctl(t, nil, append([]string{"-redis-url", unreachable}, args...)...); r.code != 2 || r.stderr == "" {
			t.Errorf("imctl %v: want exit 2 with a message, got %s", args, r)
		}
	}
	// A payload that is not JSON is refused before Redis is dialled.
	for _, args := range [][]string{
		{"send", "bob", "hello"},
		{"send", "bob", "carol", `{"text":`},
		{"chan-send", "room", "{'single':'quotes'}"},
		{"broadcast", "\"a\xffb\""},
	} {
		r := runImctl(t, nil, append([]string{"-redis-url", unreachable}, args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, "payload is not valid") || r.stdout != "" {
			t.Errorf("imctl %v: want exit 2 and a payload error, got %s", args, r)
		}
	}
	if r := runImctl(t, nil, "-redis-url", "http://127.0.0.1:6379", "nodes"); r.code != 2 || !strings.Contains(r.stderr, "invalid redis url") {
		t.Errorf("bad Redis URL: want exit 2, got %s", r)
	}
	// The node's semantics: IM_REDIS_URL is the default, a flag wins.
	if r := runImctl(t, []string{"IM_REDIS_URL=http://x"}, "nodes"); r.code != 2 {
		t.Errorf("bad IM_REDIS_URL: want exit 2, got %s", r)
	}
	if r := runImctl(t, []string{"IM_REDIS_URL=" + unreachable}, "nodes"); r.code != 1 || !strings.Contains(r.stderr, "cannot reach Redis") {
		t.Errorf("unreachable Redis: want exit 1, got %s", r)
	}
}

// nodeJSONOf decodes `imctl nodes --json`.
func nodesOf(t *testing.T, out string) []nodeJSON {
	t.Helper()
	var nodes []nodeJSON
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("nodes --json is not a JSON array: %v\n%s", err, out)
	}
	return nodes
}

func TestOneShotCommands(t *testing.T) {
	d := startDeployment(t, nil, "node-1", "node-2")
	ctx := context.Background()
	alice, bob := d.connect("alice"), d.connect("bob")
	if err := d.im.JoinChan(ctx, "alice", "room-1"); err != nil {
		t.Fatal(err)
	}
	if err := d.im.JoinChan(ctx, "carol", "room-1", "room-2"); err != nil { // carol is offline
		t.Fatal(err)
	}
	aliceNode, _ := d.im.OnlineNode(ctx, "alice")
	bobNode, _ := d.im.OnlineNode(ctx, "bob")

	t.Run("nodes", func(t *testing.T) {
		out := d.mustRun("nodes")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !regexp.MustCompile(`^ID\s+URL\s+LEASE\s+DRAINING\s+CLIENTS$`).MatchString(lines[0]) {
			t.Fatalf("nodes table:\n%s", out)
		}
		for i, n := range d.nodes {
			want := regexp.MustCompile(`^` + n.NodeID() + `\s+` + regexp.QuoteMeta(n.PublicURL()) + `\s+\d+\.\ds\s+no\s+\d+$`)
			if !want.MatchString(lines[i+1]) {
				t.Errorf("row %d = %q, want %s", i+1, lines[i+1], want)
			}
		}

		// JSON: per-node client counts follow where alice and bob are.
		clients := map[string]int64{}
		clients[aliceNode]++
		clients[bobNode]++
		nodes := nodesOf(t, d.mustRun("--json", "nodes"))
		if len(nodes) != 2 {
			t.Fatalf("nodes --json = %+v", nodes)
		}
		for i, n := range nodes {
			srv := d.nodes[i]
			if n.ID != srv.NodeID() || n.URL != srv.PublicURL() || n.Draining || n.Clients != clients[n.ID] || n.Proto != wire.NodeMsgVersion {
				t.Errorf("node %d = %+v, want %s at %s with %d clients", i, n, srv.NodeID(), srv.PublicURL(), clients[n.ID])
			}
			if n.LeaseMS <= 0 || n.LeaseMS > 5000 {
				t.Errorf("%s lease_ms = %d, want within (0, 5000]", n.ID, n.LeaseMS)
			}
			if time.Since(n.Started) > time.Minute || n.Started.After(time.Now()) {
				t.Errorf("%s started %v", n.ID, n.Started)
			}
		}

		// The environment names Redis as for the node, and a prefix no
		// node uses shows none.
		env := runImctl(t, []string{"IM_REDIS_URL=" + d.redis.URL()}, "nodes", "-json")
		if env.code != 0 || len(nodesOf(t, env.stdout)) != 2 {
			t.Errorf("nodes with IM_REDIS_URL: %s", env)
		}
		if out := d.mustRun("-prefix", "other:", "nodes"); strings.TrimSpace(out) != "no live node" {
			t.Errorf("nodes under another prefix:\n%s", out)
		}
		if out := runImctl(t, []string{"IM_REDIS_URL=" + d.redis.URL(), "IM_PREFIX=other:"}, "--json", "nodes"); strings.TrimSpace(out.stdout) != "[]" {
			t.Errorf("nodes --json under IM_PREFIX=other: %s", out)
		}
	})

	t.Run("online", func(t *testing.T) {
		ids := strings.Fields(d.mustRun("online"))
		slices.Sort(ids)
		if fmt.Sprint(ids) != "[alice bob]" {
			t.Errorf("online = %v", ids)
		}
		var got []string
		for _, l := range strings.Split(strings.TrimSpace(d.mustRun("online", "--json")), "\n") {
			var v struct{ Client string }
			if err := json.Unmarshal([]byte(l), &v); err != nil {
				t.Fatalf("online --json line %q: %v", l, err)
			}
			got = append(got, v.Client)
		}
		slices.Sort(got)
		if fmt.Sprint(got) != "[alice bob]" {
			t.Errorf("online --json = %v", got)
		}
		if out := d.mustRun("online", "--count"); out != "2\n" {
			t.Errorf("online --count = %q", out)
		}
		if out := d.mustRun("--json", "online", "-count"); out != `{"count":2}`+"\n" {
			t.Errorf("online --count --json = %q", out)
		}
	})

	t.Run("who", func(t *testing.T) {
		out := d.mustRun("who", "alice")
		for _, want := range []string{
			`client:\s+alice`, `owner:\s+` + d.im.Owner("alice") + `\n`,
			`online:\s+yes, on ` + aliceNode, `channels:\s+room-1\n`,
		} {
			if !regexp.MustCompile(want).MatchString(out) {
				t.Errorf("who alice lacks %q:\n%s", want, out)
			}
		}
		var w whoJSON
		if err := json.Unmarshal([]byte(d.mustRun("who", "--json", "alice")), &w); err != nil {
			t.Fatal(err)
		}
		if w.Client != "alice" || w.Owner != d.im.Owner("alice") || !w.Online || w.Node != aliceNode || fmt.Sprint(w.Channels) != "[room-1]" {
			t.Errorf("who --json alice = %+v", w)
		}

		// An offline client that joined channels, and one never seen.
		out = d.mustRun("who", "carol")
		if !regexp.MustCompile(`online:\s+no\n`).MatchString(out) || !regexp.MustCompile(`channels:\s+room-1, room-2\n`).MatchString(out) {
			t.Errorf("who carol:\n%s", out)
		}
		out = d.mustRun("who", "nobody")
		if !regexp.MustCompile(`owner:\s+`+d.im.Owner("nobody")+`\n`).MatchString(out) ||
			!regexp.MustCompile(`online:\s+no\n`).MatchString(out) || !regexp.MustCompile(`channels:\s+none\n`).MatchString(out) {
			t.Errorf("who nobody:\n%s", out)
		}
		raw := d.mustRun("--json", "who", "nobody")
		if want := fmt.Sprintf(`{"client":"nobody","owner":"%s","online":false,"channels":[]}`+"\n", d.im.Owner("nobody")); raw != want {
			t.Errorf("who --json nobody = %s, want %s", raw, want)
		}
		if r := d.run("who", "not valid"); r.code != 2 || !strings.Contains(r.stderr, "client") {
			t.Errorf("who with an invalid clientId: %s", r)
		}
	})

	t.Run("chans", func(t *testing.T) {
		out := d.mustRun("chans")
		if !regexp.MustCompile(`^CHANNEL\s+MEMBERS\s+ONLINE\nroom-1\s+2\s+1\nroom-2\s+1\s+0\n$`).MatchString(out) {
			t.Errorf("chans:\n%s", out)
		}
		if out := d.mustRun("chans", "--json"); out != `[{"name":"room-1","members":2,"online":1},{"name":"room-2","members":1,"online":0}]`+"\n" {
			t.Errorf("chans --json = %s", out)
		}
	})

	// Each send prints the id the receivers' frames carry.
	type frame struct {
		Type, ID, From, Channel string
		Data                    json.RawMessage
	}
	recv := func(w *wsClient) frame {
		t.Helper()
		var f frame
		if raw := w.frame(t); json.Unmarshal([]byte(raw), &f) != nil {
			t.Fatalf("%s got %q", w.id, raw)
		}
		return f
	}
	idRE := regexp.MustCompile(`^[0-9A-Z]{26}\n$`)

	t.Run("send", func(t *testing.T) {
		out := d.mustRun("send", "bob", `{ "text" : "hi" }`)
		if !idRE.MatchString(out) {
			t.Fatalf("send printed %q, want a message id", out)
		}
		if f := recv(bob); f.Type != "message" || f.ID != strings.TrimSpace(out) || f.From != "imctl" || string(f.Data) != `{"text":"hi"}` {
			t.Errorf("bob got %+v for id %s", f, out)
		}
		var sent struct{ ID string }
		if err := json.Unmarshal([]byte(d.mustRun("send", "--json", "-from", "dave", "alice", "bob", `[1,2]`)), &sent); err != nil || len(sent.ID) != 26 {
			t.Fatalf("send --json: %+v %v", sent, err)
		}
		for _, w := range []*wsClient{alice, bob} {
			if f := recv(w); f.ID != sent.ID || f.From != "dave" || string(f.Data) != `[1,2]` {
				t.Errorf("%s got %+v, want id %s from dave", w.id, f, sent.ID)
			}
		}
		if r := d.run("send", "-from", "bad sender", "bob", `1`); r.code != 2 {
			t.Errorf("send from an invalid clientId: %s", r)
		}
	})

	t.Run("chan-send", func(t *testing.T) {
		out := d.mustRun("chan-send", "room-1", `"to the room"`)
		if !idRE.MatchString(out) {
			t.Fatalf("chan-send printed %q", out)
		}
		if f := recv(alice); f.Type != "channel" || f.Channel != "room-1" || f.ID != strings.TrimSpace(out) || string(f.Data) != `"to the room"` {
			t.Errorf("alice got %+v", f)
		}
		if out := d.mustRun("chan-send", "-json", "room-1", `{}`); !strings.HasPrefix(out, `{"id":"`) {
			t.Errorf("chan-send --json = %q", out)
		}
		recv(alice)
	})

	t.Run("broadcast", func(t *testing.T) {
		out := d.mustRun("broadcast", `{"notice":"maintenance"}`)
		for _, w := range []*wsClient{alice, bob} {
			if f := recv(w); f.Type != "broadcast" || f.ID != strings.TrimSpace(out) || string(f.Data) != `{"notice":"maintenance"}` {
				t.Errorf("%s got %+v for %s", w.id, f, out)
			}
		}
	})

	t.Run("kick", func(t *testing.T) {
		if out := d.mustRun("kick", "bob"); !strings.Contains(out, "kick sent for bob") {
			t.Errorf("kick printed %q", out)
		}
		if code := bob.closeCode(t); code != 4001 {
			t.Errorf("bob closed with %d, want 4001", code)
		}
		d.waitOnline("bob", false)
		if out := d.mustRun("kick", "--json", "alice"); out != `{"client":"alice","kick_sent":true}`+"\n" {
			t.Errorf("kick --json = %q", out)
		}
		if code := alice.closeCode(t); code != 4001 {
			t.Errorf("alice closed with %d, want 4001", code)
		}
	})
}

// A draining node is listed, marked, while it still holds its lease.
func TestNodesShowsDraining(t *testing.T) {
	d := startDeployment(t, func(c *imserver.Config) {
		if c.NodeID == "node-2" {
			// Keeps the second socket open for 5 minutes: the drain lasts
			// until the test closes it, however slow the box.
			c.DrainWindow = 10 * time.Minute
		}
	}, "node-1", "node-2")
	a, b := d.connect(d.ownedBy("node-2", "a")), d.connect(d.ownedBy("node-2", "b"))
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
		defer cancel()
		drained <- d.nodes[1].Shutdown(ctx)
	}()
	last := ""
	waitFor(t, 10*time.Second, func() error {
		nodes := nodesOf(t, d.mustRun("nodes", "--json"))
		if seen := fmt.Sprintf("%+v", nodes); seen != last { // for a failure's log
			t.Logf("%s nodes --json = %s", time.Now().Format("15:04:05.000"), seen)
			last = seen
		}
		if len(nodes) != 2 || !nodes[1].Draining || nodes[0].Draining {
			return fmt.Errorf("nodes --json = %+v, want node-2 draining", nodes)
		}
		return nil
	})
	if out := d.mustRun("nodes"); !regexp.MustCompile(`\nnode-2\s+\S+\s+\d+\.\ds\s+yes\s+\d\n`).MatchString(out) {
		t.Errorf("nodes while node-2 drains:\n%s", out)
	}
	// Let the drain finish now.
	a.conn.CloseNow()
	b.conn.CloseNow()
	if err := <-drained; err != nil {
		t.Errorf("drain: %v", err)
	}
	if nodes := nodesOf(t, d.mustRun("nodes", "--json")); len(nodes) != 1 || nodes[0].ID != "node-1" {
		t.Errorf("after the drain: %+v", nodes)
	}
}

func TestListen(t *testing.T) {
	d := startDeployment(t, nil, "node-1", "node-2")

	t.Run("json", func(t *testing.T) {
		p := d.start("listen", "--json", "-meta", `{"device":"imctl"}`, "zed")
		d.waitOnline("zed", true)
		id := strings.TrimSpace(d.mustRun("send", "zed", `{"text":"to zed"}`))
		var f struct {
			Type, ID string
			Data     json.RawMessage
		}
		line := p.until(id)
		if err := json.Unmarshal([]byte(line), &f); err != nil || f.Type != "message" || f.ID != id || string(f.Data) != `{"text":"to zed"}` {
			t.Errorf("listen printed %q for message %s", line, id)
		}
		d.mustRun("kick", "zed")
		var closed struct {
			Type   string
			Code   int
			Reason string
		}
		if line := p.next(); json.Unmarshal([]byte(line), &closed) != nil || closed.Type != "closed" || closed.Code != 4001 || closed.Reason == "" {
			t.Errorf("after the kick listen printed %q, want the 4001 close", line)
		}
		if code := p.exitCode(); code != 0 {
			t.Errorf("listen exited %d after the close; stderr:\n%s", code, p.errText())
		}
	})

	t.Run("human", func(t *testing.T) {
		p := d.start("listen", "yan")
		d.waitOnline("yan", true)
		id := strings.TrimSpace(d.mustRun("send", "yan", `"plain"`))
		if line := p.until(id); !regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3}  \{"type":"message".*"data":"plain"(,"epoch":"[\w-]+","offset":\d+)?\}$`).MatchString(line) {
			t.Errorf("listen printed %q", line)
		}
		d.mustRun("kick", "yan")
		if line := p.next(); line != "closed: 4001 forced offline" {
			t.Errorf("after the kick listen printed %q", line)
		}
		if code := p.exitCode(); code != 0 {
			t.Errorf("listen exited %d; stderr:\n%s", code, p.errText())
		}
		if !strings.Contains(p.errText(), "connected to ws://") || strings.Contains(p.errText(), "token=") {
			t.Errorf("listen's notice %q should name the node without the token", p.errText())
		}
	})

	t.Run("interrupt", func(t *testing.T) {
		p := d.start("listen", "xia")
		d.waitOnline("xia", true)
		p.signal(syscall.SIGTERM)
		if code := p.exitCode(); code != 0 {
			t.Errorf("listen exited %d on SIGTERM; stderr:\n%s", code, p.errText())
		}
		d.waitOnline("xia", false)
	})
}

func TestEvents(t *testing.T) {
	d := startDeployment(t, nil, "node-1", "node-2")
	// pub/sub has no backlog: wait until both tails are subscribed.
	tailJSON, tailHuman := d.start("events", "--json"), d.start("events")
	waitFor(t, 15*time.Second, func() error {
		out, err := d.redis.Exec("PUBSUB", "NUMSUB", "im:events")
		if fields := strings.Fields(out); err != nil || len(fields) != 2 || fields[1] != "2" {
			return fmt.Errorf("PUBSUB NUMSUB im:events = %q (%v), want 2 subscribers", out, err)
		}
		return nil
	})
	group := d.start("events", "-json", "-group", "ops", "-consumer", "c1")
	waitFor(t, 15*time.Second, func() error {
		if out, _ := d.redis.Exec("XINFO", "GROUPS", "im:events:stream"); !strings.Contains(out, "ops") {
			return fmt.Errorf("no group ops yet: %q", out)
		}
		return nil
	})

	eve := d.connect("eve")
	owner := d.im.Owner("eve")
	if err := eve.conn.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	d.waitOnline("eve", false)

	for _, p := range []*proc{tailJSON, group} {
		for _, want := range []struct{ typ, reason string }{{"online", ""}, {"offline", "closed"}} {
			var e eventJSON
			line := p.until(`"client":"eve"`)
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatalf("event line %q: %v", line, err)
			}
			if e.Type != want.typ || e.Node != owner || e.Reason != want.reason || time.Since(e.Time) > time.Minute {
				t.Errorf("%v printed %+v, want %s on %s", p.cmd.Args, e, want.typ, owner)
			}
			if (p == group) != (e.StreamID != "") {
				t.Errorf("%v: stream_id %q", p.cmd.Args, e.StreamID)
			}
			if want.typ == "online" && (e.Meta != `{"device":"test"}` || e.Conns != 1) {
				t.Errorf("online event %+v lacks meta or conns", e)
			}
		}
	}
	tsRE := `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  `
	if line := tailHuman.until(" eve "); !regexp.MustCompile(tsRE + `online   eve  node=` + owner + `  conns=1  meta=\{"device":"test"\}$`).MatchString(line) {
		t.Errorf("events printed %q", line)
	}
	if line := tailHuman.until(" eve "); !regexp.MustCompile(tsRE + `offline  eve  node=` + owner + `  conns=0  reason=closed  meta=\{"device":"test"\}$`).MatchString(line) {
		t.Errorf("events printed %q", line)
	}

	for _, p := range []*proc{tailJSON, tailHuman, group} {
		p.signal(syscall.SIGINT)
		if code := p.exitCode(); code != 0 {
			t.Errorf("%v exited %d on SIGINT; stderr:\n%s", p.cmd.Args, code, p.errText())
		}
	}
	// The group acknowledged what it printed.
	if out, err := d.redis.Exec("XPENDING", "im:events:stream", "ops"); err != nil || strings.Fields(out)[0] != "0" {
		t.Errorf("XPENDING ops = %q (%v), want nothing pending", out, err)
	}
}
