package imserver_test

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/imbroker/imbroker/internal/freeport"
	"github.com/imbroker/imbroker/internal/redistest"
)

// TestExitCodes runs the imserver binary as an operator would: a
// configuration that cannot work exits 2 and says why; a Redis that cannot
// be reached exits 1 ("failed to start"); -h names every IM_* variable.
func TestExitCodes(t *testing.T) {
	bin := nodeBinary(t)
	run := func(env []string, args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	redis := redistest.Start(t)
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"-listen", "nonsense"}, "invalid listen address"},
		{nil, []string{"-node-id", "has space", "-redis-url", redis.URL()}, "invalid node id"},
		{nil, []string{"-redis-url", "nope://x"}, "invalid redis url"},
		{nil, []string{"-public-url", "http://x/ws"}, "must start with ws://"},
		{nil, []string{"-trusted-proxies", "10.0.0.0/8,proxy.internal"}, "invalid trusted proxy"},
		{[]string{"IM_PING_INTERVAL=soon"}, nil, "IM_PING_INTERVAL"},
		{nil, []string{"-no-such-flag"}, "flag provided but not defined"},
	} {
		code, out := run(tc.env, tc.args...)
		if code != 2 || !strings.Contains(out, tc.want) {
			t.Errorf("%v %v: exit %d, output %q; want exit 2 saying %q", tc.env, tc.args, code, out, tc.want)
		}
	}
	// A port nothing listens on: the node cannot reach Redis.
	if code, out := run(nil, "-listen", "127.0.0.1:0", "-redis-url", "redis://"+freeport.Addr(t)+"/0"); code != 1 || !strings.Contains(out, "failed to start") {
		t.Errorf("unreachable Redis: exit %d, output %q; want exit 1, failed to start", code, out)
	}
	_, help := run(nil, "-h")
	for _, name := range []string{"IM_LISTEN", "IM_REDIS_URL", "IM_ORIGINS", "IM_MAX_CONNS_PER_CLIENT", "IM_REDIS_TIMEOUT", "IM_DRAIN_TIMEOUT"} {
		if !strings.Contains(help, "("+name+")") {
			t.Errorf("-h does not name %s:\n%s", name, help)
		}
	}
}

// TestVersion: the binary says which build it is, on -version, in its
// startup log and as im_build_info; im_ready follows /readyz. A build from
// this checkout names the commit it was built from.
func TestVersion(t *testing.T) {
	bin := nodeBinary(t)
	out, err := exec.Command(bin, "-version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "imserver ") {
		t.Fatalf("-version: %v, %q", err, out)
	}
	head, gitErr := exec.Command("git", "rev-parse", "HEAD").Output()
	rev := strings.TrimSpace(string(head))
	if gitErr == nil && !strings.Contains(string(out), rev[:12]) {
		t.Errorf("-version %q does not name the checkout's commit %s", out, rev[:12])
	}

	c := startProcCluster(t)
	p := c.startProc("n1")
	c.waitProcViews(p)
	if !strings.Contains(p.logText(), `"version":"`+strings.TrimPrefix(strings.TrimSpace(string(out)), "imserver ")) {
		t.Errorf("startup log does not carry the version %q:\n%s", out, p.logText())
	}
	_, body := getJSON(t, p.admin+"/metrics")
	if !strings.Contains(body, `im_build_info{goversion="go`) || gitErr == nil && !strings.Contains(body, `revision="`+rev+`"`) {
		t.Errorf("no im_build_info with the build's labels in /metrics:\n%s", body)
	}
	if v := metricValue(body, "im_ready"); v != 1 {
		t.Errorf("im_ready = %v on a ready node, want 1", v)
	}
}
