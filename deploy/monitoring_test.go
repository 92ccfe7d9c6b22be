package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/imbroker/imbroker/internal/testnode"
)

const (
	monitoringDir = "monitoring"
	rulesFile     = "imserver-rules.yml"
	rulesTestFile = "imserver-rules.test.yml"
	dashboardFile = "grafana-imserver.json"
)

// promtool runs promtool in dir. A missing promtool fails the test: it is
// a required dependency (scripts/test.sh installs Debian's prometheus).
func promtool(t *testing.T, dir string, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		t.Fatalf("promtool not found (install the prometheus package): %v", err)
	}
	cmd := exec.Command("promtool", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	docs := decodeAll[ruleFile](t, filepath.Join(monitoringDir, rulesFile))
	if len(docs) != 1 || len(docs[0].Groups) == 0 {
		t.Fatalf("%s: want one document with rule groups", rulesFile)
	}
	return docs[0]
}

// TestAlertRules checks and unit-tests the rules with promtool, and that
// every alert is complete and tested both firing and silent.
func TestAlertRules(t *testing.T) {
	promtool(t, monitoringDir, "check", "rules", rulesFile)
	promtool(t, monitoringDir, "test", "rules", rulesTestFile)

	tests := decodeAll[struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}](t, filepath.Join(monitoringDir, rulesTestFile))
	if len(tests) != 1 || !slices.Equal(tests[0].RuleFiles, []string{rulesFile}) {
		t.Fatalf("%s must test %s", rulesTestFile, rulesFile)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, tc := range tests[0].Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	documented := alertTable(t)
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			if doc, ok := documented[r.Alert]; !ok {
				t.Errorf("%s is not in the alert table of docs/operations.md", r.Alert)
			} else if want := [3]string{r.Expr, r.For, r.Labels["severity"]}; doc != want {
				t.Errorf("docs/operations.md says %s is %q, the rule is %q", r.Alert, doc, want)
			}
			delete(documented, r.Alert)
			if r.Alert == "" {
				t.Errorf("group %s: a rule without an alert name (recording rules belong elsewhere)", g.Name)
				continue
			}
			if _, err := time.ParseDuration(r.For); err != nil {
				t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", r.Alert, s)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: needs a summary and a description", r.Alert)
			}
			if !fires[r.Alert] || !silent[r.Alert] {
				t.Errorf("%s: %s needs a case where it fires (%v) and one where it does not (%v)", r.Alert, rulesTestFile, fires[r.Alert], silent[r.Alert])
			}
		}
	}
	for name := range documented {
		t.Errorf("docs/operations.md documents %s, which is no rule", name)
	}
}

// alertTable reads the alert table of docs/operations.md ("What to alert
// on"): expression, for and severity by alert name.
func alertTable(t *testing.T) map[string][3]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## What to alert on\n")
	if !ok {
		t.Fatal(`docs/operations.md has no "What to alert on" section`)
	}
	section, _, _ = strings.Cut(section, "\n#")
	out := map[string][3]string{}
	for _, line := range strings.Split(section, "\n") {
		// A | inside a table cell is written \|.
		cells := strings.Split(strings.ReplaceAll(line, `\|`, "\x00"), "|")
		if len(cells) != 7 || !strings.HasPrefix(strings.TrimSpace(cells[1]), "`Imserver") {
			continue
		}
		cell := func(i int) string {
			return strings.Trim(strings.ReplaceAll(strings.TrimSpace(cells[i]), "\x00", "|"), "`")
		}
		out[cell(1)] = [3]string{cell(2), cell(3), cell(4)}
	}
	if len(out) == 0 {
		t.Fatal("no alerts found in the table of docs/operations.md")
	}
	return out
}

type dashboard struct {
	UID        string `json:"uid"`
	Title      string `json:"title"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"` // a string, or {"query": ...}
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource map[string]any `json:"datasource"`
	GridPos    map[string]int `json:"gridPos"`
	Targets    []struct {
		RefID      string         `json:"refId"`
		Expr       string         `json:"expr"`
		Datasource map[string]any `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(monitoringDir, dashboardFile))
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// panels returns every panel that is not a row, rows' children included.
func (d dashboard) panels() []panel {
	var out []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			out = append(out, p)
		}
	}
	walk(d.Panels)
	return out
}

// exprs returns every PromQL expression of the dashboard's panels.
func (d dashboard) exprs() []string {
	var out []string
	for _, p := range d.panels() {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	return out
}

// variableQueries returns the queries of the dashboard's query variables
// (Grafana's label_values(metric, label)).
func (d dashboard) variableQueries() []string {
	var out []string
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		switch q := v.Query.(type) {
		case string:
			out = append(out, q)
		case map[string]any:
			out = append(out, fmt.Sprint(q["query"]))
		}
	}
	return out
}

var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$job", ".*", "$instance", ".*")

// TestDashboard checks the dashboard's structure (the variables, a target
// on every panel, all through the datasource variable and filtered by the
// node variable) and has promtool parse every expression, as recording
// rules with Grafana's variables filled in.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["instance"] != "query" {
		t.Errorf("want a datasource variable $datasource and a query variable $instance, got %v", vars)
	}
	ids := map[int]bool{}
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for _, p := range d.panels() {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if len(p.GridPos) == 0 {
			t.Errorf("panel %q has no gridPos", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no target", p.Title)
		}
		if p.Datasource["uid"] != "${datasource}" {
			t.Errorf("panel %q: datasource %v, want the $datasource variable", p.Title, p.Datasource)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" || tg.Datasource["uid"] != "${datasource}" {
				t.Errorf("panel %q: target %+v needs an expr, a refId and the $datasource variable", p.Title, tg)
			}
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q: %s ignores the node variable", p.Title, tg.Expr)
			}
			expr, _ := json.Marshal(grafanaVars.Replace(tg.Expr)) // a JSON string is a YAML scalar
			fmt.Fprintf(&rules, "      - record: dashboard:panel_%d_%s\n        expr: %s\n", p.ID, tg.RefID, expr)
		}
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "dashboard-rules.yml"), []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	promtool(t, dir, "check", "rules", "dashboard-rules.yml")
}

var (
	stringLiteral = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	// Metric names as the node exports them: its own, and the Go and
	// process collectors' that the dashboard and the rules use.
	metricName = regexp.MustCompile(`\b(?:im|go|process)_[a-zA-Z0-9_:]*`)
)

// metricNames returns the node's metric names an expression uses, read
// loosely: identifiers with the node's prefixes, outside string literals.
func metricNames(expr string) []string {
	return metricName.FindAllString(stringLiteral.ReplaceAllString(expr, `""`), -1)
}

// exposition reads a Prometheus text exposition: the names of the
// samples present and the type of each metric family.
func exposition(text string) (samples map[string]bool, types map[string]string) {
	samples, types = map[string]bool{}, map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			types[f[2]] = f[3]
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		samples[name] = true
	}
	return samples, types
}

// TestMonitoredMetricsExist starts a node as the StatefulSet configures
// it, makes it produce its labelled series, and checks that every metric
// the dashboard and the alert rules use is on its /metrics, so that a
// renamed metric fails here rather than in a silent panel or alert.
func TestMonitoredMetricsExist(t *testing.T) {
	used := map[string][]string{} // metric name -> where
	d := loadDashboard(t)
	for _, e := range append(d.exprs(), d.variableQueries()...) {
		for _, n := range metricNames(e) {
			used[n] = append(used[n], dashboardFile)
		}
	}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			for _, n := range metricNames(r.Expr) {
				used[n] = append(used[n], rulesFile+" "+r.Alert)
			}
		}
	}
	for _, want := range []string{"im_delivery_latency_seconds_bucket", "im_build_info", "im_ready", "im_refusals_total"} {
		if used[want] == nil {
			t.Fatalf("the name extraction found no %s; it is broken", want)
		}
	}

	n := startManifestNode(t)
	n.exercise(t)
	testnode.WaitFor(t, 30*time.Second, func() error {
		_, body := get(t, n.adminURL+"/metrics")
		samples, types := exposition(body)
		var missing []string
		for name, where := range used {
			family := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, ok := strings.CutSuffix(name, suffix); ok && types[base] == "histogram" {
					family = base
				}
			}
			if !samples[name] || types[family] == "" {
				missing = append(missing, fmt.Sprintf("%s (used in %s)", name, strings.Join(slices.Compact(where), ", ")))
			}
		}
		if len(missing) > 0 {
			slices.Sort(missing)
			return fmt.Errorf("not on the live node's /metrics:\n  %s", strings.Join(missing, "\n  "))
		}
		return nil
	})
}

// TestMetricNameExtraction pins the loose PromQL reading the check above
// relies on.
func TestMetricNameExtraction(t *testing.T) {
	got := metricNames(`histogram_quantile(0.99, sum by (le) (rate(im_delivery_latency_seconds_bucket{reason=~"im_not_a_metric|x"}[5m]))) / process_max_fds and on (instance) im_build_info`)
	want := []string{"im_delivery_latency_seconds_bucket", "process_max_fds", "im_build_info"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	samples, types := exposition("# HELP im_x_seconds x\n# TYPE im_x_seconds histogram\nim_x_seconds_bucket{le=\"+Inf\"} 0\nim_up 1\n")
	if !samples["im_x_seconds_bucket"] || !samples["im_up"] || samples["im_x_seconds"] || types["im_x_seconds"] != "histogram" {
		t.Fatalf("exposition: %v %v", samples, types)
	}
}
