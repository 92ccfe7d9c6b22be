package imclient

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tool returns the path of a program the tests need. A missing one fails
// the test (it never skips): webapi-example/e2e/install.sh installs Node.js
// and npm, and scripts/test.sh runs it.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found; run webapi-example/e2e/install.sh", name)
	}
	return p
}

// run runs a command in dir and returns its combined output; a non-zero
// exit fails the test.
func run(t *testing.T, dir, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.Bytes())
	}
	return out.Bytes()
}

// TestNodeTests runs test/*.test.mjs with Node's built-in test runner, as
// `node --test` in this directory does.
func TestNodeTests(t *testing.T) {
	node := tool(t, "node")
	tests, err := filepath.Glob("test/*.test.mjs")
	if err != nil || len(tests) == 0 {
		t.Fatalf("no test/*.test.mjs files (%v)", err)
	}
	out := run(t, ".", node, append([]string{"--test", "--test-reporter=tap"}, tests...)...)
	pass := regexp.MustCompile(`(?m)^# pass (\d+)$`).FindSubmatch(out)
	if pass == nil {
		t.Fatalf("no pass count in the output:\n%s", out)
	}
	if n, _ := strconv.Atoi(string(pass[1])); n == 0 {
		t.Fatalf("node ran no test:\n%s", out)
	}
	t.Logf("node --test: %s tests passed", pass[1])
}

// packageJSON is the part of package.json the checks below read.
type packageJSON struct {
	Name         string                     `json:"name"`
	Version      string                     `json:"version"`
	Type         string                     `json:"type"`
	Private      bool                       `json:"private"`
	Main         string                     `json:"main"`
	Types        string                     `json:"types"`
	Exports      map[string]json.RawMessage `json:"exports"`
	Files        []string                   `json:"files"`
	Dependencies map[string]string          `json:"dependencies"`
}

func readPackageJSON(t *testing.T) packageJSON {
	t.Helper()
	raw, err := fs.ReadFile(FS(), "package.json")
	if err != nil {
		t.Fatal(err)
	}
	var p packageJSON
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatalf("package.json: %v", err)
	}
	return p
}

// embedded lists the files FS holds, sorted.
func embedded(t *testing.T) []string {
	t.Helper()
	var names []string
	err := fs.WalkDir(FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

// TestPackageJSON checks that every path package.json names is a file of
// the embedded package, so the Go package and an npm install ship the same
// thing, and the properties the README promises.
func TestPackageJSON(t *testing.T) {
	p := readPackageJSON(t)
	if p.Name != "imclient" || p.Type != "module" || !strings.HasPrefix(p.Version, "0.") || p.Private {
		t.Errorf("name %q type %q version %q private %v; want imclient, module, 0.x, not private", p.Name, p.Type, p.Version, p.Private)
	}
	if len(p.Dependencies) != 0 {
		t.Errorf("runtime dependencies %v; the client has none", p.Dependencies)
	}

	var root map[string]string
	if err := json.Unmarshal(p.Exports["."], &root); err != nil {
		t.Fatalf(`exports["."] is not a map of conditions: %v`, err)
	}
	if root["types"] == "" || root["default"] == "" {
		t.Fatalf(`exports["."] = %v, want "types" and "default" conditions`, root)
	}
	// Conditions match in the order written, and TypeScript wants "types"
	// before "default".
	if raw := string(p.Exports["."]); strings.Index(raw, `"types"`) > strings.Index(raw, `"default"`) {
		t.Errorf(`exports["."]: "types" must come before "default": %s`, raw)
	}
	if root["types"] != p.Types || root["default"] != p.Main {
		t.Errorf(`exports["."] %v disagrees with main %q / types %q`, root, p.Main, p.Types)
	}

	targets := []string{p.Main, p.Types}
	for key, raw := range p.Exports {
		var s string
		if json.Unmarshal(raw, &s) == nil {
			targets = append(targets, s)
		} else if key == "." {
			for _, v := range root {
				targets = append(targets, v)
			}
		} else {
			t.Errorf("exports[%q] = %s: only strings and the root conditions are checked", key, raw)
		}
	}
	slices.Sort(targets)
	for _, target := range slices.Compact(targets) {
		name, ok := strings.CutPrefix(target, "./")
		if !ok {
			t.Errorf("%q must start with ./", target)
			continue
		}
		if _, err := fs.Stat(FS(), name); err != nil {
			t.Errorf("package.json names %q, which is not embedded: %v", target, err)
		}
	}

	// npm always packs package.json; "files" lists the rest.
	published := append([]string{"package.json"}, p.Files...)
	slices.Sort(published)
	if got := embedded(t); !slices.Equal(got, published) {
		t.Errorf("embedded files %v, package.json publishes %v", got, published)
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(http.StripPrefix("/vendor/imclient", Handler()))
	defer srv.Close()
	want, err := os.ReadFile("imclient.js")
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.Get(srv.URL + "/vendor/imclient/imclient.js")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/javascript") || !bytes.Equal(body, want) {
		t.Fatalf("imclient.js: %d %q, %d bytes (want %d)", res.StatusCode, res.Header.Get("Content-Type"), len(body), len(want))
	}
	// What is not part of the package is not served.
	for _, p := range []string{"embed.go", "test/imclient.test.mjs"} {
		res, err := http.Get(srv.URL + "/vendor/imclient/" + p)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, res.StatusCode)
		}
	}
}

// TestPackInstallImport does what the README tells a user: npm pack, npm
// install of the tarball into a project, and an import by name in Node.
func TestPackInstallImport(t *testing.T) {
	node, npm := tool(t, "node"), tool(t, "npm")
	dir := t.TempDir()
	var packed []struct {
		Filename string `json:"filename"`
		Files    []struct {
			Path string `json:"path"`
		} `json:"files"`
	}
	out := run(t, ".", npm, "pack", "--json", "--pack-destination", dir)
	// npm may print notices before the JSON document.
	if i := bytes.IndexByte(out, '['); i < 0 || json.Unmarshal(out[i:], &packed) != nil || len(packed) != 1 {
		t.Fatalf("npm pack --json printed:\n%s", out)
	}
	var files []string
	for _, f := range packed[0].Files {
		files = append(files, f.Path)
	}
	slices.Sort(files)
	if want := embedded(t); !slices.Equal(files, want) {
		t.Errorf("npm pack ships %v, the Go package embeds %v", files, want)
	}

	app := filepath.Join(dir, "app")
	if err := os.Mkdir(app, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(app, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("package.json", `{"name": "app", "private": true, "type": "module"}`)
	write("check.mjs", `import { IMClient, CloseCodes } from 'imclient';
if (typeof IMClient !== 'function' || CloseCodes.FORCED_OFFLINE !== 4001) throw new Error('bad exports');
new IMClient({ getURL: async () => 'ws://127.0.0.1:1/ws' });
console.log('imported');
`)
	run(t, app, npm, "install", "--offline", "--no-audit", "--no-fund", path.Join("..", packed[0].Filename))
	if out := run(t, app, node, "check.mjs"); !bytes.Contains(out, []byte("imported")) {
		t.Fatalf("node check.mjs printed %q", out)
	}
}
