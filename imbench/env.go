package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/store"
	"github.com/imbroker/imbroker/internal/wire"
)

// env is everything one run uses: Redis, nodes, the coordinator's imhelper
// client and the load processes.
type env struct {
	o        options
	dir      string
	redis    []*proc // the redis-server processes imbench started (2×-masters for -cluster)
	redisURL string
	nodes    []*node
	helper   *imhelper.Client
	diag     *store.Redis // read-only looks at Redis (commandstats, subscribers)
	workers  []*workerProc
	closed   sync.Once
	// drops holds nodeDrops at the end of the last step (nil before the
	// first: step 1 counts from the node's start).
	drops map[string]float64
}

func newEnv(ctx context.Context, o options) (*env, error) {
	dir, err := os.MkdirTemp("", "imbench-")
	if err != nil {
		return nil, err
	}
	e := &env{o: o, dir: dir}
	fmt.Fprintf(os.Stderr, "imbench: logs in %s; load average %.2f\n", dir, loadavg())
	if o.redisURL != "" {
		e.redisURL = o.redisURL
		pids := strings.Split(o.nodePIDs, ",")
		for i, a := range strings.Split(o.admins, ",") {
			if a == "" {
				continue
			}
			n := &node{id: "target" + strconv.Itoa(i), admin: a}
			if i < len(pids) {
				if pid, err := strconv.Atoi(pids[i]); err == nil {
					n.proc = &proc{name: n.id, done: make(chan struct{})}
					n.proc.cmd = fakeCmd(pid)
				}
			}
			e.nodes = append(e.nodes, n)
		}
	} else {
		if o.cluster {
			e.redis, e.redisURL, err = startRedisCluster(dir, o.masters)
		} else {
			var p *proc
			if p, e.redisURL, err = startRedis(dir); p != nil {
				e.redis = []*proc{p}
			}
		}
		if err != nil {
			return e, err
		}
		var extra []string
		if o.nodeArgs != "" {
			extra = strings.Fields(o.nodeArgs)
		}
		for i := 0; i < o.nodes; i++ {
			n, err := startNode(dir, o.bin, "n"+strconv.Itoa(i+1), e.redisURL, extra)
			if err != nil {
				return e, err
			}
			e.nodes = append(e.nodes, n)
		}
	}
	hist, err := historyOptions(o.history)
	if err != nil {
		return e, err
	}
	e.helper, err = imhelper.New(ctx, imhelper.Options{RedisURL: e.redisURL, TokenTTL: 10 * time.Minute, History: hist})
	if err != nil {
		return e, err
	}
	e.diag = store.NewRedis(e.helper.Redis(), store.Options{})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		_ = e.helper.RefreshNodes(ctx)
		if n := len(e.helper.Nodes()); n > 0 && (o.redisURL != "" || n >= o.nodes) {
			break
		}
		if time.Now().After(deadline) {
			return e, errors.New("nodes did not register in Redis")
		}
	}
	return e, nil
}

func (e *env) close() {
	e.closed.Do(func() {
		var wg sync.WaitGroup
		for _, w := range e.workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				done := make(chan struct{})
				go func() { _, _ = w.call(workerReq{Op: "close"}); close(done) }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
				}
				w.stop(2 * time.Second)
			}()
		}
		wg.Wait()
		if e.helper != nil {
			e.helper.Close()
		}
		for _, n := range e.nodes {
			if n.proc != nil && n.proc.cmd.Path != "" {
				wg.Add(1)
				go func() { defer wg.Done(); n.stop(10 * time.Second) }()
			}
		}
		wg.Wait()
		for _, r := range e.redis {
			r.stop(5 * time.Second)
		}
	})
}

// pids lists the processes whose CPU is reported.
func (e *env) nodePIDs() []int {
	var out []int
	for _, n := range e.nodes {
		if n.proc != nil {
			out = append(out, n.pid())
		}
	}
	return out
}

func (e *env) loadPIDs() []int {
	out := []int{os.Getpid()}
	for _, w := range e.workers {
		out = append(out, w.pid())
	}
	return out
}

func (e *env) allPIDs() []int {
	out := append(e.nodePIDs(), e.loadPIDs()...)
	for _, r := range e.redis {
		out = append(out, r.pid())
	}
	return out
}

// cpuSummary formats a meter's result as node, redis and load CPU in % of
// one core.
type cpuSummary struct{ node, redis, load float64 }

func (e *env) cpu(m *cpuMeter) cpuSummary {
	p := m.pct()
	var s cpuSummary
	for _, pid := range e.nodePIDs() {
		s.node += p[pid]
	}
	for _, pid := range e.loadPIDs() {
		s.load += p[pid]
	}
	for _, r := range e.redis { // summed over a Cluster's processes
		s.redis += p[r.pid()]
	}
	return s
}

// ensureWorkers starts enough load processes for total sockets.
func (e *env) ensureWorkers(total int) error {
	need := (total + e.o.perProc - 1) / e.o.perProc
	for len(e.workers) < need {
		w, err := startWorker(e.dir, len(e.workers))
		if err != nil {
			return err
		}
		e.workers = append(e.workers, w)
	}
	return nil
}

// connResult merges the workers' connect replies.
type connResult struct {
	ok, failed           int
	errors               map[string]int
	retried              int // connected after a retry
	fetchStart, fetchEnd int64
	dialStart, dialEnd   int64
	hist                 Counts
}

// connectAll opens count sockets for clients c0 … c<count-1>, split in
// contiguous ranges over the load processes, each with its own source
// addresses.
func (e *env) connectAll(ctx context.Context, count, dialers int, prefetch bool) (connResult, error) {
	return e.connectClients(ctx, count, dialers, prefetch, false)
}

// connectClients is connectAll; with resume each client presents the
// position it had when its socket was dropped.
func (e *env) connectClients(ctx context.Context, count, dialers int, prefetch, resume bool) (connResult, error) {
	return e.connectOp(ctx, "connect", count, dialers, prefetch, resume)
}

// redial has every load process connect again, presenting their
// positions, the clients whose sockets ended (their node died); a client
// whose dial fails asks for a fresh URL and tries again, up to 20 times.
func (e *env) redial(ctx context.Context, dialers int) (connResult, error) {
	return e.connectOp(ctx, "redial", 0, dialers, false, true)
}

func (e *env) connectOp(ctx context.Context, op string, count, dialers int, prefetch, resume bool) (connResult, error) {
	retries := 0
	if op == "redial" {
		retries = 20
	}
	r := connResult{errors: map[string]int{}, hist: Counts{}}
	if err := e.ensureWorkers(count); err != nil {
		return r, err
	}
	nw := len(e.workers)
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Minute)
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	var firstErr error
	first := 0
	for i, w := range e.workers {
		n := count / nw
		if i < count%nw {
			n++
		}
		var locals []string
		for j := 0; j < e.o.locals; j++ {
			locals = append(locals, fmt.Sprintf("127.0.%d.%d", 1+(i*e.o.locals+j)/250, 2+(i*e.o.locals+j)%250))
		}
		req := workerReq{Op: op, RedisURL: e.redisURL, First: first, Count: n,
			Dialers: max(1, dialers/nw), Local: locals, Prefetch: prefetch, Deadline: dl.UnixNano(), History: e.o.history, Resume: resume, Retries: retries}
		first += n
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := w.call(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			r.ok += resp.OK
			r.failed += resp.Failed
			r.retried += resp.Retried
			for k, v := range resp.Errors {
				r.errors[k] += v
			}
			r.hist.Add(resp.ConnectHist)
			minSet := func(p *int64, v int64) {
				if v != 0 && (*p == 0 || v < *p) {
					*p = v
				}
			}
			minSet(&r.fetchStart, resp.FetchStart)
			minSet(&r.dialStart, resp.DialStart)
			r.fetchEnd = max(r.fetchEnd, resp.FetchEnd)
			r.dialEnd = max(r.dialEnd, resp.DialEnd)
		}()
	}
	wg.Wait()
	return r, firstErr
}

// waitOnline waits until Redis shows n online clients and returns when
// that happened.
func (e *env) waitOnline(ctx context.Context, n int64, limit time.Duration) (time.Time, int64, error) {
	deadline := time.Now().Add(limit)
	for {
		c, err := e.helper.OnlineCount(ctx)
		if err == nil && c >= n {
			return time.Now(), c, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return time.Now(), c, fmt.Errorf("only %d of %d clients online after %s", c, n, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stats merges the workers' receive statistics.
type recvStats struct {
	alive     int64
	steps     []stepStats
	hists     []Counts
	bad       int64
	misrouted int64
	other     int64
	recovered int64
	unrecov   int64
	replayed  int64
}

func (e *env) stats() (recvStats, error) {
	var s recvStats
	for _, w := range e.workers {
		r, err := w.call(workerReq{Op: "stats"})
		if err != nil {
			return s, err
		}
		s.alive += r.Alive
		s.bad += r.Bad
		s.misrouted += r.Misrouted
		s.other += r.Other
		s.recovered += r.Recovered
		s.unrecov += r.Unrecov
		s.replayed += r.Replayed
		for i, st := range r.Steps {
			for len(s.steps) <= i {
				s.steps = append(s.steps, stepStats{})
				s.hists = append(s.hists, Counts{})
			}
			s.steps[i].Uniq += st.Uniq
			s.steps[i].Dups += st.Dups
			s.steps[i].Last = max(s.steps[i].Last, st.Last)
			s.hists[i].Add(r.Hists[i])
		}
	}
	return s, nil
}

func (s recvStats) step(k int) (stepStats, Counts) {
	if k < len(s.steps) {
		return s.steps[k], s.hists[k]
	}
	return stepStats{}, Counts{}
}

func (e *env) arm(mode string, maxSeq int) error {
	for _, w := range e.workers {
		if _, err := w.call(workerReq{Op: "arm", Mode: mode, MaxSeq: maxSeq}); err != nil {
			return err
		}
	}
	return nil
}

// commandStats returns Redis' total command calls (INFO itself excluded)
// and PUBLISH calls.
func (e *env) commandStats(ctx context.Context) (total, publish int64) {
	calls, err := e.diag.CommandCalls(ctx)
	if err != nil {
		return -1, -1
	}
	for name, n := range calls {
		if name != "info" {
			total += n
		}
	}
	return total, calls["publish"] + calls["spublish"] // SPUBLISH on a Cluster
}

// nodeSample is RSS and goroutines of every node.
type nodeSample struct {
	rss        int64
	goroutines int
	haveG      bool
	rt         runtimeStats
}

func (e *env) sampleNodes() nodeSample {
	var s nodeSample
	s.haveG = true
	for _, n := range e.nodes {
		if n.proc != nil {
			_, rss, _ := procStat(n.pid())
			s.rss += rss
		}
		rt, ok := n.runtime()
		if !ok {
			s.haveG = false
		}
		s.goroutines += rt.Goroutines
		s.rt.HeapInuse += rt.HeapInuse
		s.rt.StackInuse += rt.StackInuse
		s.rt.Sys += rt.Sys
	}
	return s
}

func (e *env) nodeConns() int64 {
	var total int64
	for _, n := range e.nodes {
		m, err := n.metrics()
		if err == nil {
			total += int64(m["im_connections"])
		}
	}
	return total
}

// connectFallbacks sums im_connect_fallbacks_total over every node and
// reason: first sockets that took a second Redis round trip (-1 if no node
// answered).
func (e *env) connectFallbacks() int64 {
	total, ok := int64(0), false
	for _, n := range e.nodes {
		m, err := n.metrics()
		if err != nil {
			continue
		}
		for k, v := range m {
			if strings.HasPrefix(k, "im_connect_fallbacks_total{") {
				total, ok = total+int64(v), true
			}
		}
	}
	if !ok {
		return -1
	}
	return total
}

// ownersOf returns the distinct owning nodes of clients c0 … c<n-1>.
func (e *env) ownersOf(n int) map[string]int {
	nodes := e.helper.Nodes()
	out := map[string]int{}
	for i := 0; i < n; i++ {
		out[wire.Owner("c"+strconv.Itoa(i), nodes)]++
	}
	return out
}

// masterStats reads every master's counters at the start of a
// measurement, for spread to tell how the work went over them.
func (e *env) masterStats(ctx context.Context) []store.MasterStat {
	ms, err := e.diag.MasterStats(ctx)
	if err != nil {
		return nil
	}
	return ms
}

// spread says how the work since before went over the masters: per master
// its slots, CPU (from m, % of one core), commands and presence writes
// (HSET, HDEL) per unit, and the connections holding a subscription there.
func (e *env) spread(ctx context.Context, before []store.MasterStat, m *cpuMeter, units int64, unit string) string {
	after := e.masterStats(ctx)
	if before == nil || len(after) != len(before) || units <= 0 {
		return ""
	}
	pct := m.pct()
	pidOf := map[string]int{}
	for _, r := range e.redis {
		pidOf["127.0.0.1:"+strings.TrimPrefix(r.name, "redis-")] = r.pid()
	}
	if len(e.redis) == 1 {
		pidOf[""] = e.redis[0].pid()
	}
	delta := func(i int, names ...string) float64 {
		var d int64
		for _, n := range names {
			d += after[i].Calls[n] - before[i].Calls[n]
		}
		return float64(d) / float64(units)
	}
	var parts []string
	for i, a := range after {
		var total int64
		for name, n := range a.Calls {
			if name != "info" && name != "client|list" && name != "cluster|slots" {
				total += n - before[i].Calls[name]
			}
		}
		cpu := "-"
		if pid, ok := pidOf[a.Addr]; ok {
			cpu = f1(pct[pid])
		}
		name := a.Addr
		if name == "" {
			name = "redis"
		}
		parts = append(parts, fmt.Sprintf("%s (%d slots): CPU %s %%, %.2f cmds, %.2f presence writes (hset+hdel), %.3f publishes /%s, %d subscriber conns",
			name, a.Slots, cpu, float64(total)/float64(units), delta(i, "hset", "hdel"), delta(i, "publish", "spublish"), unit, a.Subscribers))
	}
	return "per master: " + strings.Join(parts, "; ")
}
