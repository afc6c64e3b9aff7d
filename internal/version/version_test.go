package version

import (
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-01-02T03:04:05Z"},
		{Key: "vcs.modified", Value: "true"},
		{Key: "GOOS", Value: "linux"},
		{Key: "GOARCH", Value: "arm64"},
	}
	for _, tc := range []struct {
		name, stamp string
		bi          *debug.BuildInfo
		want        Info
		str         string
	}{
		{"no build info", "", nil, Info{Version: devVersion}, devVersion},
		{"stamp wins", "v1.2.3", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.0.0-2026-x"}, Settings: vcs},
			Info{Version: "v1.2.3", Commit: "0123456789abcdef0123456789abcdef01234567", CommitTime: "2026-01-02T03:04:05Z", Dirty: true, GoVersion: "go1.26.8", Platform: "linux/arm64"},
			"v1.2.3 (commit 0123456789ab-dirty, 2026-01-02T03:04:05Z)"},
		{"module version", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v0.3.0"}},
			Info{Version: "v0.3.0", GoVersion: "go1.26.8"}, "v0.3.0"},
		{"devel", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}},
			Info{Version: devVersion, GoVersion: "go1.26.8"}, devVersion},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := fromBuildInfo(tc.stamp, tc.bi)
			if tc.want.GoVersion == "" {
				tc.want.GoVersion = got.GoVersion // the running toolchain's
			}
			if tc.want.Platform == "" {
				tc.want.Platform = got.Platform
			}
			if got != tc.want {
				t.Errorf("fromBuildInfo = %+v; want %+v", got, tc.want)
			}
			if s := got.String(); s != tc.str {
				t.Errorf("String() = %q; want %q", s, tc.str)
			}
		})
	}
}
