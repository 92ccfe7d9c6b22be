package deploy

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imbroker/imbroker/imhelper"
	"github.com/imbroker/imbroker/imserver"
	"github.com/imbroker/imbroker/internal/redistest"
	"github.com/imbroker/imbroker/internal/testnode"
	"github.com/redis/rueidis"
	"gopkg.in/yaml.v3"
)

const (
	repoRoot    = ".."
	k8sDir      = "k8s"
	composeFile = "../docker-compose.yml"
	nodeImage   = "imbroker/imserver"
	// drainTimeoutDefault is cmd/imserver's -drain-timeout default.
	drainTimeoutDefault = 30 * time.Second
)

// imageDockerfiles maps each image the manifests and the compose file
// build to the Dockerfile that builds it (paths from the repository root).
var imageDockerfiles = map[string]string{
	nodeImage:                 "Dockerfile",
	"imbroker/webapi-example": "deploy/webapi-example.Dockerfile",
}

// decodeAll decodes every document of a (multi-document) YAML file.
func decodeAll[T any](t *testing.T, file string) []T {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var out []T
	for {
		var v T
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", file, len(out)+1, err)
		}
		out = append(out, v)
	}
}

// dockerfile is what a Dockerfile promises: the binary it builds (and from
// which package), its entrypoint, and the final image's exposed ports and
// environment.
type dockerfile struct {
	path       string
	buildDir   string // package directory of the go build, from the repository root
	binary     string // the output path of go build
	copiedTo   string // where the final stage puts it
	entrypoint []string
	expose     []int
	env        map[string]string
}

var (
	goBuildLine = regexp.MustCompile(`^(?:cd (\S+) && )?.*\bgo build\b.*-o (\S+) (\S+)$`)
	copyFrom    = regexp.MustCompile(`^--from=\S+ (\S+) (\S+)$`)
	mainPackage = regexp.MustCompile(`(?m)^package main$`)
)

func parseDockerfile(t *testing.T, rel string) dockerfile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatal(err)
	}
	d := dockerfile{path: rel, env: map[string]string{}}
	// An image may carry several binaries (imserver and imctl); the one the
	// ENTRYPOINT runs is the image's.
	builtFrom := map[string]string{}  // go build output → package dir
	copiedFrom := map[string]string{} // final-stage path → go build output
	// Continuation lines are joined first.
	for _, line := range strings.Split(strings.ReplaceAll(string(b), "\\\n", " "), "\n") {
		line = strings.TrimSpace(line)
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.Join(strings.Fields(rest), " ")
		switch instr {
		case "FROM":
			// Only the final stage's ENV and EXPOSE are the image's.
			d.env, d.expose = map[string]string{}, nil
		case "RUN":
			if m := goBuildLine.FindStringSubmatch(rest); m != nil {
				builtFrom[m[2]] = path.Join(m[1], m[3])
			}
		case "COPY":
			if m := copyFrom.FindStringSubmatch(rest); m != nil {
				if _, ok := builtFrom[m[1]]; !ok {
					t.Fatalf("%s: copies %s, which no go build writes", rel, m[1])
				}
				copiedFrom[m[2]] = m[1]
			}
		case "ENTRYPOINT":
			if err := yaml.Unmarshal([]byte(rest), &d.entrypoint); err != nil {
				t.Fatalf("%s: ENTRYPOINT %s: %v", rel, rest, err)
			}
		case "EXPOSE":
			for _, p := range strings.Fields(rest) {
				n, err := strconv.Atoi(p)
				if err != nil {
					t.Fatalf("%s: EXPOSE %s", rel, p)
				}
				d.expose = append(d.expose, n)
			}
		case "ENV":
			k, v, ok := strings.Cut(rest, "=")
			if !ok {
				t.Fatalf("%s: ENV %s: use the KEY=value form", rel, rest)
			}
			d.env[k] = v
		}
	}
	if len(d.entrypoint) == 1 && copiedFrom[d.entrypoint[0]] != "" {
		d.copiedTo = d.entrypoint[0]
		d.binary = copiedFrom[d.copiedTo]
		d.buildDir = builtFrom[d.binary]
	}
	if d.binary == "" || d.copiedTo == "" || len(d.entrypoint) != 1 || d.entrypoint[0] != d.copiedTo {
		t.Fatalf("%s: want a go build whose binary is copied into the final stage and is the ENTRYPOINT; got build %q, copy %q, entrypoint %q", rel, d.binary, d.copiedTo, d.entrypoint)
	}
	if len(d.expose) != 1 {
		t.Fatalf("%s: want one EXPOSEd port, got %v", rel, d.expose)
	}
	main, err := os.ReadFile(filepath.Join(repoRoot, d.buildDir, "main.go"))
	if err != nil || !mainPackage.Match(main) {
		t.Fatalf("%s builds %s, which has no main package (%v)", rel, d.buildDir, err)
	}
	return d
}

// dockerfileOf returns the Dockerfile that builds image (name:tag).
func dockerfileOf(t *testing.T, image string) (dockerfile, bool) {
	t.Helper()
	repo, _, _ := strings.Cut(image, ":")
	rel, ok := imageDockerfiles[repo]
	if !ok {
		return dockerfile{}, false
	}
	return parseDockerfile(t, rel), true
}

// hostPort returns the port of a host:port listen address.
func hostPort(t *testing.T, what, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%s: %q is not host:port: %v", what, addr, err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("%s: %q has no numeric port", what, addr)
	}
	return n
}

// mustURL parses a URL from a manifest.
func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		t.Fatalf("%q is not an absolute URL (%v)", s, err)
	}
	return u
}

// urlPort returns the port of u, or the scheme's default.
func urlPort(t *testing.T, u *url.URL) int {
	t.Helper()
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil {
			t.Fatalf("%s: bad port", u)
		}
		return n
	}
	switch u.Scheme {
	case "ws", "http":
		return 80
	case "wss", "https":
		return 443
	}
	t.Fatalf("%s: no port and an unknown scheme", u)
	return 0
}

// drainTimeout is the drain bound a node with env runs with.
func drainTimeout(t *testing.T, env map[string]string) time.Duration {
	t.Helper()
	v, ok := env["IM_DRAIN_TIMEOUT"]
	if !ok {
		return drainTimeoutDefault
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("IM_DRAIN_TIMEOUT=%q: %v", v, err)
	}
	return d
}

// originAllowed reports whether one of the node's IM_ORIGINS patterns
// matches host, as the node matches a browser's Origin.
func originAllowed(t *testing.T, origins, host string) bool {
	t.Helper()
	for _, p := range strings.Split(origins, ",") {
		ok, err := path.Match(strings.TrimSpace(p), strings.ToLower(host))
		if err != nil {
			t.Fatalf("IM_ORIGINS pattern %q: %v", p, err)
		}
		if ok {
			return true
		}
	}
	return false
}

// checkNodeEnv checks the environment of an imserver container (over
// its image's ENV): every IM_* name is one the node reads, the node
// accepts the configuration, and it listens where the image says. It
// returns the configuration and the WebSocket and admin ports. rc stands
// in for the Redis that IM_REDIS_URL names, which imserver.New would dial.
func checkNodeEnv(t *testing.T, where string, env map[string]string, img dockerfile, rc rueidis.Client) (cfg imserver.Config, wsPort, adminPort int) {
	t.Helper()
	accepted := acceptedEnv(t)
	merged := maps.Clone(img.env)
	maps.Copy(merged, env)
	for name := range merged {
		if strings.HasPrefix(name, "IM_") && !accepted[name] {
			t.Errorf("%s: %s is not a variable imserver reads (imserver -h lists them)", where, name)
		}
	}
	for name := range accepted {
		// Empty is the default, as if unset; it also clears what an
		// earlier call set.
		t.Setenv(name, merged[name])
	}
	cfg, err := imserver.ParseFlags(flag.NewFlagSet("imserver", flag.ContinueOnError), nil)
	if err != nil {
		t.Fatalf("%s: the environment does not configure a node: %v", where, err)
	}
	if _, err := imserver.New(cfg, rc, testnode.Quiet()); err != nil {
		t.Fatalf("%s: imserver.New refuses the configuration: %v", where, err)
	}
	wsPort = hostPort(t, where+": IM_LISTEN", cfg.Listen)
	if wsPort != img.expose[0] {
		t.Errorf("%s: the node listens on %d, %s EXPOSEs %d", where, wsPort, img.path, img.expose[0])
	}
	if cfg.AdminListen == "" {
		t.Fatalf("%s: no IM_ADMIN_LISTEN: health and metrics would share the public listener", where)
	}
	adminPort = hostPort(t, where+": IM_ADMIN_LISTEN", cfg.AdminListen)
	// The defaults (127.0.0.1, the container's hostname) are wrong in a
	// container (docs/configuration.md).
	if cfg.NodeID == "" || cfg.PublicURL == "" || env["IM_REDIS_URL"] == "" {
		t.Errorf("%s: set IM_NODE_ID, IM_PUBLIC_URL and IM_REDIS_URL", where)
	}
	return cfg, wsPort, adminPort
}

// testRedis starts a private redis-server and returns a client to it,
// closed after everything the test started on it.
func testRedis(t *testing.T) (*redistest.Server, rueidis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	rc, err := imhelper.DialRedis(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rc.Close)
	return srv, rc
}

var getenvCall = regexp.MustCompile(`getenv\("([A-Z0-9_]+)"\)`)

// checkExampleEnv checks that the example service reads every WEBAPI_*
// and IM_* variable its container sets (configFromEnv in its main.go).
func checkExampleEnv(t *testing.T, where string, env map[string]string) {
	t.Helper()
	src, err := os.ReadFile(filepath.Join(repoRoot, "webapi-example", "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	read := map[string]bool{}
	for _, m := range getenvCall.FindAllStringSubmatch(string(src), -1) {
		read[m[1]] = true
	}
	if !read["WEBAPI_ADDR"] {
		t.Fatalf("webapi-example/main.go reads no WEBAPI_ADDR; the check of its variables is broken (it read %v)", read)
	}
	for name := range env {
		if (strings.HasPrefix(name, "WEBAPI_") || strings.HasPrefix(name, "IM_")) && !read[name] {
			t.Errorf("%s: webapi-example does not read %s", where, name)
		}
	}
}
