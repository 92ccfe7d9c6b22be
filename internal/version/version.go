// Package version says which build of the broker is running, for
// `imserver -version`, the startup log and the im_build_info metric.
//
// The version comes from the binary itself: `go install
// github.com/imbroker/imbroker/imserver/cmd/imserver@v0.4.0` records v0.4.0
// as the main module's version, and a build from a git checkout records the
// commit (vcs.revision) and whether the tree had local changes. A release
// build that has neither (a Dockerfile copying sources without .git) sets
// Version with -ldflags "-X github.com/imbroker/imbroker/internal/version.Version=v0.4.0".
package version

import (
	"runtime"
	"runtime/debug"
	"sync"
)

// Version overrides the module version when set at link time.
var Version string

// Info describes one build.
type Info struct {
	Version   string `json:"version"`   // module version, "devel" for a local build
	Revision  string `json:"revision"`  // VCS commit, "" when unknown
	Modified  bool   `json:"modified"`  // built from a tree with uncommitted changes
	GoVersion string `json:"goversion"` // toolchain that built the binary
}

var (
	once sync.Once
	info Info
)

// Get returns this binary's build info.
func Get() Info {
	once.Do(func() { info = fromBuildInfo(debug.ReadBuildInfo()) })
	return info
}

func fromBuildInfo(bi *debug.BuildInfo, ok bool) Info {
	in := Info{Version: "devel", GoVersion: runtime.Version()}
	if ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			in.Version = v
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if Version != "" {
		in.Version = Version
	}
	return in
}

// String is the one-line form: "v0.4.0", "devel (3f2a1c9e0b7d, modified)".
func (in Info) String() string {
	s := in.Version
	if in.Revision != "" {
		rev := in.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if in.Modified {
			rev += ", modified"
		}
		s += " (" + rev + ")"
	}
	return s + " " + in.GoVersion
}
