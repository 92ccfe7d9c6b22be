package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/freeport"
	"github.com/imbroker/imbroker/internal/redistest"
)

// TestBrowserEndToEnd runs the chat scenario of e2e/chat.e2e.mjs in
// headless Chromium against the real thing: a redis-server, an imserver
// binary in its own process and the web API started as
// `IM_REDIS_URL=… webapi-example` would start it.
// Missing Node.js, npm packages or Chromium fail the test:
// webapi-example/e2e/install.sh installs them.
//
// UPDATE_SCREENSHOT=1 saves the screenshot to docs/screenshot.png.
func TestBrowserEndToEnd(t *testing.T) {
	tools := browserTools(t)
	redis := redistest.Start(t)
	node := startNodeProcess(t, buildImserver(t), redis.URL(), "e2e-node")

	adminToken := "e2e-" + randomHex(8)
	sys := startExternalSystem(t, redis.URL(), adminToken)

	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/restart-node" {
			http.NotFound(w, r)
			return
		}
		if err := node.restart(); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(control.Close)

	screenshot := filepath.Join(t.TempDir(), "screenshot.png")
	if os.Getenv("UPDATE_SCREENSHOT") != "" {
		screenshot, _ = filepath.Abs("../docs/screenshot.png")
	}
	tools.run(t, "chat", "BASE_URL="+sys.URL(), "CONTROL_URL="+control.URL, "ADMIN_TOKEN="+adminToken, "SCREENSHOT="+screenshot)
	if _, err := os.Stat(screenshot); err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
}

// TestBrowserNodeKill runs the node-kill scenario of e2e/chat.e2e.mjs: two
// imserver processes on one redis-server, two pages in one room, and the
// node holding one page's socket killed with SIGKILL while messages are
// sent through the web API. The page reconnects to the survivor, and every
// message, room and private, shows exactly once on both pages, in order,
// replayed from history. Then the killed node comes back (the page moves to
// it) while the room's history is dropped: the page is told the room's
// stream was not recovered and reloads the room from the API, again with
// every message once.
func TestBrowserNodeKill(t *testing.T) {
	tools := browserTools(t)
	redis := redistest.Start(t)
	bin := buildImserver(t)
	nodes := []*nodeProcess{
		startNodeProcess(t, bin, redis.URL(), "e2e-node-1"),
		startNodeProcess(t, bin, redis.URL(), "e2e-node-2"),
	}
	sys := startExternalSystem(t, redis.URL(), "e2e-"+randomHex(8))

	// POST /kill-node?addr=<host:port> kills the node listening there with
	// SIGKILL: no drain, no goodbye to Redis, as a crash. POST
	// /start-node?addr=… starts it again. POST /drop-history?channel=…
	// deletes a channel's history stream and its meta, as a Redis that
	// restarted empty would have lost them.
	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		q := r.URL.Query()
		var err error
		switch r.URL.Path {
		case "/kill-node", "/start-node":
			n := slices.IndexFunc(nodes, func(n *nodeProcess) bool { return n.addr == q.Get("addr") })
			if n < 0 {
				http.Error(w, "no node listens on "+q.Get("addr"), http.StatusNotFound)
				return
			}
			if r.URL.Path == "/kill-node" {
				err = nodes[n].kill()
			} else {
				err = nodes[n].start()
			}
		case "/drop-history":
			ch := q.Get("channel")
			err = sys.rc.Do(r.Context(), sys.rc.B().Del().Key(chanHistoryKeys(ch)...).Build()).Error()
		default:
			http.NotFound(w, r)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(control.Close)

	tools.run(t, "node-kill", "BASE_URL="+sys.URL(), "CONTROL_URL="+control.URL,
		"NODE_ADDRS="+nodes[0].addr+","+nodes[1].addr)
}

// chanHistoryKeys are the Redis keys of a channel's history: the stream and
// its meta (docs/protocol.md).
func chanHistoryKeys(ch string) []string {
	stream := "im:hist:{c:" + ch + "}"
	return []string{stream, stream + ":meta"}
}

// browserTools are what the browser tests run: Node.js, Chromium and
// playwright-core. A missing one fails the test:
// webapi-example/e2e/install.sh installs them.
type browserEnv struct{ node, chromium string }

func browserTools(t *testing.T) browserEnv {
	t.Helper()
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found; run webapi-example/e2e/install.sh")
	}
	chromiumBin := os.Getenv("CHROMIUM")
	if chromiumBin == "" {
		chromiumBin = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromiumBin); err != nil {
		t.Fatalf("chromium not found at %s (set CHROMIUM to override); run webapi-example/e2e/install.sh", chromiumBin)
	}
	if _, err := os.Stat("e2e/node_modules/playwright-core/package.json"); err != nil {
		t.Fatal("playwright-core is not installed in webapi-example/e2e; run webapi-example/e2e/install.sh")
	}
	return browserEnv{node: nodeBin, chromium: chromiumBin}
}

// run runs one scenario of e2e/chat.e2e.mjs with the given environment.
func (b browserEnv) run(t *testing.T, scenario string, env ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.node, "chat.e2e.mjs")
	cmd.Dir = "e2e"
	cmd.Env = append(append(os.Environ(), "SCENARIO="+scenario, "CHROMIUM="+b.chromium), env...)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Run(); err != nil {
		t.Fatalf("browser test %s failed: %v", scenario, err)
	}
}

// startExternalSystem starts the web API as `IM_REDIS_URL=… webapi-example`
// would, on a free port, and stops it when the test ends.
func startExternalSystem(t *testing.T, redisURL, adminToken string) *system {
	t.Helper()
	env := map[string]string{"IM_REDIS_URL": redisURL, "WEBAPI_ADDR": "127.0.0.1:0", "WEBAPI_ADMIN_TOKEN": adminToken}
	sys, err := startSystem(context.Background(), configFromEnv(func(k string) string { return env[k] }),
		slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = sys.Close(ctx)
	})
	if sys.embedded != nil {
		t.Fatal("IM_REDIS_URL did not select the external mode")
	}
	return sys
}

// nodeProcess is an imserver binary run as a child process on a fixed port,
// so that a restart comes back at the same address with the same node id.
type nodeProcess struct {
	t    *testing.T
	bin  string
	args []string
	addr string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// buildImserver builds the imserver binary of this checkout.
func buildImserver(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "imserver")
	build := exec.Command("go", "build", "-o", bin, "./imserver/cmd/imserver")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build imserver: %v\n%s", err, out)
	}
	return bin
}

func startNodeProcess(t *testing.T, bin, redisURL, id string) *nodeProcess {
	t.Helper()
	addr := freeport.Addr(t)
	n := &nodeProcess{t: t, bin: bin, addr: addr, args: []string{
		"-listen", addr, "-redis-url", redisURL, "-node-id", id,
		"-origins", "127.0.0.1:*", "-drain-window", "200ms", "-drain-timeout", "5s",
	}}
	if err := n.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.stop)
	return n
}

func (n *nodeProcess) start() error {
	cmd := exec.Command(n.bin, n.args...)
	cmd.Stderr = testWriter{n.t}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("failed to start imserver: %w", err)
	}
	n.mu.Lock()
	n.cmd = cmd
	n.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		res, err := http.Get("http://" + n.addr + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("imserver on %s not ready: %v", n.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop drains the node with SIGTERM, as an orchestrator would.
func (n *nodeProcess) stop() {
	n.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// kill ends the node with SIGKILL, as a crash would, and waits for it.
func (n *nodeProcess) kill() error {
	n.mu.Lock()
	cmd := n.cmd
	n.cmd = nil
	n.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("the node on %s is not running", n.addr)
	}
	if err := cmd.Process.Kill(); err != nil {
		return err
	}
	_ = cmd.Wait() // "signal: killed"
	return nil
}

func (n *nodeProcess) restart() error {
	n.stop()
	return n.start()
}

// testWriter sends a child's output to the test log, line by line as
// written, so that it shows up in order with -v and on failure.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(trimNewline(p)))
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
