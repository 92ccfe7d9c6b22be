package imserver_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/freeport"
	"github.com/imbroker/imbroker/internal/testnode"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// nodeBinary builds cmd/imserver once per test run, so fault tests can kill
// real node processes.
func nodeBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "imserver-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "imserver")
		buildErr = testnode.BuildBinary(".", "./cmd/imserver", binPath)
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// nodeProc is an imserver running as a child process.
type nodeProc struct {
	id        string
	url       string // public ws URL
	admin     string // http://host:port of the admin listener
	cmd       *exec.Cmd
	exited    chan struct{}
	logs      *bytes.Buffer
	logsMu    *sync.Mutex
	waitError error
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// startProc starts a node process with the given extra flags and waits until
// it reports ready.
func (c *cluster) startProc(id string, extra ...string) *nodeProc {
	c.t.Helper()
	return c.startProcUnder(nil, id, extra...)
}

// startProcUnder is startProc with the node run under a wrapper command,
// such as prlimit for a lowered descriptor limit.
func (c *cluster) startProcUnder(wrapper []string, id string, extra ...string) *nodeProc {
	c.t.Helper()
	// Ports claimed until the test ends: one from Listen(":0") could be
	// taken by an outgoing connection before the process binds it.
	addr, admin := freeport.Addr(c.t), freeport.Addr(c.t)
	args := []string{"-listen", addr, "-admin-listen", admin, "-node-id", id, "-redis-url", c.url,
		"-lease-ttl", "5s", "-probe-interval", "500ms", "-move-window", "1s", "-drain-window", "500ms",
		"-connect-rate-per-source", "-1", // every test client dials from 127.0.0.1
		"-offline-grace", "-1s"} // tests of the grace set their own
	if c.prefix != "" {
		args = append(args, "-prefix", c.prefix)
	}
	args = append(args, extra...)
	p := &nodeProc{id: id, url: "ws://" + addr + "/ws", admin: "http://" + admin, exited: make(chan struct{}),
		logs: &bytes.Buffer{}, logsMu: &sync.Mutex{}}
	argv := append(append(append([]string(nil), wrapper...), nodeBinary(c.t)), args...)
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stderr = lockedWriter{p.logsMu, p.logs}
	if err := p.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { p.waitError = p.cmd.Wait(); close(p.exited) }()
	c.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.exited
		if c.t.Failed() {
			c.t.Logf("logs of %s:\n%s", id, p.logText())
		}
	})
	checkFor(c.t, 15*time.Second, func() error {
		if code, body := getJSON(c.t, p.admin+"/readyz"); code != 200 {
			return fmt.Errorf("%s /readyz: %d %s", id, code, body)
		}
		return nil
	})
	return p
}

func (p *nodeProc) logText() string {
	p.logsMu.Lock()
	defer p.logsMu.Unlock()
	return p.logs.String()
}

func (p *nodeProc) signal(sig syscall.Signal) { _ = p.cmd.Process.Signal(sig) }

// waitExit waits for the process to end and returns how long that took.
func (p *nodeProc) waitExit(t testing.TB, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case <-p.exited:
	case <-time.After(timeout):
		t.Fatalf("%s did not exit within %v", p.id, timeout)
	}
	return time.Since(start)
}

// metric reads one sample from the node's /metrics, 0 if absent.
func (p *nodeProc) metric(t testing.TB, name string) float64 {
	t.Helper()
	_, body := getJSON(t, p.admin+"/metrics")
	return metricValue(body, name)
}

func metricValue(body, name string) float64 {
	for _, line := range bytes.Split([]byte(body), []byte("\n")) {
		if bytes.HasPrefix(line, []byte(name+" ")) {
			v, _ := strconv.ParseFloat(string(bytes.TrimPrefix(line, []byte(name+" "))), 64)
			return v
		}
	}
	return 0
}

// procCluster starts redis and imhelper with no in-process nodes.
func startProcCluster(t testing.TB) *cluster {
	t.Helper()
	return startCluster(t, 0, nil)
}

// waitProcViews waits until imhelper and every given node process see
// exactly these processes as the live nodes.
func (c *cluster) waitProcViews(procs ...*nodeProc) {
	c.t.Helper()
	var ids []string
	for _, p := range procs {
		ids = append(ids, p.id)
	}
	c.waitHelperNodes(ids...)
	checkFor(c.t, 15*time.Second, func() error {
		for _, p := range procs {
			if n := p.metric(c.t, "im_nodes"); n != float64(len(procs)) {
				return fmt.Errorf("%s sees %v nodes, want %d", p.id, n, len(procs))
			}
		}
		return nil
	})
}

func (c *cluster) waitHelperNodes(want ...string) {
	c.t.Helper()
	checkFor(c.t, 10*time.Second, func() error {
		_ = c.helper.RefreshNodes(context.Background())
		if got := c.helper.Nodes(); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("imhelper sees %v, want %v", got, want)
		}
		return nil
	})
}

// sample is a snapshot of a node process' resource use.
type sample struct {
	goroutines, heap, rss, conns float64
}

func (p *nodeProc) sample(t testing.TB) sample {
	_, body := getJSON(t, p.admin+"/metrics")
	return sample{
		goroutines: metricValue(body, "go_goroutines"),
		heap:       metricValue(body, "go_memstats_heap_inuse_bytes"),
		rss:        metricValue(body, "process_resident_memory_bytes"),
		conns:      metricValue(body, "im_connections"),
	}
}
