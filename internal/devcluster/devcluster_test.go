// Package devcluster_test runs scripts/dev-cluster.sh as a real process: it
// builds and starts a private Redis, imserver nodes and the example
// service, and must stop every one of them on SIGINT.
package devcluster_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/testnode"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/internal/leakcheck"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

var script = filepath.Join("..", "..", "scripts", "dev-cluster.sh")

// Generous bounds for a loaded CI box; the first run also compiles both
// binaries.
const (
	readyLimit = 5 * time.Minute
	stopLimit  = time.Minute
)

func TestDevClusterTwoNodes(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found (install the redis-server package): %v", err)
	}
	dc := startScript(t, "-n", "2")
	out := dc.waitFor(t, "Ctrl-C stops everything.")
	info := parseSummary(t, out)
	if len(info.nodes) != 2 {
		t.Fatalf("summary lists %d nodes, want 2:\n%s", len(info.nodes), out)
	}
	// The script's own short-lived helpers (the cat that printed the
	// summary) may still be on their way out.
	var children map[int]string
	waitUntil(t, "the script's children are the four services", func() error {
		children = childProcesses(t, dc.cmd.Process.Pid)
		var names []string
		for _, name := range children {
			names = append(names, name)
		}
		slices.Sort(names)
		if want := []string{"imserver", "imserver", "redis-server", "webapi-example"}; !slices.Equal(names, want) {
			return fmt.Errorf("children %v, want %v", names, want)
		}
		return nil
	})

	// The private Redis, not the shared one, holds both nodes.
	if port := info.redis.Port(); port == "6379" || port == "" {
		t.Errorf("Redis URL %s: want a private port", info.redis)
	}
	if !strings.Contains(out, "IM_REDIS_URL="+info.redis.String()+" go run ./imctl nodes") {
		t.Errorf("no imctl line for %s in:\n%s", info.redis, out)
	}
	im, err := imhelper.New(context.Background(), imhelper.Options{RedisURL: info.redis.String()})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	if got := im.Nodes(); !slices.Equal(got, []string{"node-1", "node-2"}) {
		t.Errorf("nodes registered in %s: %v, want [node-1 node-2]", info.redis, got)
	}

	for _, n := range info.nodes {
		if code, body := get(t, n.admin+"/readyz"); code != http.StatusOK {
			t.Errorf("%s /readyz: %d %s", n.id, code, body)
		}
		// Each node sees the other: they share the Redis.
		waitUntil(t, n.id+" sees 2 nodes", func() error {
			if _, body := get(t, n.admin+"/metrics"); !strings.Contains(body, "\nim_nodes 2\n") {
				return errors.New("im_nodes is not 2")
			}
			return nil
		})
	}
	if code, body := get(t, info.page); code != http.StatusOK || !strings.Contains(body, "<title>imbroker chat</title>") {
		t.Errorf("page %s: %d %.200s", info.page, code, body)
	}

	// The nodes accept the page's origin, and only that.
	checkPageCanConnect(t, im, info)

	// SIGINT, as Ctrl-C sends it, stops every child and frees every port.
	if err := dc.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	code := dc.wait(t)
	if code != 130 {
		t.Errorf("exit status after SIGINT: %d, want 130; stderr:\n%s", code, dc.stderr.String())
	}
	for pid, name := range children {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
			t.Errorf("%s (pid %d) still runs after the script exited", name, pid)
		}
	}
	for _, addr := range info.addrs() {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("port %s not free after the script exited: %v", addr, err)
			continue
		}
		l.Close()
	}
	if _, err := os.Stat(info.logs); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("log directory %s left behind without -k (%v)", info.logs, err)
	}
}

func TestDevClusterRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		args       []string
		code       int
		stderr     string
	}{
		// No redis-server on PATH: refused before anything is built.
		{"no redis-server", t.TempDir(), nil, 1, "redis-server is not installed"},
		{"bad -n", os.Getenv("PATH"), []string{"-n", "zero"}, 2, "usage: dev-cluster.sh"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command("bash", append([]string{script}, tc.args...)...)
			cmd.Env = append(os.Environ(), "PATH="+tc.path)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != tc.code || !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("got %v with stderr %q; want exit status %d and %q", err, stderr.String(), tc.code, tc.stderr)
			}
		})
	}
}

// checkPageCanConnect opens a socket the way the page does: with a URL from
// PrevConnectServer and the page's Origin. Another origin is refused.
func checkPageCanConnect(t *testing.T, im *imhelper.Client, info summary) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	u, err := im.PrevConnectServer(ctx, "dev-cluster-test", "")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(info.nodes, func(n node) bool { return strings.HasPrefix(u, n.ws+"?") }) {
		t.Errorf("PrevConnectServer URL %s is none of the printed nodes' %v", u, info.nodes)
	}
	ws, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {info.page}}})
	if err != nil {
		t.Fatalf("dial %s with the page's origin: %v", u, err)
	}
	defer ws.CloseNow()
	waitUntil(t, "the socket is online", func() error {
		if on, err := im.HasOnline(ctx, "dev-cluster-test"); !on {
			return fmt.Errorf("not online (%v)", err)
		}
		return nil
	})

	u, err = im.PrevConnectServer(ctx, "dev-cluster-test-2", "")
	if err != nil {
		t.Fatal(err)
	}
	_, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"http://elsewhere.example"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("dial with a foreign origin: %v (response %v), want 403", err, resp)
	}
}

// devCluster is the running script.
type devCluster struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, closed at EOF
	stderr *lockedBuffer
	seen   strings.Builder
	done   bool
}

func startScript(t *testing.T, args ...string) *devCluster {
	t.Helper()
	dc := &devCluster{lines: make(chan string, 100), stderr: &lockedBuffer{}}
	dc.cmd = exec.Command("bash", append([]string{script}, args...)...)
	// The script's temporary directory then goes even if the script is
	// killed before it could remove it.
	dc.cmd.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	stdout, err := dc.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	dc.cmd.Stderr = dc.stderr
	// A process started in the background by a non-interactive shell (as CI
	// and editors run tests) ignores SIGINT, and an ignored signal stays
	// ignored in its children, where no trap can catch it. With a handler
	// installed here at fork time, the script starts with the default
	// disposition, as it would from a terminal.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt)
	err = dc.cmd.Start()
	signal.Stop(sigs)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(dc.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			dc.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	// Whatever happens to the test, nothing it started keeps running.
	t.Cleanup(func() {
		if dc.done {
			return
		}
		children := childProcesses(t, dc.cmd.Process.Pid)
		_ = dc.cmd.Process.Signal(os.Interrupt)
		if dc.waitExit(stopLimit) {
			return
		}
		for pid := range children {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		_ = dc.cmd.Process.Kill()
		dc.waitExit(stopLimit)
	})
	return dc
}

// waitFor returns the script's output up to and including the line marker.
func (dc *devCluster) waitFor(t *testing.T, marker string) string {
	t.Helper()
	timeout := time.After(readyLimit)
	for {
		select {
		case line, ok := <-dc.lines:
			if !ok {
				t.Fatalf("the script ended before printing %q:\n%s\nstderr:\n%s", marker, dc.seen.String(), dc.stderr.String())
			}
			dc.seen.WriteString(line + "\n")
			if line == marker {
				return dc.seen.String()
			}
		case <-timeout:
			t.Fatalf("no %q within %v:\n%s\nstderr:\n%s", marker, readyLimit, dc.seen.String(), dc.stderr.String())
		}
	}
}

// wait waits for the script to exit and returns its exit status.
func (dc *devCluster) wait(t *testing.T) int {
	t.Helper()
	if !dc.waitExit(stopLimit) {
		t.Fatalf("the script did not exit within %v; stderr:\n%s", stopLimit, dc.stderr.String())
	}
	return dc.cmd.ProcessState.ExitCode()
}

// waitExit drains stdout until EOF, then reaps the script.
func (dc *devCluster) waitExit(limit time.Duration) bool {
	timeout := time.After(limit)
	for {
		select {
		case line, ok := <-dc.lines:
			if ok {
				dc.seen.WriteString(line + "\n")
				continue
			}
			_ = dc.cmd.Wait()
			dc.done = true
			return true
		case <-timeout:
			return false
		}
	}
}

type node struct{ id, ws, admin string }

// summary is what the script prints once everything is ready.
type summary struct {
	page  string
	nodes []node
	redis *url.URL
	logs  string
}

var (
	pageLine  = regexp.MustCompile(`(?m)^  page +(http://\S+)$`)
	nodeLine  = regexp.MustCompile(`(?m)^  (node-\d+) +(ws://\S+) +admin (http://\S+)/metrics `)
	redisLine = regexp.MustCompile(`(?m)^  redis +(redis://\S+)$`)
	logsLine  = regexp.MustCompile(`(?m)^  logs +(/\S+)$`)
)

func parseSummary(t *testing.T, out string) summary {
	t.Helper()
	var s summary
	m := pageLine.FindStringSubmatch(out)
	r := redisLine.FindStringSubmatch(out)
	l := logsLine.FindStringSubmatch(out)
	if m == nil || r == nil || l == nil {
		t.Fatalf("the summary lacks the page, Redis or log lines:\n%s", out)
	}
	s.page, s.logs = m[1], l[1]
	var err error
	if s.redis, err = url.Parse(r[1]); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodeLine.FindAllStringSubmatch(out, -1) {
		s.nodes = append(s.nodes, node{id: n[1], ws: n[2], admin: n[3]})
	}
	if st, err := os.Stat(s.logs); err != nil || !st.IsDir() {
		t.Errorf("log directory %s: %v", s.logs, err)
	}
	return s
}

// addrs are every host:port the summary names.
func (s summary) addrs() []string {
	urls := []string{s.page, s.redis.String()}
	for _, n := range s.nodes {
		urls = append(urls, n.ws, n.admin)
	}
	var hosts []string
	for _, raw := range urls {
		if u, err := url.Parse(raw); err == nil {
			hosts = append(hosts, u.Host)
		}
	}
	return hosts
}

// childProcesses returns the pid and name of every process whose parent is
// pid, from /proc.
func childProcesses(t *testing.T, pid int) map[int]string {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	children := map[int]string{}
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid …; comm may contain spaces and parentheses.
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		fields := strings.Fields(s[end+1:])
		if len(fields) < 2 || fields[1] != strconv.Itoa(pid) {
			continue
		}
		child, _ := strconv.Atoi(strings.TrimSpace(s[:open]))
		children[child] = s[open+1 : end]
	}
	return children
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitUntil polls cond until it returns nil, failing after a minute.
func waitUntil(t *testing.T, what string, cond func() error) {
	t.Helper()
	testnode.WaitFor(t, time.Minute, func() error {
		if err := cond(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	})
}

// lockedBuffer is a bytes.Buffer that the process's stderr copier and the
// test may use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
