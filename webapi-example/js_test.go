package main

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// TestJSClient runs the unit tests of imclient.js (e2e/imclient.test.mjs)
// with Node's test runner. A missing node fails the test: see
// webapi-example/e2e/install.sh.
func TestJSClient(t *testing.T) {
	nodeBin, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found; run webapi-example/e2e/install.sh")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nodeBin, "--test", "imclient.test.mjs")
	cmd.Dir = "e2e"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("imclient.js tests failed: %v\n%s", err, out)
	}
}
