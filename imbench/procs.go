package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // the node mode serves pprof on its debug address
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/freeport"
)

// proc is a child process: redis-server, a node or a load worker. Children
// get SIGKILL if imbench dies (Pdeathsig), so a crash leaves nothing behind.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func startProc(name string, stdout io.Writer, stdin io.Reader, logFile string, bin string, args ...string) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.Stdout = stdout
	cmd.Stdin = stdin
	if logFile != "" {
		f, err := os.Create(logFile)
		if err != nil {
			return nil, err
		}
		cmd.Stderr = f
		if stdout == nil {
			cmd.Stdout = f
		}
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("failed to start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.done) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// freePort claims a loopback port below the ephemeral range for a child to
// listen on (see freeport). The claim lasts as long as imbench runs.
func freePort() (int, error) {
	p, _, err := freeport.Take()
	return p, err
}

func startRedis(dir string) (*proc, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	p, err := startProc("redis", nil, nil, filepath.Join(dir, "redis.out"), "redis-server",
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := waitPong(addr); err != nil {
		p.stop(time.Second)
		return nil, "", err
	}
	return p, "redis://" + addr + "/0", nil
}

// startRedisCluster starts 2×masters redis-server processes in cluster
// mode and joins them as masters with one replica each (redis-cli
// --cluster create), waiting until every node reports cluster_state:ok.
// Each port is claimed with its bus port (port+10000), both below the
// ephemeral range.
func startRedisCluster(dir string, masters int) ([]*proc, string, error) {
	var procs []*proc
	var addrs []string
	fail := func(err error) ([]*proc, string, error) {
		for _, p := range procs {
			p.stop(time.Second)
		}
		return nil, "", err
	}
	for len(procs) < 2*masters {
		port, _, err := freeport.TakePair(10000)
		if err != nil {
			return fail(err)
		}
		name := "redis-" + strconv.Itoa(port)
		p, err := startProc(name, nil, nil, filepath.Join(dir, name+".out"), "redis-server",
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--cluster-enabled", "yes", "--cluster-config-file", "nodes-"+strconv.Itoa(port)+".conf",
			"--cluster-node-timeout", "5000", "--dir", dir, "--logfile", filepath.Join(dir, name+".log"))
		if err != nil {
			return fail(err)
		}
		procs = append(procs, p)
		addrs = append(addrs, "127.0.0.1:"+strconv.Itoa(port))
	}
	for _, a := range addrs {
		if err := waitPong(a); err != nil {
			return fail(err)
		}
	}
	args := append(append([]string{"--cluster", "create"}, addrs...), "--cluster-replicas", "1", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("redis-cli --cluster create: %v: %s", err, out))
	}
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ok := 0
		for _, a := range addrs {
			host, port, _ := net.SplitHostPort(a)
			out, _ := exec.Command("redis-cli", "-h", host, "-p", port, "cluster", "info").Output()
			if strings.Contains(string(out), "cluster_state:ok") {
				ok++
			}
		}
		if ok == len(addrs) {
			break
		}
		if time.Now().After(deadline) {
			return fail(errors.New("the cluster did not reach cluster_state:ok in 60s"))
		}
	}
	return procs, "redis+cluster://" + strings.Join(addrs, ","), nil
}

// waitPong waits until the redis-server at addr answers PING.
func waitPong(addr string) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err != nil {
			continue
		}
		_, _ = c.Write([]byte("PING\r\n"))
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if line == "+PONG\r\n" {
			return nil
		}
	}
	return fmt.Errorf("redis-server on %s did not come up", addr)
}

// node is one imserver process and its addresses.
type node struct {
	*proc
	id    string
	admin string // host:port of /metrics
	debug string // host:port of pprof and /bench/runtime (node mode only)
}

// startNode runs an imserver node: either the real binary (bin != "") or
// this program in node mode, which runs the same imserver package code and
// additionally serves pprof and runtime counters on a debug address.
func startNode(dir, bin, id, redisURL string, extra []string) (*node, error) {
	wsPort, err := freePort()
	if err != nil {
		return nil, err
	}
	adminPort, err := freePort()
	if err != nil {
		return nil, err
	}
	args := []string{"-listen", "127.0.0.1:" + strconv.Itoa(wsPort), "-admin-listen", "127.0.0.1:" + strconv.Itoa(adminPort),
		"-node-id", id, "-redis-url", redisURL,
		// The load comes from a few loopback addresses, each far faster
		// than one source's default budget; -node-args can set it.
		"-connect-rate-per-source", "-1"}
	args = append(args, extra...)
	n := &node{id: id, admin: "127.0.0.1:" + strconv.Itoa(adminPort)}
	var p *proc
	if bin != "" {
		p, err = startProc(id, nil, nil, filepath.Join(dir, id+".log"), bin, args...)
	} else {
		dbg, err2 := freePort()
		if err2 != nil {
			return nil, err2
		}
		n.debug = "127.0.0.1:" + strconv.Itoa(dbg)
		self, err2 := os.Executable()
		if err2 != nil {
			return nil, err2
		}
		p, err = startProc(id, nil, nil, filepath.Join(dir, id+".log"), self, append([]string{"node", n.debug}, args...)...)
	}
	if err != nil {
		return nil, err
	}
	n.proc = p
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		r, err := http.Get("http://" + n.admin + "/readyz")
		if err == nil {
			r.Body.Close()
			if r.StatusCode == 200 {
				return n, nil
			}
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("node %s exited; see %s", id, filepath.Join(dir, id+".log"))
		default:
		}
	}
	p.stop(time.Second)
	return nil, fmt.Errorf("node %s not ready in 15s", id)
}

// metric reads one unlabelled series from the node's /metrics.
func (n *node) metrics() (map[string]float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	r, err := c.Get("http://" + n.admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer r.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(r.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
			out[k] = f
		}
	}
	return out, sc.Err()
}

// runtimeStats is what node mode serves on /bench/runtime.
type runtimeStats struct {
	Goroutines int    `json:"goroutines"`
	HeapInuse  uint64 `json:"heap_inuse"`
	StackInuse uint64 `json:"stack_inuse"`
	Sys        uint64 `json:"sys"`
	GCSys      uint64 `json:"gc_sys"`
	NumGC      uint32 `json:"num_gc"`
}

// goroutines returns the node's goroutine count from go_goroutines on
// /metrics, or from node mode's debug endpoint, or -1.
func (n *node) runtime() (runtimeStats, bool) {
	var rs runtimeStats
	if m, err := n.metrics(); err == nil {
		if g, ok := m["go_goroutines"]; ok && n.debug == "" {
			rs.Goroutines = int(g)
			return rs, true
		}
	}
	if n.debug == "" {
		return rs, false
	}
	c := http.Client{Timeout: 10 * time.Second}
	r, err := c.Get("http://" + n.debug + "/bench/runtime")
	if err != nil {
		return rs, false
	}
	defer r.Body.Close()
	return rs, json.NewDecoder(r.Body).Decode(&rs) == nil
}

// cpuProfile fetches a CPU profile of a node-mode node into file.
func (n *node) cpuProfile(ctx context.Context, secs int, file string) error {
	return n.saveProfile(ctx, fmt.Sprintf("profile?seconds=%d", secs), file)
}

// fetchProfile fetches any pprof endpoint (e.g. heap) of a node-mode node.
func (n *node) fetchProfile(kind, file string) error {
	return n.saveProfile(context.Background(), kind, file)
}

func (n *node) saveProfile(ctx context.Context, path, file string) error {
	if n.debug == "" {
		return errors.New("node has no debug address (use node mode)")
	}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.debug+"/debug/pprof/"+path, nil)
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, b, 0o644)
}

// runNode is the node mode: imbench node DEBUGADDR [imserver flags]. It
// does what cmd/imserver does (ParseFlags, New, Start, drain on SIGTERM) and
// also serves pprof and /bench/runtime on DEBUGADDR.
func runNode(args []string) error {
	if len(args) < 1 {
		return errors.New("usage: imbench node DEBUGADDR [imserver flags]")
	}
	debugAddr := args[0]
	fs := flag.NewFlagSet("imserver", flag.ContinueOnError)
	cfg, err := imserver.ParseFlags(fs, args[1:])
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := imserver.New(cfg, nil, log)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	http.HandleFunc("/bench/runtime", func(w http.ResponseWriter, r *http.Request) {
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		_ = json.NewEncoder(w).Encode(runtimeStats{Goroutines: runtime.NumGoroutine(), HeapInuse: ms.HeapInuse,
			StackInuse: ms.StackInuse, Sys: ms.Sys, GCSys: ms.GCSys, NumGC: ms.NumGC})
	})
	go func() { _ = http.ListenAndServe(debugAddr, nil) }()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	<-ctx.Done()
	stop()
	dctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return srv.Shutdown(dctx)
}

// procStat reads utime+stime (clock ticks, 100/s) and VmRSS (bytes) of pid.
func procStat(pid int) (ticks int64, rss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// Fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+2:]))
	// f[0] is field 3 (state); utime is field 14, stime field 15.
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(s), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			kb, _ := strconv.ParseInt(strings.Fields(line)[1], 10, 64)
			rss = kb * 1024
		}
	}
	return ut + st, rss, nil
}

// cpuMeter measures CPU use of a set of processes over a window.
type cpuMeter struct {
	start time.Time
	ticks map[int]int64
}

func newCPUMeter(pids []int) *cpuMeter {
	m := &cpuMeter{start: time.Now(), ticks: map[int]int64{}}
	for _, p := range pids {
		t, _, _ := procStat(p)
		m.ticks[p] = t
	}
	return m
}

// pct returns the % of one core each process used since the meter started.
func (m *cpuMeter) pct() map[int]float64 {
	el := time.Since(m.start).Seconds()
	out := map[int]float64{}
	for p, t0 := range m.ticks {
		t, _, err := procStat(p)
		if err != nil {
			continue
		}
		out[p] = float64(t-t0) / 100 / el * 100
	}
	return out
}

// loadavg returns the 1-minute load average.
func loadavg() float64 {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// workerProc is a load process driven over its stdin/stdout.
type workerProc struct {
	*proc
	mu  sync.Mutex
	in  io.WriteCloser
	out *bufio.Scanner
}

func startWorker(dir string, i int) (*workerProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p, err := startProc(fmt.Sprintf("load%d", i), pw, inR, filepath.Join(dir, fmt.Sprintf("load%d.log", i)), self, "worker")
	pw.Close()
	inR.Close()
	if err != nil {
		pr.Close()
		inW.Close()
		return nil, err
	}
	sc := bufio.NewScanner(pr)
	sc.Buffer(make([]byte, 1<<20), 1<<26)
	return &workerProc{proc: p, in: inW, out: sc}, nil
}

func (w *workerProc) call(req workerReq) (workerResp, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var resp workerResp
	b, _ := json.Marshal(req)
	if _, err := w.in.Write(append(b, '\n')); err != nil {
		return resp, err
	}
	if !w.out.Scan() {
		return resp, fmt.Errorf("%s: no reply (%v)", w.name, w.out.Err())
	}
	if err := json.Unmarshal(w.out.Bytes(), &resp); err != nil {
		return resp, err
	}
	if resp.Err != "" {
		return resp, fmt.Errorf("%s: %s", w.name, resp.Err)
	}
	return resp, nil
}

// fakeCmd wraps an existing pid (a targeted node) so that procStat works on
// it; imbench never signals it.
func fakeCmd(pid int) *exec.Cmd {
	p, _ := os.FindProcess(pid)
	return &exec.Cmd{Process: p}
}
