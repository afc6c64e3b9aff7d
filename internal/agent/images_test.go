package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// imageAgent is an agent with no VMM or network: enough for the image
// endpoints, which only touch files.
func imageAgent(t *testing.T, prod bool) (*agentapi.Client, hostlayout.Layout, string) {
	t.Helper()
	dir := t.TempDir()
	layout := hostlayout.Layout{RunDir: filepath.Join(dir, "run")}
	images := filepath.Join(dir, "images")
	for _, d := range []string{layout.VMsDir(), images} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := Config{Name: "test", Layout: layout, Token: testToken, ImagesDir: images, DevMode: !prod}
	if prod {
		cfg.ReadRoots = []string{images}
	}
	a, err := New(cfg, nil, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return agentapi.NewClient(srv.URL, testToken, nil), layout, images
}

func wantAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var e *apierr.Error
	if !errors.As(err, &e) || e.Status != status || e.Code != code {
		t.Fatalf("err = %v; want %d %s", err, status, code)
	}
}

func TestInspectImage(t *testing.T) {
	c, _, images := imageAgent(t, true)
	ctx := context.Background()
	p := filepath.Join(images, "vmlinux")
	if err := os.WriteFile(p, []byte("kernel bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p, "vmlinux"} {
		info, err := c.InspectImage(ctx, agentapi.ImageInspectRequest{Path: path})
		if err != nil || info.Path != p || info.Size != 12 || info.SHA256 != fileSum(t, p) {
			t.Fatalf("inspect %q = %+v, %v; want %s, 12 bytes, its sha256", path, info, err, p)
		}
	}
	if info, _ := c.InspectImage(ctx, agentapi.ImageInspectRequest{Path: p}); !info.Cached {
		t.Fatal("a second inspect of an unchanged file hashed it again")
	}
	_, err := c.InspectImage(ctx, agentapi.ImageInspectRequest{Path: "../run/agent.token"})
	wantAPIError(t, err, 400, "invalid_path")
	_, err = c.InspectImage(ctx, agentapi.ImageInspectRequest{Path: "/etc/passwd"})
	wantAPIError(t, err, 403, "path_not_allowed")
}

func TestPrepareDrive(t *testing.T) {
	c, layout, images := imageAgent(t, true)
	ctx := context.Background()
	id := uuid.NewString()
	src := filepath.Join(images, "rootfs.ext4")
	sparseImage(t, src)
	sum := fileSum(t, src)
	req := agentapi.DriveRequest{DriveID: "rootfs", Source: src, SHA256: sum}

	// Drives are prepared before the spawn: a refused one leaves no run dir.
	bad := req
	bad.SHA256 = sum[:63] + "0"
	if bad.SHA256 == sum {
		bad.SHA256 = sum[:63] + "1"
	}
	_, err := c.PrepareDrive(ctx, id, bad)
	wantAPIError(t, err, 409, "image_changed")
	copyPath := filepath.Join(layout.VMDir(id), "drives", "rootfs.ext4")
	if _, err := os.Stat(copyPath); !os.IsNotExist(err) {
		t.Fatal("a refused drive left a copy")
	}
	if _, err := os.Stat(layout.VMDir(id)); !os.IsNotExist(err) {
		t.Fatalf("a refused drive left a run dir: %v", err)
	}

	info, err := c.PrepareDrive(ctx, id, req)
	if err != nil {
		t.Fatal(err)
	}
	if info.Path != "drives/rootfs.ext4" || info.HostPath != copyPath || info.Size != 1<<30 ||
		(info.Method != agentapi.DriveSparse && info.Method != agentapi.DriveReflink) || info.Allocated > info.SourceAllocated {
		t.Fatalf("first prepare = %+v; want a sparse copy at drives/rootfs.ext4", info)
	}
	if fileSum(t, copyPath) != sum {
		t.Fatal("the copy differs from the image")
	}
	// The guest writes its copy; a later boot keeps it.
	if err := os.WriteFile(copyPath, []byte("guest data"), 0o600); err != nil {
		t.Fatal(err)
	}
	info, err = c.PrepareDrive(ctx, id, req)
	if err != nil || info.Method != agentapi.DriveExisting {
		t.Fatalf("second prepare = %+v, %v; want the existing copy", info, err)
	}
	if b, _ := os.ReadFile(copyPath); string(b) != "guest data" {
		t.Fatal("the second prepare overwrote the guest's writes")
	}

	ro := req
	ro.DriveID, ro.ReadOnly = "data", true
	info, err = c.PrepareDrive(ctx, id, ro)
	if err != nil || info.Method != agentapi.DriveInPlace || info.Path != src {
		t.Fatalf("read-only prepare = %+v, %v; want the image in place", info, err)
	}

	for _, tc := range []struct {
		name   string
		req    agentapi.DriveRequest
		status int
		code   string
	}{
		{"outside images", agentapi.DriveRequest{DriveID: "x", Source: "/etc/passwd"}, 403, "path_not_allowed"},
		{"image outside images dir", agentapi.DriveRequest{DriveID: "x", Source: "/etc/passwd", SHA256: sum}, 403, "path_not_allowed"},
		{"a vm's disk", agentapi.DriveRequest{DriveID: "x", Source: copyPath}, 403, "path_not_allowed"},
		{"bad drive id", agentapi.DriveRequest{DriveID: "../x", Source: src}, 400, "invalid_request"},
		{"traversal", agentapi.DriveRequest{DriveID: "x", Source: images + "/../run/agent.token"}, 400, "invalid_path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.PrepareDrive(ctx, id, tc.req)
			wantAPIError(t, err, tc.status, tc.code)
		})
	}
}

// TestPrepareDriveDevMode: a dev-mode raw path may lie anywhere, except in
// the VM run dirs (other VMs' disks), and is copied too: the user's file
// is never written.
func TestPrepareDriveDevMode(t *testing.T) {
	c, layout, _ := imageAgent(t, false)
	ctx := context.Background()
	id, other := uuid.NewString(), uuid.NewString()
	for _, v := range []string{id, other} {
		if err := os.MkdirAll(filepath.Join(layout.VMDir(v), "drives"), 0o750); err != nil {
			t.Fatal(err)
		}
	}
	user := filepath.Join(t.TempDir(), "mine.ext4")
	if err := os.WriteFile(user, []byte("user's rootfs"), 0o644); err != nil {
		t.Fatal(err)
	}
	info, err := c.PrepareDrive(ctx, id, agentapi.DriveRequest{DriveID: "rootfs", Source: user})
	if err != nil || info.Path != "drives/rootfs.ext4" || info.Method == agentapi.DriveInPlace {
		t.Fatalf("dev raw path = %+v, %v; want a private copy", info, err)
	}
	otherDisk := filepath.Join(layout.VMDir(other), "drives", "rootfs.ext4")
	if err := os.WriteFile(otherDisk, []byte("other guest"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = c.PrepareDrive(ctx, id, agentapi.DriveRequest{DriveID: "data", Source: otherDisk})
	wantAPIError(t, err, 403, "path_not_allowed")
}
