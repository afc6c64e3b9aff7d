// Package release tests scripts/release.sh: two builds of the same source
// give the same bytes, and the binaries report the version they were
// stamped with.
package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The stamps: fixed, so the test needs no git and both builds agree.
const (
	stampVersion = "v0.0.0-releasetest"
	stampCommit  = "0123456789abcdef0123456789abcdef01234567"
	stampEpoch   = "1767323045" // 2026-01-02T03:04:05Z
)

func repoRoot(t *testing.T) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// TestReproducible builds the host's platform twice, the second time from
// a copy of the tree at another path, and compares every output file. Both
// builds share the Go build cache (a cold one takes minutes); a cold-cache
// comparison is `make release` twice with GOCACHE pointing at empty dirs.
func TestReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three binaries twice")
	}
	root := repoRoot(t)
	copyDir := filepath.Join(t.TempDir(), "src", "elsewhere")
	copyTree(t, root, copyDir)
	dists := []string{filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")}
	for i, src := range []string{root, copyDir} {
		cmd := exec.Command("bash", filepath.Join(src, "scripts", "release.sh"))
		cmd.Env = append(os.Environ(), "DIST="+dists[i], "PLATFORMS=linux/"+runtime.GOARCH,
			"VERSION="+stampVersion, "COMMIT="+stampCommit, "SOURCE_DATE_EPOCH="+stampEpoch)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("release.sh in %s: %v\n%s", src, err, out)
		}
	}
	a, b := files(t, dists[0]), files(t, dists[1])
	if len(a) == 0 {
		t.Fatal("release.sh produced nothing")
	}
	for name, ba := range a {
		bb, ok := b[name]
		switch {
		case !ok:
			t.Errorf("%s: only in the first build", name)
		case !bytes.Equal(ba, bb):
			t.Errorf("%s differs between the two builds", name)
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			t.Errorf("%s: only in the second build", name)
		}
	}

	dir := filepath.Join(dists[0], "nexus_"+stampVersion+"_linux_"+runtime.GOARCH)
	for _, want := range []string{"nexus", "nexus-jail", "firecracker-sim", "LICENSE", "CHANGELOG.md", "install.sh",
		"docs/upgrading.md", "deploy/systemd/nexus-agent.service", "deploy/systemd/nexus-manager.service", "deploy/systemd/agent.env.example"} {
		if _, ok := a[filepath.Join(filepath.Base(dir), want)]; !ok {
			t.Errorf("%s missing from the release", want)
		}
	}
	if !strings.Contains(string(a["SHA256SUMS"]), filepath.Base(dir)+".tar.gz") {
		t.Errorf("SHA256SUMS does not list the tarball:\n%s", a["SHA256SUMS"])
	}

	// The binary says what it was stamped with.
	out, err := exec.Command(filepath.Join(dir, "nexus"), "version", "-o", "json").Output()
	if err != nil {
		t.Fatalf("nexus version: %v", err)
	}
	var v struct {
		Version, Commit, Platform string
		CommitTime                string `json:"commit_time"`
		Dirty                     bool
	}
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("nexus version -o json: %v in %s", err, out)
	}
	if v.Version != stampVersion || v.Commit != stampCommit || v.CommitTime != "2026-01-02T03:04:05Z" || v.Dirty || v.Platform != "linux/"+runtime.GOARCH {
		t.Errorf("nexus version -o json = %s", out)
	}

	// The tarball holds only the commit's time and no build user.
	epoch := time.Unix(1767323045, 0)
	tr := tarReader(t, filepath.Join(dists[0], filepath.Base(dir)+".tar.gz"))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if !h.ModTime.Equal(epoch) || h.Uid != 0 || h.Gid != 0 || h.Uname != "" {
			t.Errorf("tar entry %s: mtime %s, owner %d:%d %q", h.Name, h.ModTime, h.Uid, h.Gid, h.Uname)
		}
	}
}

// copyTree copies the source tree (without VCS data and build output).
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	skip := map[string]bool{".git": true, "dist": true, "bin": true, ".nexus": true, "node_modules": true}
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, path)
		if d.IsDir() && skip[d.Name()] {
			return filepath.SkipDir
		}
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		case !d.Type().IsRegular():
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, info.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}

// files reads every regular file under dir, by relative path.
func files(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		out[rel] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func tarReader(t *testing.T, path string) *tar.Reader {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	return tar.NewReader(gz)
}
