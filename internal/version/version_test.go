package version

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	tagged := &debug.BuildInfo{Main: debug.Module{Version: "v0.4.0"}}
	if got := fromBuildInfo(tagged, true); got.Version != "v0.4.0" || got.Revision != "" {
		t.Fatalf("go install @v0.4.0: got %+v", got)
	}
	checkout := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "3f2a1c9e0b7d5a6b"}, {Key: "vcs.modified", Value: "true"},
	}}
	got := fromBuildInfo(checkout, true)
	if got.Version != "devel" || got.Revision != "3f2a1c9e0b7d5a6b" || !got.Modified {
		t.Fatalf("checkout build: got %+v", got)
	}
	if s := got.String(); !strings.HasPrefix(s, "devel (3f2a1c9e0b7d, modified) go") {
		t.Fatalf("String() = %q", s)
	}
	if got := fromBuildInfo(nil, false); got.Version != "devel" {
		t.Fatalf("no build info: got %+v", got)
	}
	Version = "v9.9.9"
	defer func() { Version = "" }()
	if got := fromBuildInfo(checkout, true); got.Version != "v9.9.9" || got.Revision == "" {
		t.Fatalf("ldflags override: got %+v", got)
	}
}
