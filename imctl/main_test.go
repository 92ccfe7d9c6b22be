package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/imbroker/imbroker/internal/leakcheck"
	"github.com/imbroker/imbroker/internal/testnode"
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
	if err := testnode.BuildBinary(".", ".", imctlBin); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	leakcheck.Main(m)
}
