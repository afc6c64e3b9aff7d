package cli

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/version"
)

func TestVersion(t *testing.T) {
	code, out, errOut := run(nil, "version", "-o", "json")
	if code != 0 {
		t.Fatalf("version -o json: exit %d, stderr %q", code, errOut)
	}
	var got version.Info
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("version -o json: %v in %q", err, out)
	}
	if got != version.Get() || got.Version == "" || got.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("version -o json = %+v; want %+v", got, version.Get())
	}
	if code, out, _ := run(nil, "--version"); code != 0 || !strings.HasPrefix(out, "nexus "+got.Version) || !strings.Contains(out, got.GoVersion) {
		t.Errorf("--version: exit %d, %q", code, out)
	}
	if code, out, _ := run(nil, "version", "--format", "{{.platform}}"); code != 0 || strings.TrimSpace(out) != got.Platform {
		t.Errorf("version --format: exit %d, %q", code, out)
	}
	if code, _, _ := run(nil, "version", "extra"); code != exitUsage {
		t.Errorf("version extra: exit %d; want %d", code, exitUsage)
	}
}
