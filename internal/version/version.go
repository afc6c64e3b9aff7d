// Package version says which build of Nexus is running: the release
// version stamped at link time, else what the Go toolchain recorded (module
// version, VCS commit, commit time, uncommitted changes). It is a leaf.
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Release builds (scripts/release.sh) set these with
//
//	-ldflags "-X github.com/nexus-microvm/nexus/internal/version.Stamp=v1.2.3 -X ….StampCommit=… -X ….StampTime=…"
//
// They are empty in other builds. The commit and its time are stamped too
// because the toolchain records VCS data only when it finds a .git
// directory (not in a git worktree, nor a source tarball).
var (
	Stamp       string // release version
	StampCommit string // full commit hash; a "-dirty" suffix marks local changes
	StampTime   string // commit time, RFC 3339
)

// devVersion names a build with neither a stamp nor a module version
// (go build in a work tree).
const devVersion = "0.0.0-dev"

// Info describes a build. Fields the toolchain did not record are empty.
type Info struct {
	Version    string `json:"version"`
	Commit     string `json:"commit,omitempty"`
	CommitTime string `json:"commit_time,omitempty"` // RFC 3339, UTC
	Dirty      bool   `json:"dirty"`                 // built from a tree with uncommitted changes
	GoVersion  string `json:"go_version"`
	Platform   string `json:"platform"` // os/arch
}

// Get returns this binary's build information.
func Get() Info {
	bi, _ := debug.ReadBuildInfo()
	i := fromBuildInfo(Stamp, bi)
	if i.Commit == "" && StampCommit != "" {
		i.Commit, i.Dirty = strings.CutSuffix(StampCommit, "-dirty")
		i.CommitTime = StampTime
	}
	return i
}

// String is the one-line form: "v1.2.3 (commit 0123abcd, 2026-01-02T03:04:05Z)".
func String() string { return Get().String() }

func (i Info) String() string {
	s := i.Version
	var extra []string
	if i.Commit != "" {
		c := i.Commit
		if len(c) > 12 {
			c = c[:12]
		}
		if i.Dirty {
			c += "-dirty"
		}
		extra = append(extra, "commit "+c)
	}
	if i.CommitTime != "" {
		extra = append(extra, i.CommitTime)
	}
	if len(extra) > 0 {
		s += " (" + strings.Join(extra, ", ") + ")"
	}
	return s
}

func fromBuildInfo(stamp string, bi *debug.BuildInfo) Info {
	i := Info{Version: stamp, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi == nil {
		if i.Version == "" {
			i.Version = devVersion
		}
		return i
	}
	if bi.GoVersion != "" {
		i.GoVersion = bi.GoVersion
	}
	var goos, goarch string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Commit = s.Value
		case "vcs.time":
			if t, err := time.Parse(time.RFC3339, s.Value); err == nil {
				i.CommitTime = t.UTC().Format(time.RFC3339)
			}
		case "vcs.modified":
			i.Dirty = s.Value == "true"
		case "GOOS":
			goos = s.Value
		case "GOARCH":
			goarch = s.Value
		}
	}
	if goos != "" && goarch != "" {
		i.Platform = goos + "/" + goarch
	}
	if i.Version == "" {
		// "(devel)" is what go build says of a main module without a
		// version; since Go 1.24 a VCS checkout gets a pseudo-version.
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			i.Version = v
		} else {
			i.Version = devVersion
		}
	}
	return i
}
