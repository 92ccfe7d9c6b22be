package imserver_test

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// monitor records the commands Redis runs (MONITOR, through redis-cli)
// between its start and stop: what clients sent, and what scripts ran
// (as from "lua"), with their arguments.
type monitor struct {
	rs    *redistest.Server
	cmd   *exec.Cmd
	lines chan string
}

func startMonitor(t *testing.T, rs *redistest.Server) *monitor {
	t.Helper()
	m := &monitor{rs: rs, cmd: exec.Command("redis-cli", "-p", strconv.Itoa(rs.Port), "monitor"), lines: make(chan string, 1<<16)}
	out, err := m.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.cmd.Process.Kill(); _ = m.cmd.Wait() })
	go func() {
		defer close(m.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 64<<20) // a batch's script arguments are one line
		for sc.Scan() {
			m.lines <- sc.Text()
		}
	}()
	// From the first ECHO MONITOR shows on, it sees every command. (The
	// first may be sent before it is on: they are sent until one shows.)
	m.until(t, "monitor-start", true)
	return m
}

// until sends ECHO marker (again every 100 ms if resend) until MONITOR
// shows it, and returns the lines before it.
func (m *monitor) until(t *testing.T, marker string, resend bool) []string {
	t.Helper()
	var out []string
	deadline := time.After(30 * time.Second)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	if _, err := m.rs.Exec("ECHO", marker); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case l, ok := <-m.lines:
			if !ok {
				t.Fatal("MONITOR ended")
			}
			if strings.Contains(l, `"`+marker+`"`) {
				return out
			}
			out = append(out, l)
		case <-tick.C:
			if resend {
				_, _ = m.rs.Exec("ECHO", marker)
			}
		case <-deadline:
			t.Fatalf("MONITOR never showed %s", marker)
		}
	}
}

// sendKeptRuns counts, in MONITOR lines, the runs of send_kept.lua (by its
// SHA-1, or its text after a NOSCRIPT) and the PUBLISH commands scripts
// issued.
func sendKeptRuns(t *testing.T, lines []string) (runs, scriptPublishes, scriptLoads int) {
	t.Helper()
	src := []byte("#!lua\n")                                     // refused at maxmemory (store.newFlaggedScript)
	for _, f := range []string{"history.lua", "send_kept.lua"} { // store.NewRedis prepends history.lua
		b, err := os.ReadFile("../internal/store/lua/" + f)
		if err != nil {
			t.Fatal(err)
		}
		src = append(src, b...)
	}
	sum := sha1.Sum(src)
	sha := hex.EncodeToString(sum[:])
	for _, l := range lines {
		_, cmd, _ := strings.Cut(l, "] ")
		low := strings.ToLower(cmd[:min(len(cmd), 80)])
		switch {
		case strings.HasPrefix(low, `"evalsha" "`+sha+`"`),
			strings.HasPrefix(low, `"eval" `) && strings.Contains(cmd, "Publish one node message whose receivers keep history"):
			runs++
		case strings.Contains(l, "[0 lua] ") && strings.HasPrefix(low, `"publish"`):
			scriptPublishes++
		case strings.HasPrefix(low, `"script" "load"`):
			scriptLoads++
		}
	}
	return runs, scriptPublishes, scriptLoads
}

// A batch to 60 receivers spread over 3 nodes, several messages each, is
// one PUBLISH per owning node (counted by Redis, INFO commandstats) and one
// send_kept.lua run per node (seen in MONITOR), and every receiver gets
// its messages exactly once, in batch order, after what it was sent
// before, with the positions SendMessages returned.
func TestSendMessagesOnePublishPerNode(t *testing.T) {
	c := startCluster(t, 3, func(cfg *imserver.Config) { cfg.ProbeInterval = time.Hour })
	const n = 60
	var ids []string
	clients := map[string]*wsClient{}
	owners := map[string]bool{}
	for i := range n {
		id := fmt.Sprintf("bq-%d", i)
		ids = append(ids, id)
		clients[id] = c.connect(id, "")
		owners[c.helper.Owner(id)] = true
	}
	if len(owners) != 3 {
		t.Fatalf("receivers on %d nodes, want 3", len(owners))
	}
	for _, id := range ids {
		if _, err := c.helper.SendMessage(bg, "before", []string{id}, `"before"`); err != nil {
			t.Fatal(err)
		}
	}
	// Three rounds of a message per receiver (the last in reverse, so
	// that batch order is not receiver order), then one to all (with a
	// duplicate receiver).
	var msgs []imhelper.Outgoing
	want := map[string][]int{} // per receiver, the messages it gets, in order
	add := func(m imhelper.Outgoing) {
		msgs = append(msgs, m)
		seen := map[string]bool{}
		for _, id := range m.To {
			if !seen[id] {
				seen[id] = true
				want[id] = append(want[id], len(msgs)-1)
			}
		}
	}
	for r := range 3 {
		for i := range ids {
			if r == 2 {
				i = n - 1 - i
			}
			add(imhelper.Outgoing{From: "feed", To: []string{ids[i]}, Payload: fmt.Sprintf(`{"r":%d,"i":%d}`, r, i)})
		}
	}
	add(imhelper.Outgoing{From: "feed", To: append(slices.Clone(ids), ids[0]), Payload: `"all"`})

	mon := startMonitor(t, c.redis)
	before := publishCalls(t, c)
	sent, err := c.helper.SendMessages(bg, msgs)
	if err != nil {
		t.Fatal(err)
	}
	pubs := publishCalls(t, c) - before
	lines := mon.until(t, "monitor-stop", false)
	if len(sent) != len(msgs) {
		t.Fatalf("%d results for %d messages", len(sent), len(msgs))
	}
	for _, id := range ids {
		w := clients[id]
		if f := w.nextData(t); f.From != "before" {
			t.Fatalf("%s: first %+v, want what it was sent before the batch", id, f)
		}
		for _, k := range want[id] {
			f := w.nextData(t)
			p := sent[k].Positions[id]
			if f.ID != sent[k].ID || string(f.Data) != msgs[k].Payload.(string) || p.Offset == 0 || f.Offset != p.Offset || f.Epoch != p.Epoch {
				t.Fatalf("%s: got %+v (data %s), want message %d %s %s at %v", id, f, f.Data, k, sent[k].ID, msgs[k].Payload, p)
			}
		}
	}
	// Exactly once: the next frame of each is one sent after the batch.
	all := make([]*wsClient, 0, n)
	for _, id := range ids {
		all = append(all, clients[id])
	}
	c.barrier(all...)

	runs, scriptPubs, loads := sendKeptRuns(t, lines)
	t.Logf("batch of %d messages to %d receivers on 3 nodes: %d PUBLISH, %d send_kept.lua runs publishing %d times (and %d SCRIPT LOAD)",
		len(msgs), n, pubs, runs, scriptPubs, loads)
	if pubs != 3 || runs != 3 || scriptPubs != 3 {
		t.Errorf("the batch cost %d PUBLISH and %d script runs (%d publishing), want 3 of each: one per owning node", pubs, runs, scriptPubs)
	}
}

// Receipts and echo are per message of a batch: the sender's sockets get
// a receipt per receiver of each message that asked for them, and an echo
// copy (in batch order, with its position in the sender's stream) of each
// message that asked for that; a sender that is offline gets nothing.
func TestSendMessagesReceiptsAndEcho(t *testing.T) {
	c := startCluster(t, 3, nil)
	alice := c.connect("alice", "")
	var r []*wsClient
	owners := map[string]bool{}
	for i := range 9 {
		w := c.connect(fmt.Sprintf("rr-%d", i), "")
		r = append(r, w)
		owners[c.helper.Owner(w.id)] = true
	}
	if len(owners) < 2 {
		t.Fatalf("receivers on %d nodes", len(owners))
	}
	rcpt, echo := imhelper.WithReceipt(), imhelper.WithEcho()
	to := func(ws ...*wsClient) []string {
		var out []string
		for _, w := range ws {
			out = append(out, w.id)
		}
		return out
	}
	msgs := []imhelper.Outgoing{
		{From: "alice", To: append(to(r[0]), "ghost"), Payload: `0`, Opts: []imhelper.SendOption{rcpt}},
		{From: "alice", To: to(r[1], r[2]), Payload: `1`, Opts: []imhelper.SendOption{echo}},
		{From: "alice", To: to(r[3]), Payload: `2`, Opts: []imhelper.SendOption{rcpt, echo}},
		{From: "alice", To: to(r[4]), Payload: `3`},
		{From: "bob", To: to(r[5]), Payload: `4`, Opts: []imhelper.SendOption{rcpt, echo}}, // bob is offline
		{From: "alice", To: to(r[6], r[7], r[8]), Payload: `5`, Opts: []imhelper.SendOption{rcpt, echo}},
	}
	sent, err := c.helper.SendMessages(bg, msgs)
	if err != nil {
		t.Fatal(err)
	}
	gets := [][]int{{0}, {1}, {1}, {2}, {3}, {4}, {5}, {5}, {5}}
	for i, w := range r {
		for _, k := range gets[i] {
			if f := w.nextData(t); f.ID != sent[k].ID || string(f.Data) != msgs[k].Payload {
				t.Fatalf("%s: %+v, want message %d", w.id, f, k)
			}
		}
	}
	wantReceipts := map[string]string{
		sent[0].ID + " " + r[0].id: "delivered", sent[0].ID + " ghost": "offline",
		sent[2].ID + " " + r[3].id: "delivered",
		sent[5].ID + " " + r[6].id: "delivered", sent[5].ID + " " + r[7].id: "delivered", sent[5].ID + " " + r[8].id: "delivered",
	}
	wantEcho := []int{1, 2, 5}
	var echoes []frame
	receipts := map[string]string{}
	for len(echoes)+len(receipts) < len(wantEcho)+len(wantReceipts) {
		f := alice.nextData(t)
		switch f.Type {
		case "message":
			echoes = append(echoes, f)
		case "receipt":
			var who string
			_ = json.Unmarshal(f.To, &who)
			key := f.ID + " " + who
			if _, dup := receipts[key]; dup {
				t.Fatalf("receipt %s twice", key)
			}
			receipts[key] = f.Status
		default:
			t.Fatalf("alice got %+v", f)
		}
	}
	if fmt.Sprint(receipts) != fmt.Sprint(wantReceipts) {
		t.Errorf("receipts %v, want %v", receipts, wantReceipts)
	}
	for i, k := range wantEcho {
		f := echoes[i]
		var list []string
		_ = json.Unmarshal(f.To, &list)
		p := sent[k].Echo
		if f.ID != sent[k].ID || f.From != "alice" || fmt.Sprint(list) != fmt.Sprint(msgs[k].To) || p.Offset == 0 || f.Offset != p.Offset || f.Epoch != p.Epoch {
			t.Errorf("echo %d: %+v (to %v), want message %d to %v at %v", i, f, list, k, msgs[k].To, p)
		}
	}
	// An offline sender's echo copy is kept in its stream all the same (it
	// gets it when it connects); a message without echo has none.
	if sent[4].Echo.Offset != 1 || sent[0].Echo != (imhelper.Position{}) {
		t.Errorf("echo positions %+v (no echo), %+v (offline sender's first)", sent[0].Echo, sent[4].Echo)
	}
	c.barrier(alice) // nothing more before a message sent after
}

// What a batch kept is replayed on resume: a client that was away while a
// batch was sent gets, on reconnecting with its last position, exactly
// the batch's messages for it, in order, at the positions returned.
func TestSendMessagesResume(t *testing.T) {
	c := startCluster(t, 3, nil)
	ctx := context.Background()
	w, err := connectAt(t, c.helper, "hz")
	if err != nil {
		t.Fatal(err)
	}
	others := []string{"hz-a", "hz-b", "hz-c", "hz-d"}
	batch := func(tag string, k int) ([]imhelper.Sent, []imhelper.Outgoing) {
		var msgs []imhelper.Outgoing
		for i := range k {
			msgs = append(msgs, imhelper.Outgoing{From: "feed", To: []string{"hz"}, Payload: fmt.Sprintf(`"%s-%d"`, tag, i)},
				imhelper.Outgoing{From: "feed", To: others, Payload: `"other"`})
		}
		sent, err := c.helper.SendMessages(ctx, msgs)
		if err != nil {
			t.Fatal(err)
		}
		return sent, msgs
	}
	sent, msgs := batch("live", 2)
	var last imhelper.Position
	for i := 0; i < len(msgs); i += 2 {
		f := w.nextData(t)
		last = sent[i].Positions["hz"]
		if f.ID != sent[i].ID || f.Offset != last.Offset || string(f.Data) != msgs[i].Payload {
			t.Fatalf("live %+v, want %s at %v", f, msgs[i].Payload, last)
		}
	}
	_ = w.conn.Close(websocket.StatusNormalClosure, "")

	sent, msgs = batch("away", 5)
	w, err = connectAt(t, c.helper, "hz", last.String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.helper.SendMessage(ctx, "marker", []string{"hz"}, `"m"`); err != nil {
		t.Fatal(err)
	}
	replayed := w.framesUntil(t, func(f frame) bool { return f.From == "marker" })
	if st := w.first.Streams; len(st) != 1 || !st[0].Recovered || st[0].Offset != sent[8].Positions["hz"].Offset {
		t.Fatalf("first frame %+v, want recovered at %v", w.first, sent[8].Positions["hz"])
	}
	if len(replayed) != 5 {
		t.Fatalf("replayed %d, want 5: %+v", len(replayed), replayed)
	}
	for j, f := range replayed {
		i := 2 * j
		p := sent[i].Positions["hz"]
		if f.ID != sent[i].ID || f.Offset != p.Offset || f.Epoch != p.Epoch || string(f.Data) != msgs[i].Payload || p.Offset != last.Offset+uint64(j)+1 {
			t.Fatalf("replay %d: %+v, want %s at %v", j, f, msgs[i].Payload, p)
		}
	}
}

// While a live node announces version 1 of the node message format (an
// old release during a rolling upgrade), a batch is published as version 1
// sends, one per message per owning node: the old node gets only what it
// reads, the others all their messages in order. Once it is gone, batches
// are back to one PUBLISH per owning node.
func TestSendMessagesOldNodeFallback(t *testing.T) {
	c := startCluster(t, 3, func(cfg *imserver.Config) { cfg.ProbeInterval = time.Hour })
	// The old node: a lease announcing proto 1, and a subscription that
	// reads its channel as that release would.
	rc := rawClient(t, c.redis)
	st := store.NewRedis(rc, store.Options{})
	got := make(chan wire.NodeMsg, 1000)
	sub, err := st.Subscribe(bg, "old-node", func(m store.Message) {
		if m.Kind != store.ToNode {
			return
		}
		h, frames, err := wire.DecodeNodeMsg([]byte(m.Payload))
		if err != nil || h.Version != 1 || h.Kind != wire.KindSend || len(frames) != 1 {
			panic(fmt.Sprintf("the old node got what it cannot read: %q (%v)", m.Payload, err))
		}
		got <- h
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Close)
	if _, err := st.WriteLease(bg, wire.NodeInfo{ID: "old-node", URL: "ws://old.invalid/ws", Started: time.Now().UnixMilli(), Proto: 1}, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, c, 4)
	if infos, err := c.helper.NodeInfos(bg); err != nil || len(infos) != 4 || infos[3].ID != "old-node" || infos[3].Proto != 1 || infos[0].Proto != wire.NodeMsgVersion {
		t.Fatalf("registry %+v %v", infos, err)
	}
	// Receivers on the real nodes, connected, and two on the old node.
	var live []*wsClient
	var old []string
	for i := 0; len(live) < 12 || len(old) < 2; i++ {
		id := fmt.Sprintf("of-%d", i)
		if c.helper.Owner(id) == "old-node" {
			if len(old) < 2 {
				old = append(old, id)
			}
		} else if len(live) < 12 {
			live = append(live, c.connect(id, ""))
		}
	}
	var msgs []imhelper.Outgoing
	for r := range 2 {
		for _, w := range live {
			msgs = append(msgs, imhelper.Outgoing{From: "feed", To: []string{w.id}, Payload: fmt.Sprintf(`"%s-%d"`, w.id, r)})
		}
		msgs = append(msgs, imhelper.Outgoing{From: "feed", To: old, Payload: fmt.Sprintf(`"old-%d"`, r)})
	}
	before := publishCalls(t, c)
	sent, err := c.helper.SendMessages(bg, msgs)
	if err != nil {
		t.Fatal(err)
	}
	if d := publishCalls(t, c) - before; d != len(msgs) {
		t.Errorf("%d messages, each to one node, cost %d PUBLISH; want one per message", len(msgs), d)
	}
	for r := range 2 {
		for i, w := range live {
			k := r*(len(live)+1) + i
			if f := w.nextData(t); f.ID != sent[k].ID || f.Offset != sent[k].Positions[w.id].Offset {
				t.Fatalf("%s: %+v, want message %d", w.id, f, k)
			}
		}
		h := <-got
		if k := r*(len(live)+1) + len(live); h.ID != sent[k].ID || fmt.Sprint(h.To) != fmt.Sprint(old) || len(h.Pos) != 2 {
			t.Fatalf("the old node got %+v, want message %d to %v", h, k, old)
		}
	}

	// The old node leaves: batches again.
	if err := rc.Do(bg, rc.B().Del().Key("im:node:old-node").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Do(bg, rc.B().Srem().Key("im:nodes").Member("old-node").Build()).Error(); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, c, 3)
	msgs = msgs[:0]
	nodes := map[string]bool{}
	for _, w := range live {
		msgs = append(msgs, imhelper.Outgoing{From: "feed", To: []string{w.id}, Payload: `"again"`}, imhelper.Outgoing{From: "feed", To: []string{w.id}, Payload: `"and again"`})
		nodes[c.helper.Owner(w.id)] = true
	}
	before = publishCalls(t, c)
	if _, err := c.helper.SendMessages(bg, msgs); err != nil {
		t.Fatal(err)
	}
	if d := publishCalls(t, c) - before; d != len(nodes) {
		t.Errorf("with every node on version %d, the batch cost %d PUBLISH, want %d", wire.NodeMsgVersion, d, len(nodes))
	}
	for _, w := range live {
		if a, b := w.nextData(t), w.nextData(t); string(a.Data) != `"again"` || string(b.Data) != `"and again"` {
			t.Fatalf("%s: %s then %s", w.id, a.Data, b.Data)
		}
	}
}

// waitNodes waits until imhelper and every node see want live nodes.
func waitNodes(t *testing.T, c *cluster, want int) {
	t.Helper()
	checkFor(t, 10*time.Second, func() error {
		if err := c.helper.RefreshNodes(bg); err != nil {
			return err
		}
		if got := c.helper.Nodes(); len(got) != want {
			return fmt.Errorf("imhelper sees %v", got)
		}
		for _, n := range c.nodes {
			if got := n.Nodes(); len(got) != want {
				return fmt.Errorf("%s sees %v", n.NodeID(), got)
			}
		}
		return nil
	})
}

// With Redis at maxmemory a batch is still delivered, as SendMessage is:
// Redis refuses the appends, the nodes' shares are published without
// history, at most once, and the results carry no positions. Once Redis
// has room, messages are kept again.
func TestSendMessagesRedisFull(t *testing.T) {
	c := startCluster(t, 3, nil)
	var ws []*wsClient
	var msgs []imhelper.Outgoing
	for i := range 9 {
		w := c.connect(fmt.Sprintf("rf-%d", i), "")
		ws = append(ws, w)
		msgs = append(msgs, imhelper.Outgoing{From: "feed", To: []string{w.id}, Payload: strconv.Itoa(i)})
	}
	fill(t, c.redis)
	sent, err := c.helper.SendMessages(bg, msgs)
	if err != nil {
		t.Fatalf("SendMessages while full: %v", err)
	}
	for i, w := range ws {
		f := w.nextData(t)
		if f.ID != sent[i].ID || f.Offset != 0 || len(sent[i].Positions) != 0 {
			t.Fatalf("%s: %+v, result %+v; want the message without a position", w.id, f, sent[i])
		}
	}
	one, err := c.helper.SendMessageResult(bg, "feed", []string{ws[0].id}, `"one"`)
	if err != nil {
		t.Fatalf("SendMessage while full: %v", err)
	}
	if f := ws[0].nextData(t); f.ID != one.ID || f.Offset != 0 || len(one.Positions) != 0 {
		t.Fatalf("SendMessage while full: %+v, result %+v; want the message without a position", f, one)
	}
	unfill(t, c.redis)
	sent, err = c.helper.SendMessages(bg, msgs)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range ws {
		if f := w.nextData(t); f.ID != sent[i].ID || f.Offset == 0 || f.Offset != sent[i].Positions[w.id].Offset {
			t.Fatalf("%s after Redis made room: %+v, result %+v", w.id, f, sent[i])
		}
	}
}
