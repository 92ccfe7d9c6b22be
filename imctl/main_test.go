package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/imbroker/imbroker/internal/leakcheck"
)

// imctlBin is the imctl binary the tests run as a real process.
var imctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imctl-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	imctlBin = filepath.Join(dir, "imctl")
	args := []string{"build", "-o", imctlBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build imctl: %v\n%s", err, out)
		os.Exit(1)
	}
	leakcheck.Main(m)
}
