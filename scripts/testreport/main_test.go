package main

import (
	"strings"
	"testing"
)

// Events as `go test -json` writes them (trimmed to the fields used).
const stream = `{"Action":"start","Package":"ex/a"}
{"Action":"run","Package":"ex/a","Test":"TestOK"}
{"Action":"output","Package":"ex/a","Test":"TestOK","Output":"noise of a passing test\n"}
{"Action":"pass","Package":"ex/a","Test":"TestOK","Elapsed":0.1}
{"Action":"run","Package":"ex/a","Test":"TestBad"}
{"Action":"output","Package":"ex/a","Test":"TestBad","Output":"    a_test.go:9: want 2, got 3\n"}
{"Action":"fail","Package":"ex/a","Test":"TestBad","Elapsed":0.2}
{"Action":"output","Package":"ex/a","Output":"FAIL\n"}
{"Action":"fail","Package":"ex/a","Elapsed":0.4}
{"Action":"start","Package":"ex/b"}
{"Action":"run","Package":"ex/b","Test":"TestNeedsTool"}
{"Action":"skip","Package":"ex/b","Test":"TestNeedsTool","Elapsed":0}
{"Action":"pass","Package":"ex/b","Elapsed":0.1}
{"Action":"start","Package":"ex/c"}
{"Action":"output","Package":"ex/c","Output":"?   \tex/c\t[no test files]\n"}
{"Action":"skip","Package":"ex/c","Elapsed":0}
vet: something not JSON
`

func TestReport(t *testing.T) {
	for _, ci := range []bool{false, true} {
		var out strings.Builder
		if run(strings.NewReader(stream), &out, ci, nil) {
			t.Errorf("ci=%v: a failing test reported as passed", ci)
		}
		got := out.String()
		for _, want := range []string{
			"--- FAIL ex/a/TestBad", "want 2, got 3", "FAIL  ex/a", "ok    ex/b", "vet: something not JSON",
			"1 packages passed, 1 failed, 1 without tests; 1 tests passed, 1 failed, 1 skipped",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("ci=%v: output lacks %q:\n%s", ci, want, got)
			}
		}
		if strings.Contains(got, "noise of a passing test") {
			t.Errorf("a passing test's output was printed:\n%s", got)
		}
		if skipNamed := strings.Contains(got, "   ex/b/TestNeedsTool"); skipNamed != ci {
			t.Errorf("ci=%v: skipped test named as a failure: %v:\n%s", ci, skipNamed, got)
		}
	}
}

// TestSkipFailsUnderCI: a run whose only fault is a skip passes locally
// and fails under CI=true.
func TestSkipFailsUnderCI(t *testing.T) {
	const skipOnly = `{"Action":"skip","Package":"ex/b","Test":"TestNeedsTool"}
{"Action":"pass","Package":"ex/b","Elapsed":0.1}
`
	if !run(strings.NewReader(skipOnly), &strings.Builder{}, false, nil) {
		t.Error("a skip failed the run outside CI")
	}
	if run(strings.NewReader(skipOnly), &strings.Builder{}, true, nil) {
		t.Error("a skip passed the run under CI=true")
	}
}

// TestUnfinishedTestShown: a test binary killed by -timeout sends no fail
// event for the running test; its output (the timeout panic) must still be
// printed and the test named as failed.
func TestUnfinishedTestShown(t *testing.T) {
	const timedOut = `{"Action":"start","Package":"ex/t"}
{"Action":"run","Package":"ex/t","Test":"TestHangs"}
{"Action":"output","Package":"ex/t","Test":"TestHangs","Output":"panic: test timed out after 5s\n"}
{"Action":"output","Package":"ex/t","Test":"TestHangs","Output":"\trunning tests:\n\t\tTestHangs (5s)\n"}
{"Action":"output","Package":"ex/t","Output":"FAIL\tex/t\t5.030s\n"}
{"Action":"fail","Package":"ex/t","Elapsed":5.03}
`
	var out strings.Builder
	if run(strings.NewReader(timedOut), &out, false, nil) {
		t.Error("a timed-out package reported as passed")
	}
	for _, want := range []string{"--- DID NOT FINISH ex/t/TestHangs", "panic: test timed out", "failed: ex/t/TestHangs (did not finish)", "0 tests passed, 1 failed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
