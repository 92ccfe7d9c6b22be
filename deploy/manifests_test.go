package deploy

import (
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/rueidis"
)

// object is the part of a Kubernetes object these checks read; the fields
// of every kind used here share one struct.
type object struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Metadata   metadata `yaml:"metadata"`
	Spec       struct {
		Replicas    *int           `yaml:"replicas"`
		ServiceName string         `yaml:"serviceName"`
		ClusterIP   string         `yaml:"clusterIP"`
		Selector    map[string]any `yaml:"selector"`
		Ports       []servicePort  `yaml:"ports"`
		Template    struct {
			Metadata metadata `yaml:"metadata"`
			Spec     podSpec  `yaml:"spec"`
		} `yaml:"template"`
		MaxUnavailable any           `yaml:"maxUnavailable"`
		MinAvailable   any           `yaml:"minAvailable"`
		TLS            []ingressTLS  `yaml:"tls"`
		Rules          []ingressRule `yaml:"rules"`
	} `yaml:"spec"`
}

type metadata struct {
	Name        string            `yaml:"name"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int        `yaml:"terminationGracePeriodSeconds"`
	Containers                    []container `yaml:"containers"`
}

type container struct {
	Name           string          `yaml:"name"`
	Image          string          `yaml:"image"`
	Command        []string        `yaml:"command"`
	Env            []envVar        `yaml:"env"`
	Ports          []containerPort `yaml:"ports"`
	ReadinessProbe *probe          `yaml:"readinessProbe"`
	LivenessProbe  *probe          `yaml:"livenessProbe"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		FieldRef *struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
		SecretKeyRef *struct {
			Name     string `yaml:"name"`
			Key      string `yaml:"key"`
			Optional bool   `yaml:"optional"`
		} `yaml:"secretKeyRef"`
	} `yaml:"valueFrom"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"` // a number or a container port's name
	} `yaml:"httpGet"`
	Exec *struct {
		Command []string `yaml:"command"`
	} `yaml:"exec"`
}

type servicePort struct {
	Name       string `yaml:"name"`
	Port       int    `yaml:"port"`
	TargetPort string `yaml:"targetPort"`
}

type ingressTLS struct {
	Hosts      []string `yaml:"hosts"`
	SecretName string   `yaml:"secretName"`
}

type ingressRule struct {
	Host string `yaml:"host"`
	HTTP struct {
		Paths []struct {
			Path     string `yaml:"path"`
			PathType string `yaml:"pathType"`
			Backend  struct {
				Service struct {
					Name string `yaml:"name"`
					Port struct {
						Name   string `yaml:"name"`
						Number int    `yaml:"number"`
					} `yaml:"port"`
				} `yaml:"service"`
			} `yaml:"backend"`
		} `yaml:"paths"`
	} `yaml:"http"`
}

// manifests are the objects of deploy/k8s, read through the file list of
// its kustomization.yaml (which must name every file there).
type manifests struct{ objects []object }

func loadManifests(t *testing.T) *manifests {
	t.Helper()
	kust := decodeAll[struct {
		Namespace string   `yaml:"namespace"`
		Resources []string `yaml:"resources"`
	}](t, filepath.Join(k8sDir, "kustomization.yaml"))
	if len(kust) != 1 || kust[0].Namespace == "" {
		t.Fatalf("kustomization.yaml: want one document with a namespace, got %+v", kust)
	}
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var onDisk []string
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" {
			onDisk = append(onDisk, b)
		}
	}
	listed := slices.Sorted(slices.Values(kust[0].Resources))
	if !slices.Equal(listed, onDisk) {
		t.Fatalf("kustomization.yaml lists %v, deploy/k8s holds %v", listed, onDisk)
	}
	m := &manifests{}
	seen := map[string]bool{}
	for _, f := range listed {
		for _, o := range decodeAll[object](t, filepath.Join(k8sDir, f)) {
			if o.APIVersion == "" || o.Kind == "" || o.Metadata.Name == "" {
				t.Fatalf("%s: an object without apiVersion, kind or name: %+v", f, o)
			}
			key := o.Kind + "/" + o.Metadata.Name
			if seen[key] {
				t.Fatalf("%s: %s defined twice", f, key)
			}
			seen[key] = true
			m.objects = append(m.objects, o)
		}
	}
	return m
}

func (m *manifests) ofKind(kinds ...string) []object {
	var out []object
	for _, o := range m.objects {
		if slices.Contains(kinds, o.Kind) {
			out = append(out, o)
		}
	}
	return out
}

func (m *manifests) get(t *testing.T, kind, name string) object {
	t.Helper()
	for _, o := range m.ofKind(kind) {
		if o.Metadata.Name == name {
			return o
		}
	}
	t.Fatalf("no %s %q in deploy/k8s", kind, name)
	return object{}
}

// labelSelector returns the labels a selector requires: a Service's map,
// or the matchLabels of a workload's or a PodDisruptionBudget's selector.
func labelSelector(t *testing.T, o object) map[string]string {
	t.Helper()
	sel := o.Spec.Selector
	if ml, ok := sel["matchLabels"]; ok {
		m, ok := ml.(map[string]any)
		if !ok || len(sel) != 1 {
			t.Fatalf("%s %s: only matchLabels selectors are checked here", o.Kind, o.Metadata.Name)
		}
		sel = m
	}
	out := map[string]string{}
	for k, v := range sel {
		out[k] = fmt.Sprint(v)
	}
	if len(out) == 0 {
		t.Fatalf("%s %s has an empty selector", o.Kind, o.Metadata.Name)
	}
	return out
}

// pod is one pod a workload runs: a StatefulSet's pod has its name (and
// the pod-name label the StatefulSet controller adds).
type pod struct {
	name     string // "" for a Deployment's pods
	owner    object
	labels   map[string]string
	spec     podSpec
	metadata metadata
}

func (m *manifests) pods(t *testing.T) []pod {
	t.Helper()
	var out []pod
	for _, w := range m.ofKind("Deployment", "StatefulSet") {
		tmpl := w.Spec.Template
		for k, v := range labelSelector(t, w) {
			if tmpl.Metadata.Labels[k] != v {
				t.Fatalf("%s %s: selector %s=%s does not match its pod template's labels %v", w.Kind, w.Metadata.Name, k, v, tmpl.Metadata.Labels)
			}
		}
		if w.Kind == "Deployment" {
			out = append(out, pod{owner: w, labels: tmpl.Metadata.Labels, spec: tmpl.Spec, metadata: tmpl.Metadata})
			continue
		}
		if w.Spec.Replicas == nil || *w.Spec.Replicas < 1 {
			t.Fatalf("StatefulSet %s: replicas must be set", w.Metadata.Name)
		}
		for i := range *w.Spec.Replicas {
			name := fmt.Sprintf("%s-%d", w.Metadata.Name, i)
			labels := map[string]string{"statefulset.kubernetes.io/pod-name": name}
			for k, v := range tmpl.Metadata.Labels {
				labels[k] = v
			}
			out = append(out, pod{name: name, owner: w, labels: labels, spec: tmpl.Spec, metadata: tmpl.Metadata})
		}
	}
	return out
}

// selected returns the pods whose labels satisfy sel.
func selected(pods []pod, sel map[string]string) []pod {
	var out []pod
	for _, p := range pods {
		ok := true
		for k, v := range sel {
			ok = ok && p.labels[k] == v
		}
		if ok {
			out = append(out, p)
		}
	}
	return out
}

// portOf resolves a probe's or Service's target port (a number or a name)
// to a container port of c, or 0.
func portOf(c container, ref string) int {
	for _, p := range c.Ports {
		if p.Name == ref || strconv.Itoa(p.ContainerPort) == ref {
			return p.ContainerPort
		}
	}
	return 0
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expandEnv returns the container's environment as a pod named podName
// sees it: fieldRef metadata.name is the pod name, and $(VAR) references
// expand the way the kubelet does, only to variables defined earlier in
// the list (a later or unknown one would be left in the value verbatim).
// Secret references are left out: their values are not in the manifests.
func expandEnv(t *testing.T, c container, podName string) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, e := range c.Env {
		v := e.Value
		switch {
		case e.ValueFrom == nil:
		case e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name":
			if podName == "" {
				t.Fatalf("container %s: %s takes the pod name, which only a StatefulSet's pods have stable", c.Name, e.Name)
			}
			v = podName
		case e.ValueFrom.SecretKeyRef != nil:
			continue
		default:
			t.Fatalf("container %s: %s: unchecked valueFrom", c.Name, e.Name)
		}
		for _, ref := range envRef.FindAllStringSubmatch(v, -1) {
			val, ok := env[ref[1]]
			if !ok {
				t.Fatalf("container %s: %s refers to $(%s), which is not defined before it", c.Name, e.Name, ref[1])
			}
			v = strings.ReplaceAll(v, ref[0], val)
		}
		if _, dup := env[e.Name]; dup {
			t.Fatalf("container %s: %s set twice", c.Name, e.Name)
		}
		env[e.Name] = v
	}
	return env
}

// checkContainers checks the containers of one workload (on its first
// pod) and reports whether it runs imserver nodes.
func checkContainers(t *testing.T, p pod, rc rueidis.Client) (runsNodes bool) {
	for _, c := range p.spec.Containers {
		where := fmt.Sprintf("%s %s container %s", p.owner.Kind, p.owner.Metadata.Name, c.Name)
		env := expandEnv(t, c, p.name)
		for _, pr := range []*probe{c.ReadinessProbe, c.LivenessProbe} {
			if pr == nil {
				t.Errorf("%s: needs a readiness and a liveness probe", where)
			} else if pr.HTTPGet != nil && portOf(c, pr.HTTPGet.Port) == 0 {
				t.Errorf("%s: probe port %q is none of its container ports", where, pr.HTTPGet.Port)
			}
		}
		img, built := dockerfileOf(t, c.Image)
		if !built {
			continue
		}
		if len(c.Command) > 0 && !slices.Equal(c.Command, img.entrypoint) {
			t.Errorf("%s: command %v replaces the image's entrypoint %v", where, c.Command, img.entrypoint)
		}
		if len(c.Ports) == 0 || c.Ports[0].ContainerPort != img.expose[0] {
			t.Errorf("%s: first container port %v, but %s EXPOSEs %d", where, c.Ports, img.path, img.expose[0])
		}
		if img.path != imageDockerfiles[nodeImage] {
			checkExampleEnv(t, where, env)
			continue
		}
		if p.name == "" {
			t.Fatalf("%s: imserver nodes need stable names: run them in a StatefulSet", where)
		}
		if len(p.spec.Containers) != 1 {
			t.Fatalf("%s: the node's pod should hold the node alone", where)
		}
		runsNodes = true
		_, wsPort, adminPort := checkNodeEnv(t, where, env, img, rc)
		if portOf(c, "ws") != wsPort || portOf(c, "admin") != adminPort {
			t.Errorf("%s: container ports %v, want ws=%d (IM_LISTEN) and admin=%d (IM_ADMIN_LISTEN)", where, c.Ports, wsPort, adminPort)
		}
		for name, pr := range map[string]*probe{"/readyz": c.ReadinessProbe, "/healthz": c.LivenessProbe} {
			if pr == nil || pr.HTTPGet == nil || pr.HTTPGet.Path != name || portOf(c, pr.HTTPGet.Port) != adminPort {
				t.Errorf("%s: want an HTTP probe of %s on the admin port %d", where, name, adminPort)
			}
		}
		if a := p.metadata.Annotations["prometheus.io/port"]; a != strconv.Itoa(adminPort) {
			t.Errorf("%s: prometheus.io/port %q, the metrics are on %d", where, a, adminPort)
		}
		grace, d := p.spec.TerminationGracePeriodSeconds, drainTimeout(t, env)
		if grace == nil || time.Duration(*grace)*time.Second <= d {
			t.Errorf("%s: terminationGracePeriodSeconds must be set and exceed the drain timeout %v", where, d)
		}
	}
	return runsNodes
}

func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)
	pods := m.pods(t)
	_, rc := testRedis(t)
	var nodePods []pod
	runsNodes := map[string]bool{} // by workload, once checked
	for _, p := range pods {
		isNode, checked := runsNodes[p.owner.Metadata.Name]
		if !checked {
			isNode = checkContainers(t, p, rc)
			runsNodes[p.owner.Metadata.Name] = isNode
		}
		if isNode {
			nodePods = append(nodePods, p)
		}
	}
	if len(nodePods) < 2 {
		t.Fatalf("want at least two imserver pods, got %d", len(nodePods))
	}

	// Every Service selects pods, and its target ports are theirs.
	for _, s := range m.ofKind("Service") {
		sel := selected(pods, labelSelector(t, s))
		if len(sel) == 0 {
			t.Errorf("Service %s selects no pod", s.Metadata.Name)
			continue
		}
		for _, sp := range s.Spec.Ports {
			for _, p := range sel {
				if portOf(p.spec.Containers[0], sp.TargetPort) == 0 {
					t.Errorf("Service %s port %s: targetPort %q is not a port of %s", s.Metadata.Name, sp.Name, sp.TargetPort, p.owner.Metadata.Name)
				}
			}
		}
	}
	guarded := false
	for _, pdb := range m.ofKind("PodDisruptionBudget") {
		if len(selected(pods, labelSelector(t, pdb))) == 0 {
			t.Errorf("PodDisruptionBudget %s selects no pod", pdb.Metadata.Name)
		}
		if (pdb.Spec.MaxUnavailable == nil) == (pdb.Spec.MinAvailable == nil) {
			t.Errorf("PodDisruptionBudget %s: set one of maxUnavailable and minAvailable", pdb.Metadata.Name)
		}
		guarded = guarded || len(selected(nodePods, labelSelector(t, pdb))) == len(nodePods)
	}
	if !guarded {
		t.Errorf("want a PodDisruptionBudget over every imserver pod")
	}
	sts := nodePods[0].owner
	if hs := m.get(t, "Service", sts.Spec.ServiceName); hs.Spec.ClusterIP != "None" {
		t.Errorf("StatefulSet %s: serviceName %s must be a headless Service", sts.Metadata.Name, hs.Metadata.Name)
	}

	// Browsers must reach each node at its own public URL: the Ingress rule
	// for the URL's host and path must lead to a Service that selects that
	// pod alone, on the node's WebSocket port.
	ingresses := m.ofKind("Ingress")
	for _, p := range nodePods {
		c := p.spec.Containers[0]
		env := expandEnv(t, c, p.name)
		u := mustURL(t, env["IM_PUBLIC_URL"])
		if u.Scheme != "wss" {
			t.Errorf("pod %s: IM_PUBLIC_URL %s: browsers on an https page need wss://", p.name, u)
		}
		svcName, port := ingressBackend(ingresses, u.Hostname(), u.Path)
		if svcName == "" {
			t.Errorf("pod %s: no Ingress rule with TLS routes %s%s", p.name, u.Hostname(), u.Path)
			continue
		}
		svc := m.get(t, "Service", svcName)
		if sel := selected(pods, labelSelector(t, svc)); len(sel) != 1 || sel[0].name != p.name {
			t.Errorf("pod %s: its public URL leads to Service %s, which selects %d pods, not that one alone", p.name, svcName, len(sel))
		}
		if target := servicePortTarget(svc, port); portOf(c, target) != portOf(c, "ws") {
			t.Errorf("pod %s: Service %s port %s leads to %q, not the WebSocket port", p.name, svcName, port, target)
		}
	}

	// The example's page is served under a host the nodes accept as Origin.
	ex := m.get(t, "Deployment", "webapi-example")
	exEnv := expandEnv(t, ex.Spec.Template.Spec.Containers[0], "")
	if exEnv["IM_REDIS_URL"] != expandEnv(t, nodePods[0].spec.Containers[0], nodePods[0].name)["IM_REDIS_URL"] {
		t.Errorf("the example and the nodes use different Redis URLs")
	}
	exImg, _ := dockerfileOf(t, ex.Spec.Template.Spec.Containers[0].Image)
	if hostPort(t, "webapi-example WEBAPI_ADDR", exEnv["WEBAPI_ADDR"]) != exImg.expose[0] {
		t.Errorf("webapi-example listens on %s, its image EXPOSEs %d", exEnv["WEBAPI_ADDR"], exImg.expose[0])
	}
	pageHost := ""
	for _, ing := range ingresses {
		for _, r := range ing.Spec.Rules {
			for _, hp := range r.HTTP.Paths {
				if hp.Backend.Service.Name == "webapi-example" {
					pageHost = r.Host
				}
			}
		}
	}
	if pageHost == "" {
		t.Fatal("no Ingress rule serves the example's page")
	}
	for _, p := range nodePods {
		if o := expandEnv(t, p.spec.Containers[0], p.name)["IM_ORIGINS"]; !originAllowed(t, o, pageHost) {
			t.Errorf("pod %s: IM_ORIGINS %q refuses the page's origin %s", p.name, o, pageHost)
		}
	}
	redisURL := mustURL(t, exEnv["IM_REDIS_URL"])
	if rs := m.get(t, "Service", redisURL.Hostname()); servicePortTarget(rs, strconv.Itoa(urlPort(t, redisURL))) == "" {
		t.Errorf("IM_REDIS_URL %s: Service %s has no such port", redisURL, rs.Metadata.Name)
	}
}

// ingressBackend returns the Service (and its port, by name or number)
// that an Ingress with TLS for host routes host and path to.
func ingressBackend(ingresses []object, host, urlPath string) (svc, port string) {
	for _, ing := range ingresses {
		tls := false
		for _, s := range ing.Spec.TLS {
			tls = tls || slices.Contains(s.Hosts, host)
		}
		for _, r := range ing.Spec.Rules {
			if r.Host != host || !tls {
				continue
			}
			for _, hp := range r.HTTP.Paths {
				match := hp.Path == urlPath
				if hp.PathType == "Prefix" {
					match = urlPath == hp.Path || strings.HasPrefix(urlPath, strings.TrimSuffix(hp.Path, "/")+"/")
				}
				if match {
					p := hp.Backend.Service.Port.Name
					if p == "" {
						p = strconv.Itoa(hp.Backend.Service.Port.Number)
					}
					return hp.Backend.Service.Name, p
				}
			}
		}
	}
	return "", ""
}

// servicePortTarget returns the targetPort of svc's port named (or
// numbered) port, or "".
func servicePortTarget(svc object, port string) string {
	for _, sp := range svc.Spec.Ports {
		if sp.Name == port || strconv.Itoa(sp.Port) == port {
			if sp.TargetPort == "" {
				return strconv.Itoa(sp.Port)
			}
			return sp.TargetPort
		}
	}
	return ""
}
