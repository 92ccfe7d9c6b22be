package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/imbroker/imbroker/imhelper"
)

func kib(b float64) string { return fmt.Sprintf("%.1f", b/1024) }

func (e *env) note(t *Table, load0 float64) {
	t.Notes = append(t.Notes, fmt.Sprintf("nodes: %d (%s); load average at start %.2f, at end %.2f; %d load processes; -history %s",
		len(e.nodes), e.nodeKind(), load0, loadavg(), len(e.workers), e.o.history))
}

func (e *env) nodeKind() string {
	if e.o.redisURL != "" {
		return "targeted"
	}
	if e.o.bin != "" {
		return "binary " + filepath.Base(e.o.bin)
	}
	return "imbench node mode"
}

func errSummary(m map[string]int) string {
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	var parts []string
	for i, x := range l {
		if i == 3 {
			break
		}
		parts = append(parts, fmt.Sprintf("%d× %s", x.v, x.k))
	}
	return strings.Join(parts, "; ")
}

// idle: RSS, goroutines and CPU of the nodes holding C idle sockets.
func (e *env) idle(ctx context.Context) (*Table, []plotRow, error) {
	load0 := loadavg()
	time.Sleep(2 * time.Second)
	base := e.sampleNodes()
	if err := e.ensureWorkers(e.o.conns); err != nil {
		return nil, nil, err
	}
	cr, err := e.connectAll(ctx, e.o.conns, e.o.dialers, true)
	if err != nil {
		return nil, nil, err
	}
	if _, _, err := e.waitOnline(ctx, int64(cr.ok), time.Minute); err != nil {
		return nil, nil, err
	}
	// Let connection set-up garbage be collected before measuring.
	time.Sleep(5 * time.Second)
	m := newCPUMeter(e.allPIDs())
	var profDone chan string
	if e.o.profile != "" && len(e.nodes) > 0 && e.nodes[0].debug != "" {
		_ = os.MkdirAll(e.o.profile, 0o755)
		profDone = make(chan string, 1)
		go func() {
			f := filepath.Join(e.o.profile, "idle-cpu.pprof")
			if e.nodes[0].cpuProfile(ctx, max(1, int(e.o.window.Seconds())-1), f) != nil {
				f = ""
			}
			profDone <- f
		}()
	}
	select {
	case <-time.After(e.o.window):
	case <-ctx.Done():
		return nil, nil, ctx.Err()
	}
	cpu := e.cpu(m)
	s := e.sampleNodes()
	st, err := e.stats()
	if err != nil {
		return nil, nil, err
	}
	conns := float64(e.nodeConns())
	t := &Table{Title: fmt.Sprintf("idle: %d connections", e.o.conns),
		Cols: []string{"conns", "alive", "failed", "node RSS MiB", "RSS/conn KiB", "ΔRSS/conn KiB", "heap/conn KiB", "stack/conn KiB", "goroutines/conn", "node CPU %", "redis CPU %", "load CPU %"}}
	gor := "-"
	if s.haveG && conns > 0 {
		gor = f2(float64(s.goroutines-base.goroutines) / conns)
	}
	heap, stack := "-", "-"
	if s.rt.HeapInuse > 0 && conns > 0 {
		heap = kib(float64(s.rt.HeapInuse-base.rt.HeapInuse) / conns)
		stack = kib(float64(s.rt.StackInuse-base.rt.StackInuse) / conns)
	}
	t.Add(f0(conns), itoa(st.alive), strconv.Itoa(cr.failed), f1(float64(s.rss)/(1<<20)), kib(float64(s.rss)/conns),
		kib(float64(s.rss-base.rss)/conns), heap, stack, gor, f2(cpu.node), f2(cpu.redis), f2(cpu.load))
	t.Notes = append(t.Notes, fmt.Sprintf("CPU over a %s window after connecting; ΔRSS is RSS minus the node's RSS before any connection (%.1f MiB); goroutines %d → %d",
		e.o.window, float64(base.rss)/(1<<20), base.goroutines, s.goroutines))
	if cr.failed > 0 {
		t.Notes = append(t.Notes, "connect errors: "+errSummary(cr.errors))
	}
	if profDone != nil {
		if f := <-profDone; f != "" {
			t.Notes = append(t.Notes, "node CPU profile of the window: "+f)
		}
	}
	if e.o.profile != "" && len(e.nodes) > 0 {
		_ = os.MkdirAll(e.o.profile, 0o755)
		f := filepath.Join(e.o.profile, "idle-heap.pprof")
		if err := e.nodes[0].fetchProfile("heap", f); err == nil {
			t.Notes = append(t.Notes, "heap profile: "+f)
		}
	}
	e.note(t, load0)
	return t, nil, nil
}

// connect and burst: how fast clients come online. connect prefetches every
// URL and then dials with -dialers; burst fetches each URL in the dialer, as
// a reconnect storm would, with (by default) one dialer per client.
func (e *env) connect(ctx context.Context, burst bool) (*Table, []plotRow, error) {
	load0 := loadavg()
	dialers := e.o.dialers
	if burst && dialers <= 0 {
		dialers = min(e.o.conns, 4000)
	}
	if err := e.ensureWorkers(e.o.conns); err != nil {
		return nil, nil, err
	}
	time.Sleep(500 * time.Millisecond)
	tot0, _ := e.commandStats(ctx)
	fb0 := e.connectFallbacks()
	spread0 := e.masterStats(ctx)
	m := newCPUMeter(e.allPIDs())
	start := time.Now()
	cr, err := e.connectAll(ctx, e.o.conns, dialers, !burst)
	if err != nil {
		return nil, nil, err
	}
	online, n, werr := e.waitOnline(ctx, int64(cr.ok), time.Minute)
	cpu := e.cpu(m)
	tot1, _ := e.commandStats(ctx)
	spread := e.spread(ctx, spread0, m, int64(cr.ok), "conn")
	fallbacks := "-"
	if fb1 := e.connectFallbacks(); fb0 >= 0 && fb1 >= 0 {
		fallbacks = strconv.FormatInt(fb1-fb0, 10)
	}
	name := "connect"
	if burst {
		name = "burst"
	}
	t := &Table{Title: fmt.Sprintf("%s: %d connections, %d dialers", name, e.o.conns, dialers),
		Cols: []string{"conns", "ok", "failed", "tokens/s", "handshakes/s", "online/s", "time to all online s", "connect p50 ms", "p99 ms", "max ms", "node CPU %", "redis CPU %", "load CPU %", "redis cmds/conn", "2nd trips"}}
	tokens := "-"
	if cr.fetchEnd > cr.fetchStart && cr.fetchStart > 0 {
		tokens = f0(float64(e.o.conns) / (float64(cr.fetchEnd-cr.fetchStart) / 1e9))
	}
	dialDur := float64(cr.dialEnd-cr.dialStart) / 1e9
	onlineDur := online.Sub(time.Unix(0, cr.dialStart)).Seconds()
	if burst {
		onlineDur = online.Sub(start).Seconds()
	}
	t.Add(strconv.Itoa(e.o.conns), strconv.Itoa(cr.ok), strconv.Itoa(cr.failed), tokens, f0(float64(cr.ok)/dialDur),
		f0(float64(n)/onlineDur), f2(onlineDur), ms(cr.hist.Quantile(0.5)), ms(cr.hist.Quantile(0.99)), ms(cr.hist.Max()),
		f1(cpu.node), f1(cpu.redis), f1(cpu.load), f2(float64(tot1-tot0)/float64(max(1, cr.ok))), fallbacks)
	t.Notes = append(t.Notes, "online/s counts from the first dial until Redis lists every client online (token consumed, presence and online event written)")
	if burst {
		t.Notes = append(t.Notes, "burst: each dialer calls PrevConnectServer then dials, so connect times and online/s include token issue")
	} else {
		t.Notes = append(t.Notes, "connect: URLs were fetched (PrevConnectServer, 64 at a time per load process) before dialling: tokens/s")
	}
	t.Notes = append(t.Notes, "redis cmds/conn: INFO commandstats delta (commands run inside Lua scripts count too) per connection, token SET included")
	if spread != "" {
		t.Notes = append(t.Notes, spread)
	}
	t.Notes = append(t.Notes, "2nd trips: first sockets whose presence took a second Redis round trip after the token (im_connect_fallbacks_total delta, all nodes; - without node metrics)")
	if cr.failed > 0 {
		t.Notes = append(t.Notes, "connect errors: "+errSummary(cr.errors))
	}
	e.note(t, load0)
	return t, nil, werr
}

// stepResult is the outcome of one rate step.
type stepResult struct {
	target, achieved float64
	sent, sendErrs   int64
	expected         int64
	st               stepStats
	hist             Counts
	start            time.Time
	window           time.Duration // how long sending took
	cpu              cpuSummary
	cmds, pubs       int64
}

// finishStep closes rate step k once sending ended: it waits for the
// deliveries (perMsg per message sent), reads CPU and Redis counters,
// adds the row to t and rows and notes the profile.
func (e *env) finishStep(ctx context.Context, t *Table, rows *[]plotRow, scenario string, k int, r *stepResult,
	perMsg int64, m *cpuMeter, cmd0, pub0 int64, prof func() string) (recvStats, error) {
	r.window = max(e.o.step, time.Since(r.start))
	r.achieved = float64(r.sent) / r.window.Seconds()
	r.expected = r.sent * perMsg
	s, err := e.drainStep(ctx, k, r.expected)
	if err != nil {
		return s, err
	}
	drops := e.nodeDrops()
	if n := dropsNote(k, e.drops, drops); n != "" {
		t.Notes = append(t.Notes, n)
	}
	e.drops = drops
	r.cpu = e.cpu(m)
	cmd1, pub1 := e.commandStats(ctx)
	r.cmds, r.pubs = cmd1-cmd0, pub1-pub0
	r.st, r.hist = s.step(k)
	pr := r.row(t)
	pr.Scenario = scenario
	*rows = append(*rows, pr)
	if f := prof(); f != "" {
		t.Notes = append(t.Notes, fmt.Sprintf("node CPU profile of step %d: %s", k, f))
	}
	return s, nil
}

// drainStep waits until step k has every expected delivery or drain passed.
func (e *env) drainStep(ctx context.Context, k int, expected int64) (recvStats, error) {
	deadline := time.Now().Add(e.o.drain)
	for {
		s, err := e.stats()
		if err != nil {
			return s, err
		}
		st, _ := s.step(k)
		if st.Uniq >= expected || time.Now().After(deadline) || ctx.Err() != nil {
			return s, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func rateTable(title string, unit string) *Table {
	return &Table{Title: title, Cols: []string{"target " + unit, "sent " + unit, "deliveries/s", "p50 ms", "p99 ms", "p999 ms", "max ms",
		"sent", "delivered", "lost", "dup", "node CPU %", "redis CPU %", "load CPU %", "redis cmds/msg", "PUBLISH/msg"}}
}

func (r stepResult) row(t *Table) plotRow {
	// Deliveries per second over the step: the send window, or until the
	// last delivery if that came later.
	deliv := 0.0
	if r.st.Last > 0 {
		deliv = float64(r.st.Uniq) / max(r.window.Seconds(), float64(r.st.Last-r.start.UnixNano())/1e9)
	}
	lost := r.expected - r.st.Uniq
	t.Add(rate(r.target), rate(r.achieved), f0(deliv), ms(r.hist.Quantile(0.5)), ms(r.hist.Quantile(0.99)), ms(r.hist.Quantile(0.999)), ms(r.hist.Max()),
		itoa(r.sent), itoa(r.st.Uniq), itoa(lost), itoa(r.st.Dups), f1(r.cpu.node), f1(r.cpu.redis), f1(r.cpu.load),
		f2(float64(r.cmds)/float64(max(1, r.sent))), f2(float64(r.pubs)/float64(max(1, r.sent))))
	return plotRow{Rate: r.achieved, Deliv: deliv, P50: r.hist.Quantile(0.5), P99: r.hist.Quantile(0.99), P999: r.hist.Quantile(0.999)}
}

func (e *env) profileStep(ctx context.Context, name string, k int) func() string {
	if e.o.profile == "" || len(e.nodes) == 0 || e.nodes[0].debug == "" {
		return func() string { return "" }
	}
	_ = os.MkdirAll(e.o.profile, 0o755)
	f := filepath.Join(e.o.profile, fmt.Sprintf("%s-step%d-cpu.pprof", name, k))
	secs := max(1, int(e.o.step.Seconds())-1)
	done := make(chan error, 1)
	go func() { done <- e.nodes[0].cpuProfile(ctx, secs, f) }()
	return func() string {
		if err := <-done; err != nil {
			return ""
		}
		return f
	}
}

// fanout: one channel with M members, rising message rates.
func (e *env) fanout(ctx context.Context) (*Table, []plotRow, error) {
	load0 := loadavg()
	rates, err := parseRates(e.o.rates, "1,10,20,30,40")
	if err != nil {
		return nil, nil, err
	}
	const ch = benchChan
	M := e.o.members
	// Join before connecting: the node loads the membership with presence.
	var wg sync.WaitGroup
	var next atomic.Int64
	var joinErr atomic.Value
	for g := 0; g < 64; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= M || ctx.Err() != nil {
					return
				}
				if err := e.helper.JoinChan(ctx, "c"+strconv.Itoa(i), ch); err != nil {
					joinErr.Store(err)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := joinErr.Load().(error); err != nil {
		return nil, nil, fmt.Errorf("join: %w", err)
	}
	if err := e.connectOnline(ctx, M, "members"); err != nil {
		return nil, nil, err
	}
	// Wait until every owning node subscribed to the channel's topic.
	owners := len(e.ownersOf(M))
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if n, err := e.diag.ChannelSubscribers(ctx, ch); err == nil && n >= int64(owners) {
			break
		}
		if time.Now().After(deadline) {
			return nil, nil, fmt.Errorf("channel %s not subscribed by %d nodes", ch, owners)
		}
	}
	maxSeq := 16
	for _, r := range rates {
		maxSeq += int(r*e.o.step.Seconds()) + 1
	}
	if err := e.arm("fanout", maxSeq); err != nil {
		return nil, nil, err
	}
	seq := 0
	send := func(k int) error {
		p := appendPayload(make([]byte, 0, e.o.payload+8), k, seq, time.Now().UnixNano(), -1, e.o.payload)
		seq++
		_, err := e.helper.SendChanMessage(ctx, "bench-pub", ch, p)
		return err
	}
	// JoinChan returns once Redis has the membership; each node applies it
	// from its own channel a moment later (docs/protocol.md, delivery).
	// Give the nodes that moment before the warm-up counts deliveries.
	time.Sleep(time.Second)
	// Step 0 is a warm-up: every member must get its messages.
	for i := 0; i < 5; i++ {
		if err := send(0); err != nil {
			return nil, nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	s, err := e.drainStep(ctx, 0, int64(5*M))
	if err != nil {
		return nil, nil, err
	}
	if st, _ := s.step(0); st.Uniq != int64(5*M) {
		return nil, nil, fmt.Errorf("warm-up: %d of %d deliveries (%d sockets alive, %d malformed, %d other frames)", st.Uniq, 5*M, s.alive, s.bad, s.other)
	}

	t := rateTable(fmt.Sprintf("fanout: one channel, %d members, %d-byte payload, %s steps", M, e.o.payload, e.o.step), "msg/s")
	var rows []plotRow
	spread0, spreadCPU, sentAll := e.masterStats(ctx), newCPUMeter(e.allPIDs()), int64(0)
	for i, rate := range rates {
		k := i + 1
		count := int(rate * e.o.step.Seconds())
		r := stepResult{target: rate, expected: 0}
		cmd0, pub0 := e.commandStats(ctx)
		m := newCPUMeter(e.allPIDs())
		prof := e.profileStep(ctx, "fanout", k)
		r.start = time.Now()
		for j := 0; j < count && ctx.Err() == nil; j++ {
			if d := time.Until(r.start.Add(time.Duration(float64(j) / rate * float64(time.Second)))); d > 0 {
				time.Sleep(d)
			}
			if err := send(k); err != nil {
				r.sendErrs++
				continue
			}
			r.sent++
		}
		s, err := e.finishStep(ctx, t, &rows, "fanout", k, &r, int64(M), m, cmd0, pub0, prof)
		if err != nil {
			return t, rows, err
		}
		sentAll += r.sent
		if s.alive != int64(M) {
			t.Notes = append(t.Notes, fmt.Sprintf("after step %d only %d of %d sockets alive", k, s.alive, M))
			break
		}
		if r.hist.Quantile(0.99) > float64(e.o.maxP99.Milliseconds()) || r.st.Uniq < r.expected || ctx.Err() != nil {
			t.Notes = append(t.Notes, fmt.Sprintf("stopped after step %d: p99 above %s, lost messages or deadline", k, e.o.maxP99))
			break
		}
	}
	if s, err := e.stats(); err == nil && (s.bad > 0 || s.other > 0) {
		t.Notes = append(t.Notes, fmt.Sprintf("unexpected frames: %d malformed, %d not from the benchmark", s.bad, s.other))
	}
	if sp := e.spread(ctx, spread0, spreadCPU, sentAll, "msg"); sp != "" {
		t.Notes = append(t.Notes, sp+" (over all steps and drains)")
	}
	t.Notes = append(t.Notes, "latency: from the send time in the payload (ns, taken just before SendChanMessage) to the receiving load process reading the frame; lost = sent × members − delivered after a drain of up to "+e.o.drain.String())
	e.note(t, load0)
	return t, rows, nil
}

// p2p: SendMessage to random online clients from several publishers; with
// -batch N, SendMessages of N such messages at a time.
func (e *env) p2p(ctx context.Context) (*Table, []plotRow, error) {
	load0 := loadavg()
	rates, err := parseRates(e.o.rates, "5000,10000,20000,40000,60000,80000,100000")
	if err != nil {
		return nil, nil, err
	}
	C := e.o.conns
	if err := e.connectOnline(ctx, C, "clients"); err != nil {
		return nil, nil, err
	}
	maxSeq := 16
	for _, r := range rates {
		maxSeq += int(r*e.o.step.Seconds()) + e.o.publishers
	}
	if err := e.arm("p2p", maxSeq); err != nil {
		return nil, nil, err
	}
	var seq atomic.Int64
	B := max(e.o.batch, 1)
	title := fmt.Sprintf("p2p: %d clients, %d publishers, %d-byte payload, %s steps", C, e.o.publishers, e.o.payload, e.o.step)
	if B > 1 {
		title += fmt.Sprintf(", SendMessages of %d", B)
	}
	t := rateTable(title, "msg/s")
	var rows []plotRow
	P := e.o.publishers
	spread0, spreadCPU, sentAll := e.masterStats(ctx), newCPUMeter(e.allPIDs()), int64(0)
	for i, rate := range rates {
		k := i + 1
		count := int(rate * e.o.step.Seconds())
		r := stepResult{target: rate}
		cmd0, pub0 := e.commandStats(ctx)
		m := newCPUMeter(e.allPIDs())
		prof := e.profileStep(ctx, "p2p", k)
		r.start = time.Now()
		var sent, errs atomic.Int64
		var wg sync.WaitGroup
		for p := 0; p < P; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				from := "pub" + strconv.Itoa(p)
				rng := rand.New(rand.NewPCG(uint64(p), uint64(k)))
				buf := make([]byte, 0, e.o.payload+8)
				mine := count / P
				if p < count%P {
					mine++
				}
				perPub := rate / float64(P)
				if B > 1 {
					e.p2pBatches(ctx, B, mine, from, rng, C, k, p, P, perPub, r.start, &seq, &sent, &errs)
					return
				}
				for j := 0; j < mine && ctx.Err() == nil; j++ {
					due := r.start.Add(time.Duration((float64(j) + float64(p)/float64(P)) / perPub * float64(time.Second)))
					if d := time.Until(due); d > 0 {
						time.Sleep(d)
					}
					to := rng.IntN(C)
					sq := int(seq.Add(1) - 1)
					buf = appendPayload(buf[:0], k, sq, time.Now().UnixNano(), to, e.o.payload)
					if _, err := e.helper.SendMessage(ctx, from, []string{"c" + strconv.Itoa(to)}, buf); err != nil {
						errs.Add(1)
						continue
					}
					sent.Add(1)
				}
			}()
		}
		wg.Wait()
		r.sent, r.sendErrs = sent.Load(), errs.Load()
		s, err := e.finishStep(ctx, t, &rows, "p2p", k, &r, 1, m, cmd0, pub0, prof)
		if err != nil {
			return t, rows, err
		}
		sentAll += r.sent
		if r.sendErrs > 0 {
			t.Notes = append(t.Notes, fmt.Sprintf("step %d: %d SendMessage errors", k, r.sendErrs))
		}
		if s.misrouted > 0 {
			t.Notes = append(t.Notes, fmt.Sprintf("after step %d: %d messages reached the wrong client", k, s.misrouted))
		}
		if s.alive != int64(C) {
			t.Notes = append(t.Notes, fmt.Sprintf("after step %d only %d of %d sockets alive", k, s.alive, C))
			break
		}
		if r.hist.Quantile(0.99) > float64(e.o.maxP99.Milliseconds()) || r.st.Uniq < r.expected || ctx.Err() != nil {
			t.Notes = append(t.Notes, fmt.Sprintf("stopped after step %d: p99 above %s, lost messages or deadline", k, e.o.maxP99))
			break
		}
	}
	if sp := e.spread(ctx, spread0, spreadCPU, sentAll, "msg"); sp != "" {
		t.Notes = append(t.Notes, sp+" (over all steps and drains)")
	}
	t.Notes = append(t.Notes, "latency: from the send time in the payload (ns, taken just before SendMessage) to the receiving load process reading the frame; receivers are uniform random; \"sent msg/s\" is what the publishers achieved")
	if B > 1 {
		t.Notes = append(t.Notes, fmt.Sprintf("-batch %d: each publisher sends its messages %d per SendMessages call, the publishers' calls spread evenly over the interval between two, all stamped with that call's send time; sent, lost and dup count messages (a failed call counts all of its messages as errors, although part of it may have been delivered)", B, B))
	}
	e.note(t, load0)
	return t, rows, nil
}

// p2pBatches is one p2p publisher's step with -batch B: its mine messages,
// B per SendMessages call, each to a random client and numbered from seq
// like SendMessage's, so that the receivers' loss and duplicate accounting
// is the same. A publisher's calls are B message intervals apart, and the
// publishers' phases are spread evenly over that interval, so that the
// node sees the step's rate and not every publisher's batch at once
// (phases one message interval apart made bursts of P×B messages, whose
// queueing, not the broker's, was the latency).
func (e *env) p2pBatches(ctx context.Context, B, mine int, from string, rng *rand.Rand, C, step, p, P int, perPub float64,
	start time.Time, seq, sent, errs *atomic.Int64) {
	bufs := make([][]byte, B)
	msgs := make([]imhelper.Outgoing, B)
	for j := 0; j < mine && ctx.Err() == nil; {
		n := min(B, mine-j)
		due := start.Add(time.Duration(batchDue(j, n, B, p, P) / perPub * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		now := time.Now().UnixNano()
		for x := range n {
			to := rng.IntN(C)
			sq := int(seq.Add(1) - 1)
			// Each message its own buffer: SendMessages reads every
			// payload before it returns, so they are reused next call.
			bufs[x] = appendPayload(bufs[x][:0], step, sq, now, to, e.o.payload)
			msgs[x] = imhelper.Outgoing{From: from, To: []string{"c" + strconv.Itoa(to)}, Payload: bufs[x]}
		}
		if _, err := e.helper.SendMessages(ctx, msgs[:n]); err != nil {
			errs.Add(int64(n))
		} else {
			sent.Add(int64(n))
		}
		j += n
	}
}

// batchDue is when publisher p of P sends the call holding its messages
// j..j+n-1 (n ≤ B), in message intervals from the step's start: the
// publishers' calls are spread evenly over the B intervals between two of
// one publisher's calls, and a call is never later than its last
// message's own due time (a short last call), so the step ends on time.
func batchDue(j, n, B, p, P int) float64 {
	return min(float64(j)+float64(B)*float64(p)/float64(P), float64(j+n-1)+float64(p)/float64(P))
}

// storm: C clients connect, their sockets drop, each is sent -missed
// messages while away, then all reconnect at once presenting their last
// positions. It reports the time until every client has been replayed
// what it missed and told it is live, and the CPU of Redis and the nodes
// over the reconnect.
func (e *env) storm(ctx context.Context) (*Table, []plotRow, error) {
	load0 := loadavg()
	C, missed := e.o.conns, e.o.missed
	if err := e.connectOnline(ctx, C, "clients"); err != nil {
		return nil, nil, err
	}
	for _, w := range e.workers {
		if _, err := w.call(workerReq{Op: "drop"}); err != nil {
			return nil, nil, err
		}
	}
	if err := e.waitStats(ctx, func(s recvStats) bool { return s.alive == 0 }); err != nil {
		return nil, nil, fmt.Errorf("drop: %w", err)
	}
	if err := e.arm("fanout", missed+16); err != nil { // per-socket duplicate check
		return nil, nil, err
	}
	// While they are away: message j has sequence j; each send goes to a
	// batch of clients (one append each).
	const batch = 500
	sendStart := time.Now()
	var buf []byte
	for j := 0; j < missed; j++ {
		for first := 0; first < C; first += batch {
			var to []string
			for i := first; i < min(C, first+batch); i++ {
				to = append(to, "c"+strconv.Itoa(i))
			}
			buf = appendPayload(buf[:0], 1, j, time.Now().UnixNano(), -1, e.o.payload)
			if _, err := e.helper.SendMessage(ctx, "storm", to, buf); err != nil {
				return nil, nil, fmt.Errorf("send while away: %w", err)
			}
		}
	}
	sendTook := time.Since(sendStart)
	tot0, _ := e.commandStats(ctx)
	m := newCPUMeter(e.allPIDs())
	start := time.Now()
	rc, err := e.connectClients(ctx, C, e.o.dialers, false, true)
	if err != nil {
		return nil, nil, err
	}
	var s recvStats
	werr := e.waitStats(ctx, func(st recvStats) bool { s = st; return st.recovered >= int64(rc.ok) })
	all := time.Since(start)
	cpu := e.cpu(m)
	tot1, _ := e.commandStats(ctx)
	t := &Table{Title: fmt.Sprintf("storm: %d clients reconnect at once, each missed %d messages", C, missed),
		Cols: []string{"clients", "reconnected", "replayed", "recovered:false", "dups", "time to all recovered s", "connect p50 ms", "p99 ms", "node CPU %", "redis CPU %", "redis CPU s", "redis cmds/client"}}
	st, _ := s.step(1)
	redisSec := cpu.redis / 100 * all.Seconds()
	t.Add(strconv.Itoa(C), strconv.Itoa(rc.ok), itoa(s.replayed), itoa(s.unrecov), itoa(st.Dups), f2(all.Seconds()),
		ms(rc.hist.Quantile(0.5)), ms(rc.hist.Quantile(0.99)), f1(cpu.node), f1(cpu.redis), f2(redisSec), f2(float64(tot1-tot0)/float64(max(1, rc.ok))))
	t.Notes = append(t.Notes,
		fmt.Sprintf("the %d×%d messages were sent while every socket was closed (%s, batches of %d receivers per SendMessage)", C, missed, sendTook.Round(time.Millisecond), batch),
		"time to all recovered: from the first reconnect (PrevConnectServer, then dial with pos=) until every socket got its first frame, which follows its replay; CPU over that time",
		fmt.Sprintf("want replayed = %d and recovered:false = 0", C*missed))
	if rc.failed > 0 {
		t.Notes = append(t.Notes, "connect errors: "+errSummary(rc.errors))
	}
	e.note(t, load0)
	return t, nil, werr
}

// waitStats polls the workers' statistics until done accepts them.
func (e *env) waitStats(ctx context.Context, done func(recvStats) bool) error {
	for {
		s, err := e.stats()
		if err != nil {
			return err
		}
		if done(s) {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// connectOnline connects clients c0 … c<n-1> (URLs fetched first) and
// waits until Redis lists all of them online and each socket got its first
// frame (it is attached and caught up: with history, the node has read
// what its token recorded; a step started before that measured the tail
// of the connect); what names them in errors.
func (e *env) connectOnline(ctx context.Context, n int, what string) error {
	cr, err := e.connectAll(ctx, n, e.o.dialers, true)
	if err != nil {
		return err
	}
	if cr.ok != n {
		return fmt.Errorf("only %d of %d %s connected: %s", cr.ok, n, what, errSummary(cr.errors))
	}
	if _, _, err = e.waitOnline(ctx, int64(n), time.Minute); err != nil {
		return err
	}
	return e.waitStats(ctx, func(s recvStats) bool { return s.recovered >= int64(n) })
}

// nodekill: C clients connect over the nodes, then the first node is
// killed (SIGKILL); its clients (about C/N) reconnect to the survivors at
// once, presenting their positions, as browsers do. It reports how soon
// their sockets ended and imhelper routed around the dead node, how long
// until every one of them was live on a survivor (its first frame, after
// its replay), the reconnect rate, and what the nodes and Redis spent.
func (e *env) nodekill(ctx context.Context) (*Table, []plotRow, error) {
	load0 := loadavg()
	C := e.o.conns
	if len(e.nodes) < 2 || e.nodes[0].proc == nil || e.nodes[0].proc.cmd.Process == nil {
		return nil, nil, errors.New("nodekill needs at least 2 nodes that imbench started")
	}
	if err := e.connectOnline(ctx, C, "clients"); err != nil {
		return nil, nil, err
	}
	victim := e.nodes[0]
	victims := e.ownersOf(C)[victim.id]
	before, err := e.stats()
	if err != nil {
		return nil, nil, err
	}
	killAt := time.Now()
	if err := victim.proc.cmd.Process.Kill(); err != nil {
		return nil, nil, err
	}
	if err := e.waitStats(ctx, func(s recvStats) bool { return s.alive <= int64(C-victims) }); err != nil {
		return nil, nil, err
	}
	dropped := time.Since(killAt)
	for {
		_ = e.helper.RefreshNodes(ctx)
		if !slices.Contains(e.helper.Nodes(), victim.id) {
			break
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		time.Sleep(20 * time.Millisecond)
	}
	routed := time.Since(killAt)
	m := newCPUMeter(e.allPIDs())
	start := time.Now()
	rc, err := e.redial(ctx, e.o.dialers)
	if err != nil {
		return nil, nil, err
	}
	var s recvStats
	werr := e.waitStats(ctx, func(st recvStats) bool { s = st; return st.recovered >= before.recovered+int64(rc.ok) })
	all := time.Since(start)
	cpu := e.cpu(m)
	t := &Table{Title: fmt.Sprintf("nodekill: %d clients on %d nodes, one node killed, its clients reconnect to the %d survivors", C, len(e.nodes), len(e.nodes)-1),
		Cols: []string{"clients", "on the killed node", "reconnected", "of them retried", "failed", "sockets ended s", "routed around s", "all live again s", "reconnects/s", "connect p50 ms", "p99 ms", "recovered:false", "node CPU %", "redis CPU %"}}
	t.Add(strconv.Itoa(C), strconv.Itoa(victims), strconv.Itoa(rc.ok), strconv.Itoa(rc.retried), strconv.Itoa(rc.failed), f2(dropped.Seconds()), f2(routed.Seconds()),
		f2(all.Seconds()), f1(float64(rc.ok)/all.Seconds()), ms(rc.hist.Quantile(0.5)), ms(rc.hist.Quantile(0.99)),
		itoa(s.unrecov-before.unrecov), f1(cpu.node), f1(cpu.redis))
	t.Notes = append(t.Notes,
		"sockets ended / routed around: from the kill until every socket of the killed node had closed / until imhelper stopped handing out its URLs (it has no listener)",
		"retried: a dial that failed (a load process's imhelper still handed out the dead node's URL: each refreshes its view on its own) got a fresh URL and dialled again, as a browser does",
		"all live again: from the first reconnect (PrevConnectServer, then dial with pos=) until every reconnected socket got its first frame, which follows its replay; CPU over that time")
	if rc.failed > 0 {
		t.Notes = append(t.Notes, "connect errors: "+errSummary(rc.errors))
	}
	e.note(t, load0)
	return t, nil, werr
}
