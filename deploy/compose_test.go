package deploy

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// composeService is the part of a compose service these checks read.
type composeService struct {
	Image string `yaml:"image"`
	Build any    `yaml:"build"` // "." or {context, dockerfile}
	// Environment as a map; compose's list form (KEY=value) is not used.
	Environment     map[string]string `yaml:"environment"`
	Ports           []string          `yaml:"ports"`
	DependsOn       map[string]any    `yaml:"depends_on"`
	StopGracePeriod string            `yaml:"stop_grace_period"`
	Command         []string          `yaml:"command"`
	Entrypoint      []string          `yaml:"entrypoint"`
	published       map[int]int
}

func TestComposeFile(t *testing.T) {
	docs := decodeAll[struct {
		Services map[string]*composeService `yaml:"services"`
	}](t, composeFile)
	if len(docs) != 1 {
		t.Fatalf("docker-compose.yml: want one document, got %d", len(docs))
	}
	services := docs[0].Services
	_, rc := testRedis(t)
	k8sRedis := loadManifests(t).get(t, "Deployment", "redis").Spec.Template.Spec.Containers[0].Image
	var nodes []string
	nodeIDs, publicURLs := map[string]string{}, map[string]string{}
	for name, s := range services {
		for dep := range s.DependsOn {
			if services[dep] == nil {
				t.Errorf("service %s depends on %s, which does not exist", name, dep)
			}
		}
		s.published = publishedPorts(t, name, s.Ports)
		if s.Build == nil {
			if name == "redis" && s.Image != k8sRedis {
				t.Errorf("compose runs %s, deploy/k8s %s", s.Image, k8sRedis)
			}
			continue
		}
		img, ok := dockerfileOf(t, s.Image)
		if !ok {
			t.Fatalf("service %s builds image %q, which no Dockerfile here is known to build", name, s.Image)
		}
		if df := composeDockerfile(t, name, s.Build); df != img.path {
			t.Errorf("service %s builds %s from %s; that image comes from %s", name, s.Image, df, img.path)
		}
		if len(s.Entrypoint) > 0 || len(s.Command) > 0 {
			t.Errorf("service %s overrides the image's entrypoint or command", name)
		}
		if img.path != imageDockerfiles[nodeImage] {
			// The example service.
			checkExampleEnv(t, "compose service "+name, s.Environment)
			port := hostPort(t, name+" WEBAPI_ADDR", s.Environment["WEBAPI_ADDR"])
			if port != img.expose[0] || s.published[port] == 0 {
				t.Errorf("service %s listens on %d, EXPOSEs %d, publishes %v", name, port, img.expose[0], s.Ports)
			}
			continue
		}
		nodes = append(nodes, name)
		where := "compose service " + name
		_, wsPort, adminPort := checkNodeEnv(t, where, s.Environment, img, rc)
		if s.published[wsPort] == 0 || s.published[adminPort] == 0 {
			t.Errorf("%s publishes %v; want the ws port %d and the admin port %d", where, s.Ports, wsPort, adminPort)
		}
		u := mustURL(t, s.Environment["IM_PUBLIC_URL"])
		if h := u.Hostname(); h != "localhost" && h != "127.0.0.1" || urlPort(t, u) != s.published[wsPort] || u.Path != "/ws" {
			t.Errorf("%s: IM_PUBLIC_URL %s is not where the host publishes its WebSocket port (%d)", where, u, s.published[wsPort])
		}
		if other, dup := nodeIDs[s.Environment["IM_NODE_ID"]]; dup {
			t.Errorf("%s and %s share IM_NODE_ID", name, other)
		}
		if other, dup := publicURLs[u.String()]; dup {
			t.Errorf("%s and %s share IM_PUBLIC_URL", name, other)
		}
		nodeIDs[s.Environment["IM_NODE_ID"]], publicURLs[u.String()] = name, name
		grace, err := time.ParseDuration(s.StopGracePeriod)
		if d := drainTimeout(t, s.Environment); err != nil || grace <= d {
			t.Errorf("%s: stop_grace_period %q must exceed the drain timeout %v (the compose default is 10s)", where, s.StopGracePeriod, d)
		}
		redisURL := mustURL(t, s.Environment["IM_REDIS_URL"])
		if services[redisURL.Hostname()] == nil {
			t.Errorf("%s: IM_REDIS_URL names %s, which is no service", where, redisURL.Hostname())
		}
	}
	if len(nodes) < 2 {
		t.Fatalf("want two imserver services, got %v", nodes)
	}
	ex := services["webapi-example"]
	if ex == nil {
		t.Fatal("no webapi-example service")
	}
	pagePort := ex.published[hostPort(t, "webapi-example", ex.Environment["WEBAPI_ADDR"])]
	for _, n := range nodes {
		env := services[n].Environment
		if env["IM_REDIS_URL"] != ex.Environment["IM_REDIS_URL"] {
			t.Errorf("%s and webapi-example use different Redis URLs", n)
		}
		if !originAllowed(t, env["IM_ORIGINS"], fmt.Sprintf("localhost:%d", pagePort)) {
			t.Errorf("%s: IM_ORIGINS %q refuses the page at localhost:%d", n, env["IM_ORIGINS"], pagePort)
		}
	}
}

// publishedPorts maps each container port of a compose service to the host
// port it is published on ("host:container" or "ip:host:container").
func publishedPorts(t *testing.T, service string, ports []string) map[int]int {
	t.Helper()
	out := map[int]int{}
	for _, p := range ports {
		parts := strings.Split(p, ":")
		if len(parts) < 2 {
			t.Fatalf("service %s: port %q: publish it as host:container", service, p)
		}
		host, err1 := strconv.Atoi(parts[len(parts)-2])
		inner, err2 := strconv.Atoi(parts[len(parts)-1])
		if err1 != nil || err2 != nil {
			t.Fatalf("service %s: port %q", service, p)
		}
		out[inner] = host
	}
	return out
}

// composeDockerfile returns the Dockerfile (from the repository root) a
// compose build section uses.
func composeDockerfile(t *testing.T, service string, build any) string {
	t.Helper()
	ctx, df := "", "Dockerfile"
	switch b := build.(type) {
	case string:
		ctx = b
	case map[string]any:
		ctx, _ = b["context"].(string)
		if d, ok := b["dockerfile"].(string); ok {
			df = d
		}
	}
	if ctx != "." {
		t.Fatalf("service %s: build context %q; the Dockerfiles build from the repository root", service, ctx)
	}
	return df
}
