package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/testnode"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/freeport"
	"github.com/imbroker/imbroker/internal/redistest"
)

var (
	envOnce     sync.Once
	envAccepted map[string]bool
	envErr      error
)

// acceptedEnv returns the IM_* variables imserver reads, from the built
// binary's -h (which names the variable of every flag, -drain-timeout of
// cmd/imserver included).
func acceptedEnv(t *testing.T) map[string]bool {
	t.Helper()
	envOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deploy-imserver")
		if err != nil {
			envErr = err
			return
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "imserver")
		if envErr = goBuild(bin, "./imserver/cmd/imserver"); envErr != nil {
			return
		}
		// -h prints the usage to standard error and exits 0.
		out, err := exec.Command(bin, "-h").CombinedOutput()
		if err != nil {
			envErr = fmt.Errorf("imserver -h: %v\n%s", err, out)
			return
		}
		envAccepted = map[string]bool{}
		for _, m := range regexp.MustCompile(`\((IM_[A-Z0-9_]+)\)`).FindAllStringSubmatch(string(out), -1) {
			envAccepted[m[1]] = true
		}
		if !envAccepted["IM_REDIS_URL"] || !envAccepted["IM_DRAIN_TIMEOUT"] {
			envErr = fmt.Errorf("imserver -h names no IM_REDIS_URL or IM_DRAIN_TIMEOUT:\n%s", out)
		}
	})
	if envErr != nil {
		t.Fatal(envErr)
	}
	return envAccepted
}

// goBuild builds the main package pkg (relative to the repository root,
// in the workspace) into bin.
func goBuild(bin, pkg string) error { return testnode.BuildBinary(repoRoot, pkg, bin) }

// liveNode is an imserver node configured from the environment of the
// StatefulSet's first pod, with only the listen addresses replaced by
// loopback ones; it reaches a private Redis through the client given to
// imserver.New. An imhelper client runs beside it.
type liveNode struct {
	srv       *imserver.Server
	cfg       imserver.Config // as parsed from the manifest's environment
	adminURL  string          // http://host:port of the admin listener
	wsURL     string          // http://host:port of the WebSocket listener
	helper    *imhelper.Client
	container container
}

func startManifestNode(t *testing.T) *liveNode {
	t.Helper()
	m := loadManifests(t)
	var sts object
	for _, o := range m.ofKind("StatefulSet") {
		if repo, _, _ := strings.Cut(o.Spec.Template.Spec.Containers[0].Image, ":"); repo == nodeImage {
			sts = o
		}
	}
	if sts.Metadata.Name == "" {
		t.Fatal("no imserver StatefulSet in deploy/k8s")
	}
	n := &liveNode{container: sts.Spec.Template.Spec.Containers[0]}
	img, ok := dockerfileOf(t, n.container.Image)
	if !ok {
		t.Fatalf("no Dockerfile builds %s", n.container.Image)
	}
	redis, rc := testRedis(t)
	// The node talks to the private Redis through rc; IM_REDIS_URL (the
	// cluster's Redis) is only checked.
	env := expandEnv(t, n.container, sts.Metadata.Name+"-0")
	n.cfg, _, _ = checkNodeEnv(t, "the StatefulSet's first pod", env, img, rc)
	cfg := n.cfg
	cfg.Listen, cfg.AdminListen = "127.0.0.1:0", "127.0.0.1:0"
	srv := testnode.StartOn(t, cfg, rc)
	n.srv = srv
	n.adminURL = "http://" + srv.AdminAddr().String()
	n.wsURL = "http://" + srv.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if err = srv.WaitReady(ctx); err != nil {
		t.Fatalf("node not ready: %v", err)
	}
	n.helper, err = imhelper.New(ctx, imhelper.Options{RedisURL: redis.URL(), RefreshInterval: 100 * time.Millisecond, Logger: testnode.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.helper.Close)
	testnode.WaitFor(t, 30*time.Second, func() error {
		if got := n.helper.Nodes(); len(got) != 1 || got[0] != srv.NodeID() {
			return fmt.Errorf("imhelper sees nodes %v, want [%s]", got, srv.NodeID())
		}
		return nil
	})
	return n
}

// exercise makes the node create its labelled series: a refused attempt,
// a connection that receives a message, and its close.
func (n *liveNode) exercise(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsBase := "ws" + strings.TrimPrefix(n.wsURL, "http") + "/ws"

	_, resp, err := websocket.Dial(ctx, wsBase+"?token=not-a-token", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a made-up token: want HTTP 401, got %v (%v)", resp, err)
	}

	public, err := n.helper.PrevConnectServer(ctx, "alice", "{}")
	if err != nil {
		t.Fatal(err)
	}
	// The URL a browser gets is the manifest's public one; the test dials
	// the node's real address with the same token.
	u, err := url.Parse(public)
	if err != nil || !strings.HasPrefix(public, n.cfg.PublicURL+"?") {
		t.Fatalf("PrevConnectServer gave %q, want the StatefulSet's IM_PUBLIC_URL %s (%v)", public, n.cfg.PublicURL, err)
	}
	conn, _, err := websocket.Dial(ctx, wsBase+"?"+u.RawQuery, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	// The node's first frame says the socket is attached and caught up.
	if _, first, err := conn.Read(ctx); err != nil || !strings.HasPrefix(string(first), `{"type":"recovered","first":true`) {
		t.Fatalf("alice's first frame %s (%v), want recovered", first, err)
	}
	if ok, err := n.helper.HasOnline(ctx, "alice"); !ok {
		t.Fatalf("alice not online once attached (%v)", err)
	}
	if _, err := n.helper.SendMessage(ctx, "bob", []string{"alice"}, map[string]string{"text": "hi"}); err != nil {
		t.Fatal(err)
	}
	_, frame, err := conn.Read(ctx)
	if err != nil || !strings.Contains(string(frame), `"hi"`) {
		t.Fatalf("alice's frame %s (%v), want the message", frame, err)
	}
	if err := conn.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatal(err)
	}
	testnode.WaitFor(t, 30*time.Second, func() error {
		if ok, err := n.helper.HasOnline(ctx, "alice"); ok || err != nil {
			return fmt.Errorf("alice still online (%v)", err)
		}
		return nil
	})
}

func get(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestProbesServedByLiveNode: the paths of the StatefulSet's probes answer
// 200 on the admin listener of a ready node configured by that
// StatefulSet, and not on the WebSocket listener that the Ingress exposes.
func TestProbesServedByLiveNode(t *testing.T) {
	n := startManifestNode(t)
	probes := map[string]*probe{"readiness": n.container.ReadinessProbe, "liveness": n.container.LivenessProbe}
	for kind, p := range probes {
		if p == nil || p.HTTPGet == nil {
			t.Fatalf("the StatefulSet has no HTTP %s probe", kind)
		}
		if code, body := get(t, n.adminURL+p.HTTPGet.Path); code != http.StatusOK {
			t.Errorf("%s probe %s on the admin listener: %d %s", kind, p.HTTPGet.Path, code, body)
		}
		if code, _ := get(t, n.wsURL+p.HTTPGet.Path); code != http.StatusNotFound {
			t.Errorf("%s probe %s is also served on the public listener (%d)", kind, p.HTTPGet.Path, code)
		}
	}
}

// TestExampleProbesServed runs the example service as its Deployment
// configures it (its listen address and Redis replaced by private ones)
// and checks that its probe paths answer 200 on its port.
func TestExampleProbesServed(t *testing.T) {
	dep := loadManifests(t).get(t, "Deployment", "webapi-example")
	c := dep.Spec.Template.Spec.Containers[0]
	bin := filepath.Join(t.TempDir(), "webapi-example")
	if err := goBuild(bin, "./webapi-example"); err != nil {
		t.Fatal(err)
	}
	redis := redistest.Start(t)
	addr := freeport.Addr(t)
	cmd := exec.Command(bin)
	cmd.Env = os.Environ()
	for name, v := range expandEnv(t, c, "") {
		switch name {
		case "WEBAPI_ADDR":
			v = addr
		case "IM_REDIS_URL":
			v = redis.URL()
		}
		cmd.Env = append(cmd.Env, name+"="+v)
	}
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	for kind, p := range map[string]*probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || portOf(c, p.HTTPGet.Port) == 0 {
			t.Fatalf("webapi-example: no HTTP %s probe on a container port", kind)
		}
		testnode.WaitFor(t, 30*time.Second, func() error {
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("webapi-example exited (%v):\n%s", err, logs.String())
			default:
			}
			resp, err := http.Get("http://" + addr + p.HTTPGet.Path)
			if err != nil {
				return err
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s probe %s: %d", kind, p.HTTPGet.Path, resp.StatusCode)
			}
			return nil
		})
	}
}
