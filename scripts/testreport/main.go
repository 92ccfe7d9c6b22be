// Command testreport turns `go test -json` into what a person watching the
// test command wants to see: one line per package as it finishes, the full
// output of every failing test, a line every 30 s naming the packages still
// running, and a summary at the end. scripts/test.sh pipes the suite through
// it.
//
// It exits 1 when any test or build failed, and, under CI=true, when any test
// was skipped: the project's rule is that CI never skips (a missing
// dependency fails), and this makes the rule hold for every test at once.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Elapsed    float64
	Output     string
	ImportPath string // build-output and build-fail events
}

type report struct {
	mu                          sync.Mutex
	out                         io.Writer
	started                     time.Time
	running                     map[string]time.Time        // package → when it started
	outputs                     map[string]*strings.Builder // package or package/test → output so far
	tests                       map[string]int              // package → tests passed
	passed, failedPkgs, noTests int
	failed, skipped             []string
	buildFailed                 bool
}

func newReport(out io.Writer) *report {
	return &report{out: out, started: time.Now(), running: map[string]time.Time{},
		outputs: map[string]*strings.Builder{}, tests: map[string]int{}}
}

func (r *report) handle(e event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := e.Package
	if e.Test != "" {
		key += "/" + e.Test
	}
	switch e.Action {
	case "build-output":
		fmt.Fprint(r.out, e.Output)
	case "build-fail":
		r.buildFailed = true
	case "start":
		r.running[e.Package] = time.Now()
	case "output":
		b := r.outputs[key]
		if b == nil {
			b = &strings.Builder{}
			r.outputs[key] = b
		}
		b.WriteString(e.Output)
	case "pass", "fail", "skip":
		if e.Test != "" {
			r.testDone(e, key)
		} else {
			r.packageDone(e)
		}
	}
}

func (r *report) testDone(e event, key string) {
	switch e.Action {
	case "pass":
		r.tests[e.Package]++
	case "fail":
		r.failed = append(r.failed, key)
		fmt.Fprintf(r.out, "--- FAIL %s (%.1fs)\n%s", key, e.Elapsed, r.text(key))
	case "skip":
		r.skipped = append(r.skipped, key)
	}
	// A passing test's output is noise; a failing one's was just printed.
	delete(r.outputs, key)
}

func (r *report) packageDone(e event) {
	delete(r.running, e.Package)
	out := r.text(e.Package)
	delete(r.outputs, e.Package)
	switch {
	case e.Action == "fail":
		r.failedPkgs++
		// A test binary that timed out or crashed sends no fail event for
		// the tests it was running: their output (the panic, the
		// goroutine dump) is still here and is the cause.
		var unfinished []string
		for key := range r.outputs {
			if strings.HasPrefix(key, e.Package+"/") {
				unfinished = append(unfinished, key)
			}
		}
		sort.Strings(unfinished)
		for _, key := range unfinished {
			r.failed = append(r.failed, key+" (did not finish)")
			fmt.Fprintf(r.out, "--- DID NOT FINISH %s\n%s", key, r.text(key))
			delete(r.outputs, key)
		}
		fmt.Fprintf(r.out, "FAIL  %s  %.1fs\n%s", e.Package, e.Elapsed, out)
	case strings.Contains(out, "[no test files]") || r.tests[e.Package] == 0 && e.Action == "skip":
		r.noTests++
	default:
		r.passed++
		fmt.Fprintf(r.out, "ok    %s  %.1fs  %d tests\n", e.Package, e.Elapsed, r.tests[e.Package])
	}
}

func (r *report) text(key string) string {
	if b := r.outputs[key]; b != nil {
		return b.String()
	}
	return ""
}

// progress names the packages still running, longest first.
func (r *report) progress() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.running) == 0 {
		return
	}
	var names []string
	for p, t := range r.running {
		names = append(names, fmt.Sprintf("%s (%.0fs)", p, time.Since(t).Seconds()))
	}
	sort.Strings(names)
	fmt.Fprintf(r.out, "...   %.0fs: still running %s\n", time.Since(r.started).Seconds(), strings.Join(names, ", "))
}

// summary prints the totals and returns whether the run counts as passed.
func (r *report) summary(ci bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	tests := 0
	for _, n := range r.tests {
		tests += n
	}
	fmt.Fprintf(r.out, "\n%d packages passed, %d failed, %d without tests; %d tests passed, %d failed, %d skipped; %s\n",
		r.passed, r.failedPkgs, r.noTests, tests, len(r.failed), len(r.skipped), time.Since(r.started).Round(time.Second))
	ok := !r.buildFailed && r.failedPkgs == 0 && len(r.failed) == 0
	for _, f := range r.failed {
		fmt.Fprintln(r.out, "failed:", f)
	}
	if ci && len(r.skipped) > 0 {
		ok = false
		fmt.Fprintln(r.out, "CI=true and these tests skipped (CI never skips; install what they need):")
		for _, s := range r.skipped {
			fmt.Fprintln(r.out, "  ", s)
		}
	}
	if r.buildFailed {
		fmt.Fprintln(r.out, "a package did not build")
	}
	return ok
}

func run(in io.Reader, out io.Writer, ci bool, tick <-chan time.Time) bool {
	r := newReport(out)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-tick:
				r.progress()
			case <-done:
				return
			}
		}
	}()
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			// Not test2json (go vet, a panic before the test binary ran):
			// pass it through.
			fmt.Fprintln(out, sc.Text())
			continue
		}
		if e.Package == "" {
			e.Package = e.ImportPath
		}
		r.handle(e)
	}
	close(done)
	if err := sc.Err(); err != nil {
		fmt.Fprintln(out, "reading go test -json:", err)
		return false
	}
	return r.summary(ci)
}

func main() {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	if !run(os.Stdin, os.Stdout, os.Getenv("CI") == "true", t.C) {
		os.Exit(1)
	}
}
