package testnode

import (
	"fmt"
	"os/exec"
)

// BuildBinary builds the main package pkg (a path such as ./cmd/imserver,
// relative to dir) into out, for tests that run the real binary as a
// process. A race-enabled test binary builds a race-enabled program, so the
// processes it starts are checked too; in a git checkout the commit is
// stamped as a release build stamps it (GOFLAGS on some machines turns
// stamping off).
func BuildBinary(dir, pkg, out string) error {
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	git := exec.Command("git", "rev-parse", "HEAD")
	git.Dir = dir
	if git.Run() == nil {
		args = append(args, "-buildvcs=true")
	}
	build := exec.Command("go", append(args, pkg)...)
	build.Dir = dir
	if b, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}
