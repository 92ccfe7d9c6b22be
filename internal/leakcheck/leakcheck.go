// Package leakcheck fails a test binary whose tests left goroutines
// running, in the spirit of coder/websocket's and nats-server's TestMain
// checks: a server whose Shutdown returned, or a client whose Close
// returned, must have stopped everything it started.
package leakcheck

import (
	"fmt"
	"net/http"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Main runs the tests, then waits (up to 10 s, for goroutines that are on
// their way out) until only the test runner's own goroutines are left. It
// exits non-zero with their stacks if others remain. Use it as
//
//	func TestMain(m *testing.M) { leakcheck.Main(m) }
func Main(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if leaks := wait(10 * time.Second); leaks != "" {
			fmt.Fprintf(os.Stderr, "leakcheck: goroutines left running after the tests:\n\n%s\n", leaks)
			code = 1
		}
	}
	os.Exit(code)
}

func wait(limit time.Duration) string {
	// Keep-alive connections of http.Get in tests are not the code's.
	if t, ok := http.DefaultTransport.(*http.Transport); ok {
		t.CloseIdleConnections()
	}
	deadline := time.Now().Add(limit)
	for {
		leaks := Leaked()
		if leaks == "" || time.Now().After(deadline) {
			return leaks
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Leaked returns the stacks of the goroutines that are neither the
// caller's nor the runtime's or the test runner's, or "".
func Leaked() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var leaks []string
	for i, g := range strings.Split(string(buf), "\n\n") {
		if i == 0 || ignored(g) { // the first is the caller's own
			continue
		}
		leaks = append(leaks, g)
	}
	return strings.Join(leaks, "\n\n")
}

// ignored lists goroutines that belong to the runtime or the test runner.
func ignored(stack string) bool {
	for _, s := range []string{
		"testing.(*M).",
		"testing.tRunner",
		"testing.runTests",
		"os/signal.signal_recv",
		"runtime.ensureSigM",
		"runtime/trace.",
		"testing.(*F).",
	} {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return strings.TrimSpace(stack) == ""
}
