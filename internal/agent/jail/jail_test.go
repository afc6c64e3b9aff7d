package jail

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestRel(t *testing.T) {
	for _, tc := range []struct{ given, want, err string }{
		{"/srv/fc/images/vmlinux", "srv/fc/images/vmlinux", ""},
		{"drives/rootfs.ext4", "drives/rootfs.ext4", ""},
		{"/srv/fc/vms/x/sock/fc.sock", "srv/fc/vms/x/sock/fc.sock", ""},
		{"", "", "empty"},
		{"/", "", "inside the chroot"},
		{".", "", "inside the chroot"},
		{"../etc/passwd", "", "inside the chroot"},
		{"/srv/../etc", "", "not clean"},
		{"drives//x", "", "not clean"},
		{"/dev/kvm", "", "jail's own dev"},
		{"dev/x", "", "jail's own dev"},
		{"/firecracker", "", "jail's own firecracker"},
		{"/firecracker.pid", "", "jail's own firecracker.pid"},
		{"/old_root/etc", "", "jail's own old_root"},
		{"a\x00b", "", "invalid"},
	} {
		got, err := Rel(tc.given, "firecracker")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("Rel(%q) = %q, %v; want an error about %q", tc.given, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("Rel(%q) = %q, %v; want %q", tc.given, got, err, tc.want)
		}
	}
}

func TestSpecValidate(t *testing.T) {
	ok := Spec{Root: "/srv/fc/jail/firecracker/x/root", Exec: "/usr/bin/firecracker", ExecName: "firecracker", UID: 2000000000, GID: 2000000000, Argv: []string{"/firecracker"}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid spec: %v", err)
	}
	for name, mut := range map[string]func(*Spec){
		"root uid":      func(s *Spec) { s.UID = 0 },
		"root gid":      func(s *Spec) { s.GID = 0 },
		"no argv":       func(s *Spec) { s.Argv = nil },
		"relative root": func(s *Spec) { s.Root = "jail" },
		"root is /":     func(s *Spec) { s.Root = "/" },
		"exec name /":   func(s *Spec) { s.ExecName = "a/b" },
	} {
		s := ok
		mut(&s)
		if s.Validate() == nil {
			t.Errorf("%s: spec accepted", name)
		}
	}
}

// TestImports: the helper starts once per VMM, so its package links the
// standard library and golang.org/x/sys/unix only — nothing of Nexus or
// any other module that would grow the binary and its start.
func TestImports(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") && p != "golang.org/x/sys/unix" {
				t.Errorf("%s imports %s: package jail may import only the standard library and golang.org/x/sys/unix", f, p)
			}
		}
	}
}
