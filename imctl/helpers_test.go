package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/testnode"
)

var waitFor = testnode.WaitFor

// deployment is a private redis-server with in-process nodes, and the
// test's own imhelper client to set up and check what imctl does.
type deployment struct {
	t     *testing.T
	redis *redistest.Server
	nodes []*imserver.Server
	im    *imhelper.Client
}

// startDeployment starts Redis and a node per id (cfg, if not nil, adjusts
// each node's config) and waits until every node and the test's client
// see all of them.
func startDeployment(t *testing.T, cfg func(*imserver.Config), ids ...string) *deployment {
	t.Helper()
	d := &deployment{t: t, redis: redistest.Start(t)}
	for _, id := range ids {
		c := imserver.Config{Listen: "127.0.0.1:0", NodeID: id, RedisURL: d.redis.URL(),
			LeaseTTL: 5 * time.Second, ProbeInterval: 500 * time.Millisecond,
			MoveWindow: 500 * time.Millisecond, DrainWindow: 300 * time.Millisecond}
		if cfg != nil {
			cfg(&c)
		}
		d.nodes = append(d.nodes, testnode.Start(t, c))
	}
	im, err := imhelper.New(context.Background(), imhelper.Options{RedisURL: d.redis.URL(), Logger: testnode.Quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(im.Close)
	d.im = im
	want := fmt.Sprint(ids)
	waitFor(t, 15*time.Second, func() error {
		_ = im.RefreshNodes(context.Background())
		if got := fmt.Sprint(im.Nodes()); got != want {
			return fmt.Errorf("imhelper sees %s, want %s", got, want)
		}
		for _, n := range d.nodes {
			if got := fmt.Sprint(n.Nodes()); got != want || !n.Ready() {
				return fmt.Errorf("%s sees %s (ready %v), want %s", n.NodeID(), got, n.Ready(), want)
			}
		}
		return nil
	})
	return d
}

// result is how one imctl run ended.
type result struct {
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// run runs imctl against the deployment's Redis and waits for it.
func (d *deployment) run(args ...string) result {
	d.t.Helper()
	return runImctl(d.t, nil, append([]string{"-redis-url", d.redis.URL()}, args...)...)
}

// runImctl runs the binary with args and extra environment variables.
func runImctl(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, imctlBin, args...)
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		r.code = ee.ExitCode()
	default:
		t.Fatalf("imctl %v: %v\n%s", args, err, r)
	}
	return r
}

// cleanEnv is the test's environment without the IM_* settings of
// whoever runs the tests.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IM_") {
			out = append(out, kv)
		}
	}
	return out
}

// mustRun runs imctl and fails the test unless it exits 0.
func (d *deployment) mustRun(args ...string) string {
	d.t.Helper()
	r := d.run(args...)
	if r.code != 0 {
		d.t.Fatalf("imctl %v: %s", args, r)
	}
	return r.stdout
}

// proc is an imctl process that keeps running (events, listen), with its
// stdout as a stream of lines.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	exited chan struct{}
	mu     sync.Mutex
	stderr bytes.Buffer
}

func (p *proc) Write(b []byte) (int, error) { // stderr
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.Write(b)
}

func (d *deployment) start(args ...string) *proc {
	d.t.Helper()
	p := &proc{t: d.t, lines: make(chan string, 1000), exited: make(chan struct{})}
	p.cmd = exec.Command(imctlBin, append([]string{"-redis-url", d.redis.URL()}, args...)...)
	p.cmd.Env = cleanEnv()
	p.cmd.Stderr = p
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	d.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// next returns the next line of output, failing if none comes in time or
// the process ends first.
func (p *proc) next() string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("imctl %v ended without the expected line; stderr:\n%s", p.cmd.Args, p.errText())
		}
		return l
	case <-time.After(15 * time.Second):
		p.t.Fatalf("imctl %v printed no line within 15s; stderr:\n%s", p.cmd.Args, p.errText())
	}
	return ""
}

// until returns the first line containing s, skipping others.
func (p *proc) until(s string) string {
	p.t.Helper()
	for {
		if l := p.next(); strings.Contains(l, s) {
			return l
		}
	}
}

func (p *proc) errText() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

func (p *proc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// exitCode waits for the process to end (its output read to the end) and
// returns its exit code.
func (p *proc) exitCode() int {
	p.t.Helper()
	go func() {
		for range p.lines { // drain what is left so that the reader can finish
		}
	}()
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("imctl %v did not exit within 20s; stderr:\n%s", p.cmd.Args, p.errText())
	}
	return p.cmd.ProcessState.ExitCode()
}

// wsClient is a browser stand-in: a real WebSocket whose frames are read
// by a goroutine.
type wsClient struct {
	id     string
	conn   *websocket.Conn
	frames chan string
	done   chan struct{}
	err    error // set before done closes
}

// connect opens a socket for id and waits until it is online.
func (d *deployment) connect(id string) *wsClient {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := d.im.PrevConnectServer(ctx, id, `{"device":"test"}`)
	if err != nil {
		d.t.Fatal(err)
	}
	conn, _, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		d.t.Fatalf("dial %s: %v", id, err)
	}
	w := &wsClient{id: id, conn: conn, frames: make(chan string, 100), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				w.err = err
				return
			}
			if strings.HasPrefix(string(b), `{"type":"recovered"`) {
				continue // the node's "you are live" frame, not a message
			}
			w.frames <- string(b)
		}
	}()
	d.t.Cleanup(func() {
		conn.CloseNow()
		<-w.done
	})
	d.waitOnline(id, true)
	return w
}

func (d *deployment) waitOnline(id string, want bool) {
	d.t.Helper()
	waitFor(d.t, 10*time.Second, func() error {
		on, err := d.im.HasOnline(context.Background(), id)
		if err != nil || on != want {
			return fmt.Errorf("%s online = %v (%v), want %v", id, on, err, want)
		}
		return nil
	})
}

// frame waits for the next frame.
func (w *wsClient) frame(t testing.TB) string {
	t.Helper()
	select {
	case f := <-w.frames:
		return f
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no frame within 10s", w.id)
	}
	return ""
}

// closeCode waits until the node closes the socket and returns the code.
func (w *wsClient) closeCode(t testing.TB) websocket.StatusCode {
	t.Helper()
	select {
	case <-w.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: not closed within 15s", w.id)
	}
	return websocket.CloseStatus(w.err)
}

// ownedBy returns a clientId with prefix that hashes to node.
func (d *deployment) ownedBy(node, prefix string) string {
	d.t.Helper()
	for i := range 10000 {
		if id := fmt.Sprintf("%s-%d", prefix, i); d.im.Owner(id) == node {
			return id
		}
	}
	d.t.Fatalf("no clientId owned by %s", node)
	return ""
}
