package manager

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

func TestPlanDrives(t *testing.T) {
	ro, rw := firecracker.Bool(true), firecracker.Bool(false)
	vm := store.VM{ID: "vm-1", Name: "web"}
	for _, tc := range []struct {
		name   string
		drives []firecracker.Drive
		want   []snapshotDrive
		err    string
	}{
		{"run-dir copy", []firecracker.Drive{{DriveID: "rootfs", IsRootDevice: true, PathOnHost: "drives/rootfs.ext4", IsReadOnly: rw}},
			[]snapshotDrive{{DriveID: "rootfs", Path: "drives/rootfs.ext4", Root: true, Copy: "drives/rootfs.ext4"}}, ""},
		{"absolute writable is copied and swapped", []firecracker.Drive{{DriveID: "rootfs", IsRootDevice: true, PathOnHost: "/img/rootfs.ext4", IsReadOnly: rw}},
			[]snapshotDrive{{DriveID: "rootfs", Path: "/img/rootfs.ext4", Root: true, Copy: "drives/rootfs.ext4", Swapped: true}}, ""},
		{"absolute read-only is shared", []firecracker.Drive{{DriveID: "data", PathOnHost: "/img/data.ext4", IsReadOnly: ro}},
			[]snapshotDrive{{DriveID: "data", Path: "/img/data.ext4", ReadOnly: true}}, ""},
		{"odd extension", []firecracker.Drive{{DriveID: "data", PathOnHost: "/img/data.tar.gz-x", IsReadOnly: rw}},
			[]snapshotDrive{{DriveID: "data", Path: "/img/data.tar.gz-x", Copy: "drives/data.img", Swapped: true}}, ""},
		{"swap name taken by a run-dir drive", []firecracker.Drive{
			{DriveID: "data", PathOnHost: "/img/data.ext4", IsReadOnly: rw},
			{DriveID: "other", PathOnHost: "drives/data.ext4", IsReadOnly: rw},
		}, []snapshotDrive{
			{DriveID: "data", Path: "/img/data.ext4", Copy: "drives/data_2.ext4", Swapped: true},
			{DriveID: "other", Path: "drives/data.ext4", Copy: "drives/data.ext4"},
		}, ""},
		{"vhost-user", []firecracker.Drive{{DriveID: "vu", Socket: "/run/vu.sock"}}, nil, "vhost-user"},
		{"escaping path", []firecracker.Drive{{DriveID: "x", PathOnHost: "../other/drives/x.ext4"}}, nil, "not a plain file name"},
		{"reserved name", []firecracker.Drive{{DriveID: "x", PathOnHost: "mem"}}, nil, "not a plain file name"},
		{"unclean", []firecracker.Drive{{DriveID: "x", PathOnHost: "drives/../drives/x"}}, nil, "not a plain file name"},
		{"no drives", nil, []snapshotDrive{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := planDrives(vm, tc.drives)
			if tc.err != "" {
				e, ok := AsError(err)
				if !ok || e.Kind != KindConflict || !strings.Contains(e.Message, tc.err) {
					t.Fatalf("planDrives = %+v, %v; want a conflict mentioning %q", got, err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("planDrives = %+v, %v;\nwant %+v", got, err, tc.want)
			}
		})
	}
}

func TestSnapshotCompatible(t *testing.T) {
	for _, tc := range []struct {
		file, bin string
		want      bool
	}{
		{"v10.0.0", "v10.0.0", true},
		{"v10.0.0", "v10.2.0", true},
		{"v10.2.0", "v10.0.0", false},
		{"v10.0.0", "v11.0.0", false},
		{"v11.0.0", "v10.0.0", false},
		{"", "v10.0.0", false},
	} {
		if got := snapshotCompatible(tc.file, tc.bin); got != tc.want {
			t.Errorf("snapshotCompatible(%q, %q) = %v; want %v", tc.file, tc.bin, got, tc.want)
		}
	}
}

// TestRestoredConfig: a restored VM boots cold from its own drive copies
// (relative to its run dir) and the source's kernel; shared read-only
// drives keep their image.
func TestRestoredConfig(t *testing.T) {
	m := snapshotMeta{
		Source: snapshotSource{
			Vcpu: 2, MemMib: 256, KernelPath: "/img/vmlinux", KernelImageID: "k1",
			RootfsPath: "/img/rootfs.ext4", RootfsImageID: "r1", BootArgs: "console=ttyS0",
			Spec: apitypes.VMConfig{
				KernelImageID: "k1", RootfsImageID: "r1",
				ExtraDrives: []apitypes.ExtraDrive{{DriveID: "scratch", ImageID: "s1"}, {DriveID: "data", ImageID: "d1", ReadOnly: true}},
			},
		},
		Drives: []snapshotDrive{
			{DriveID: "rootfs", Root: true, Path: "drives/rootfs.ext4", Copy: "drives/rootfs.ext4"},
			{DriveID: "scratch", Path: "drives/scratch.ext4", Copy: "drives/scratch.ext4"},
			{DriveID: "data", Path: "/img/data.ext4", ReadOnly: true},
		},
	}
	rootfs, rootfsImage, cfg := restoredConfig(m)
	if rootfs != "drives/rootfs.ext4" || rootfsImage != "" || cfg.RootfsPath != rootfs || cfg.RootfsImageID != "" {
		t.Fatalf("rootfs %q image %q cfg %+v; want the VM's own copy", rootfs, rootfsImage, cfg)
	}
	if *cfg.Vcpu != 2 || *cfg.MemMib != 256 || cfg.KernelImageID != "k1" {
		t.Fatalf("config %+v lost the source's machine or kernel", cfg)
	}
	want := []apitypes.ExtraDrive{{DriveID: "scratch", Path: "drives/scratch.ext4"}, {DriveID: "data", ImageID: "d1", ReadOnly: true}}
	if !reflect.DeepEqual(cfg.ExtraDrives, want) {
		t.Fatalf("extra drives %+v; want %+v", cfg.ExtraDrives, want)
	}
	if m.Source.Spec.ExtraDrives[0].ImageID != "s1" {
		t.Fatal("restoredConfig changed the snapshot's own record")
	}
}

func TestRestoreNoticesNameTheMAC(t *testing.T) {
	m := snapshotMeta{Net: &snapshotNet{IfaceID: "eth0", GuestMAC: "06:00:ac:10:00:02"}}
	n := restoreNotices(store.Snapshot{VMID: "vm-1"}, m)
	if len(n) != 1 || !strings.Contains(n[0], "06:00:ac:10:00:02") || !strings.Contains(n[0], "cannot change") {
		t.Fatalf("notices %q", n)
	}
	if n := restoreNotices(store.Snapshot{}, snapshotMeta{}); len(n) != 0 {
		t.Fatalf("notices without a NIC: %q", n)
	}
}

// TestCheckRestoreVersion runs the check against a fake firecracker that
// only answers GET /version.
func TestCheckRestoreVersion(t *testing.T) {
	withNet := snapshotMeta{SnapshotVersion: "v10.0.0", FirecrackerVersion: "1.16.1", Net: &snapshotNet{IfaceID: "eth0", TAP: "tap-1"}}
	noNet := snapshotMeta{SnapshotVersion: "v5.0.0", FirecrackerVersion: "1.11.0"}
	for _, tc := range []struct {
		version string
		meta    snapshotMeta
		code    string
	}{
		{"1.16.1-sim", withNet, ""},
		{"1.16.3", withNet, ""},
		{"1.17.0-dev", withNet, "snapshot_incompatible"}, // format v11: another major
		{"1.15.0", withNet, "snapshot_incompatible"},
		{"1.11.0", noNet, ""},
		{"1.11.0", snapshotMeta{SnapshotVersion: "v8.0.0", FirecrackerVersion: "1.13.0"}, "snapshot_incompatible"}, // 1.11 reads v5
		{"1.11.0", snapshotMeta{SnapshotVersion: "v5.0.0", Net: &snapshotNet{IfaceID: "eth0"}}, "network_overrides_unsupported"},
	} {
		t.Run(tc.version+"/"+tc.meta.SnapshotVersion, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"firecracker_version":%q}`, tc.version)
			}))
			defer srv.Close()
			err := checkRestoreVersion(context.Background(), firecracker.NewHTTP(srv.URL, nil), store.VM{ID: "vm-2", HostID: "h1"}, store.Snapshot{ID: "s1", VMID: "vm-1"}, tc.meta)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("check = %v; want ok", err)
				}
				return
			}
			e, ok := AsError(err)
			if !ok || e.Kind != KindConflict || e.Code != tc.code || !strings.Contains(e.Message, tc.version) || e.Suggestion == "" {
				t.Fatalf("check = %v; want a %s conflict naming the version with a suggestion", err, tc.code)
			}
		})
	}
}
