package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/redistest"
)

// TestBrowserEndToEnd runs e2e/chat.e2e.mjs in headless Chromium against
// the real thing: a redis-server, an imserver binary in its own process and
// the web API started as `IM_REDIS_URL=… webapi-example` would start it.
// Missing Node.js, npm packages or Chromium fail the test:
// webapi-example/e2e/install.sh installs them.
//
// UPDATE_SCREENSHOT=1 saves the screenshot to docs/screenshot.png.
func TestBrowserEndToEnd(t *testing.T) {
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

	redis := redistest.Start(t)
	node := startNodeProcess(t, redis.URL())

	adminToken := "e2e-" + randomHex(8)
	env := map[string]string{"IM_REDIS_URL": redis.URL(), "WEBAPI_ADDR": "127.0.0.1:0", "WEBAPI_ADMIN_TOKEN": adminToken}
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
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, "chat.e2e.mjs")
	cmd.Dir = "e2e"
	cmd.Env = append(os.Environ(),
		"BASE_URL="+sys.URL(), "CONTROL_URL="+control.URL, "ADMIN_TOKEN="+adminToken,
		"CHROMIUM="+chromiumBin, "SCREENSHOT="+screenshot)
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Run(); err != nil {
		t.Fatalf("browser test failed: %v", err)
	}
	if _, err := os.Stat(screenshot); err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
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

func startNodeProcess(t *testing.T, redisURL string) *nodeProcess {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "imserver")
	build := exec.Command("go", "build", "-o", bin, "./imserver/cmd/imserver")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build imserver: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	n := &nodeProcess{t: t, bin: bin, addr: addr, args: []string{
		"-listen", addr, "-redis-url", redisURL, "-node-id", "e2e-node",
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
