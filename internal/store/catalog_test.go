package store_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/store"
)

var eventBehaviours = []behaviour{
	{"event/add_list", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		for _, msg := range []string{"requested", "scheduled", "tap created", "spawned", "running"} {
			ev := must(e.s.AddEvent(ctx, store.VMEvent{VMID: vm.ID, Level: store.LevelInfo, Message: msg}))(t)
			if ev.ID == 0 || !ev.At.Equal(e.clock.Now().Truncate(time.Microsecond)) {
				t.Fatalf("AddEvent = id %d at %v; want an id and the store clock", ev.ID, ev.At)
			}
			e.clock.Advance(time.Second)
		}
		last3 := must(e.s.ListEvents(ctx, vm.ID, 3))(t)
		if got := messages(last3); got != "tap created|spawned|running" {
			t.Fatalf("ListEvents(3) = %q; want the newest three, newest last", got)
		}
		if got := messages(must(e.s.ListEvents(ctx, vm.ID, 0))(t)); got != "requested|scheduled|tap created|spawned|running" {
			t.Fatalf("ListEvents(0) = %q; want all five", got)
		}
		at := time.Date(2024, 1, 2, 3, 4, 5, 6789, time.UTC)
		ev := must(e.s.AddEvent(ctx, store.VMEvent{VMID: vm.ID, At: at, Level: store.LevelError, Message: "boom"}))(t)
		if !ev.At.Equal(at.Truncate(time.Microsecond)) {
			t.Fatalf("AddEvent kept At %v; want %v", ev.At, at.Truncate(time.Microsecond))
		}

		_, err := e.s.AddEvent(ctx, store.VMEvent{VMID: "missing", Level: store.LevelInfo, Message: "x"})
		wantErr(t, "AddEvent for a missing VM", err, store.ErrNotFound)

		if err := e.s.DeleteVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		if got := must(e.s.ListEvents(ctx, vm.ID, 0))(t); len(got) != 0 {
			t.Fatalf("events outlived their VM: %v", got)
		}
	}},
}

func messages(evs []store.VMEvent) string {
	out := ""
	for i, e := range evs {
		if i > 0 {
			out += "|"
		}
		out += e.Message
	}
	return out
}

var catalogBehaviours = []behaviour{
	{"template/crud", func(t *testing.T, e *env) {
		tpl := must(e.s.CreateTemplate(ctx, store.Template{
			Name: "small", Project: "p1", Owner: "alice",
			Config: json.RawMessage(`{"vcpu":1,"mem_mib":128,"kernel_image_id":"k1","rootfs_image_id":"r1","extra_drives":[{"id":"data"}]}`),
		}))(t)
		if d := diff(tpl, must(e.s.GetTemplate(ctx, tpl.ID))(t)); d != "" {
			t.Fatalf("GetTemplate (-create +get):\n%s", d)
		}
		if d := diff(tpl, must(e.s.GetTemplateByName(ctx, "p1", "small"))(t)); d != "" {
			t.Fatalf("GetTemplateByName (-create +get):\n%s", d)
		}
		_, err := e.s.CreateTemplate(ctx, store.Template{Name: "small", Project: "p1", Config: json.RawMessage(`{}`)})
		wantErr(t, "duplicate template", err, store.ErrConflict)
		e.clock.Advance(time.Second)
		must(e.s.CreateTemplate(ctx, store.Template{Name: "small", Project: "p2"}))(t)
		must(e.s.CreateTemplate(ctx, store.Template{Name: "large", Project: "p1"}))(t)
		if got := len(must(e.s.ListTemplates(ctx, store.TemplateFilter{}))(t)); got != 3 {
			t.Fatalf("ListTemplates() = %d; want 3", got)
		}
		p1 := must(e.s.ListTemplates(ctx, store.TemplateFilter{Project: "p1"}))(t)
		if len(p1) != 2 || p1[0].Name != "small" || p1[1].Name != "large" {
			t.Fatalf("ListTemplates(p1) = %+v; want small then large", p1)
		}
		if err := e.s.DeleteTemplate(ctx, tpl.ID); err != nil {
			t.Fatal(err)
		}
		_, err = e.s.GetTemplate(ctx, tpl.ID)
		wantErr(t, "GetTemplate after delete", err, store.ErrNotFound)
		wantErr(t, "DeleteTemplate again", e.s.DeleteTemplate(ctx, tpl.ID), store.ErrNotFound)
		_, err = e.s.GetTemplateByName(ctx, "p1", "small")
		wantErr(t, "GetTemplateByName after delete", err, store.ErrNotFound)
	}},

	{"template/versions", func(t *testing.T, e *env) {
		tpl := must(e.s.CreateTemplate(ctx, store.Template{Name: "web", Project: "p1", Owner: "alice", Config: json.RawMessage(`{"vcpu":1}`)}))(t)
		if tpl.Version != 1 {
			t.Fatalf("CreateTemplate version = %d; want 1", tpl.Version)
		}
		e.clock.Advance(time.Second)
		up := must(e.s.UpdateTemplate(ctx, tpl.ID, "bob", json.RawMessage(`{"vcpu":2}`)))(t)
		if up.Version != 2 || string(up.Config) != `{"vcpu": 2}` && string(up.Config) != `{"vcpu":2}` {
			t.Fatalf("UpdateTemplate = version %d config %s; want 2 and vcpu 2", up.Version, up.Config)
		}
		must(e.s.UpdateTemplate(ctx, tpl.ID, "bob", json.RawMessage(`{"vcpu":3}`)))(t)
		if got := must(e.s.GetTemplate(ctx, tpl.ID))(t); got.Version != 3 || got.Name != "web" || got.Owner != "alice" {
			t.Fatalf("GetTemplate after two updates = %+v; want version 3, name and owner kept", got)
		}
		vs := must(e.s.ListTemplateVersions(ctx, tpl.ID, 0, 10))(t)
		if len(vs) != 3 || vs[0].Version != 3 || vs[2].Version != 1 || vs[2].Owner != "alice" || vs[0].Owner != "bob" {
			t.Fatalf("ListTemplateVersions = %+v; want 3, 2, 1 (alice made 1, bob 3)", vs)
		}
		if page := must(e.s.ListTemplateVersions(ctx, tpl.ID, 3, 1))(t); len(page) != 1 || page[0].Version != 2 {
			t.Fatalf("ListTemplateVersions(before 3, limit 1) = %+v; want version 2", page)
		}
		v1 := must(e.s.GetTemplateVersion(ctx, tpl.ID, 1))(t)
		var c struct{ Vcpu int }
		if err := json.Unmarshal(v1.Config, &c); err != nil || c.Vcpu != 1 || !v1.CreatedAt.Equal(tpl.CreatedAt) {
			t.Fatalf("version 1 = %+v (%v); want the created config and time", v1, err)
		}
		_, err := e.s.GetTemplateVersion(ctx, tpl.ID, 4)
		wantErr(t, "GetTemplateVersion of a version not made", err, store.ErrNotFound)
		_, err = e.s.UpdateTemplate(ctx, "missing", "bob", json.RawMessage(`{}`))
		wantErr(t, "UpdateTemplate of a missing template", err, store.ErrNotFound)
		_, err = e.s.UpdateTemplate(ctx, tpl.ID, "bob", json.RawMessage(`{`))
		wantErr(t, "UpdateTemplate with bad JSON", err, store.ErrInvalid)
		if got := must(e.s.GetTemplate(ctx, tpl.ID))(t); got.Version != 3 {
			t.Fatalf("a refused update changed the version to %d", got.Version)
		}
		if err := e.s.DeleteTemplate(ctx, tpl.ID); err != nil {
			t.Fatal(err)
		}
		if vs := must(e.s.ListTemplateVersions(ctx, tpl.ID, 0, 10))(t); len(vs) != 0 {
			t.Fatalf("versions outlived their template: %+v", vs)
		}
	}},

	{"pool/rollouts", func(t *testing.T, e *env) {
		p := must(e.s.CreatePool(ctx, store.Pool{Name: "warm", Project: "p1", TemplateID: "t1", TemplateVersion: 1, Size: 3, MinReady: 3, OnEmpty: "create"}))(t)
		if got := must(e.s.GetPool(ctx, p.ID))(t); got.TemplateVersion != 1 {
			t.Fatalf("pool template_version = %d; want 1", got.TemplateVersion)
		}
		if err := e.s.SetPoolTemplateVersion(ctx, p.ID, 2); err != nil {
			t.Fatal(err)
		}
		if got := must(e.s.GetPool(ctx, p.ID))(t); got.TemplateVersion != 2 {
			t.Fatalf("after SetPoolTemplateVersion: %d; want 2", got.TemplateVersion)
		}
		_, err := e.s.LatestRollout(ctx, p.ID)
		wantErr(t, "LatestRollout of a pool without one", err, store.ErrNotFound)
		r := store.Rollout{PoolID: p.ID, FromVersion: 2, ToVersion: 3, Canary: 1, MaxParallel: 2, MinHealthy: 1500 * time.Millisecond,
			ProgressDeadline: time.Minute, AutoRevert: true, ReadyLine: "nexus-guest: ready", State: "running", Phase: "canary", Actor: "alice"}
		r1 := must(e.s.CreateRollout(ctx, r))(t)
		if d := diff(r1, must(e.s.GetRollout(ctx, r1.ID))(t)); d != "" {
			t.Fatalf("GetRollout (-create +get):\n%s", d)
		}
		_, err = e.s.CreateRollout(ctx, r)
		wantErr(t, "a second active rollout", err, store.ErrConflict)
		e.clock.Advance(time.Second)
		got := must(e.s.SetRolloutState(ctx, r1.ID, []string{"running"}, "paused", "canary", "paused by alice"))(t)
		if got.State != "paused" || got.Message != "paused by alice" || !got.UpdatedAt.After(r1.UpdatedAt) {
			t.Fatalf("SetRolloutState = %+v", got)
		}
		_, err = e.s.SetRolloutState(ctx, r1.ID, []string{"running"}, "aborted", "canary", "")
		wantErr(t, "SetRolloutState from a state it is not in", err, store.ErrConflict)
		_, err = e.s.SetRolloutState(ctx, "missing", []string{"running"}, "aborted", "canary", "")
		wantErr(t, "SetRolloutState of a missing rollout", err, store.ErrNotFound)
		must(e.s.SetRolloutState(ctx, r1.ID, []string{"paused"}, "succeeded", "rolling", ""))(t)
		e.clock.Advance(time.Second)
		r.AutoPromote = true
		r2 := must(e.s.CreateRollout(ctx, r))(t) // the first is over
		if got := must(e.s.LatestRollout(ctx, p.ID))(t); got.ID != r2.ID || !got.AutoPromote {
			t.Fatalf("LatestRollout = %+v; want the second, %s, auto_promote", got, r2.ID)
		}
		// A rollout awaiting its promotion is active too.
		must(e.s.SetRolloutState(ctx, r2.ID, []string{"running"}, "awaiting_promotion", "canary", ""))(t)
		_, err = e.s.CreateRollout(ctx, r)
		wantErr(t, "a rollout while another awaits promotion", err, store.ErrConflict)
		if err := e.s.DeletePool(ctx, p.ID); err != nil {
			t.Fatal(err)
		}
		_, err = e.s.GetRollout(ctx, r2.ID)
		wantErr(t, "a rollout after its pool was deleted", err, store.ErrNotFound)
	}},

	{"image/crud", func(t *testing.T, e *env) {
		kernel := must(e.s.CreateImage(ctx, store.Image{
			Kind: store.ImageKernel, Name: "vmlinux-6.1", HostPath: "/srv/fc/images/vmlinux-6.1",
			SHA256: "ab12", Size: 21 << 20, ReadOnly: true,
		}))(t)
		rootfs := must(e.s.CreateImage(ctx, store.Image{
			Project: "p1", Kind: store.ImageRootfs, Name: "ubuntu", HostPath: "/srv/fc/images/ubuntu.ext4",
			Size: 1 << 30, ReadOnly: false,
		}))(t)
		if d := diff(kernel, must(e.s.GetImage(ctx, kernel.ID))(t)); d != "" {
			t.Fatalf("GetImage (-create +get):\n%s", d)
		}
		if d := diff(rootfs, must(e.s.GetImageByName(ctx, "p1", "ubuntu"))(t)); d != "" {
			t.Fatalf("GetImageByName (-create +get):\n%s", d)
		}
		_, err := e.s.CreateImage(ctx, store.Image{Project: "p1", Kind: store.ImageRootfs, Name: "ubuntu", HostPath: "/x"})
		wantErr(t, "duplicate image", err, store.ErrConflict)
		_, err = e.s.CreateImage(ctx, store.Image{Kind: "ramdisk", Name: "odd", HostPath: "/x"})
		wantErr(t, "unknown kind", err, store.ErrInvalid)
		initrd := must(e.s.CreateImage(ctx, store.Image{Kind: store.ImageInitrd, Name: "initrd", HostPath: "/srv/fc/images/initrd.cpio.gz", ReadOnly: true}))(t)
		if d := diff(initrd, must(e.s.GetImage(ctx, initrd.ID))(t)); d != "" {
			t.Fatalf("GetImage of an initrd (-create +get):\n%s", d)
		}
		if err := e.s.DeleteImage(ctx, initrd.ID); err != nil {
			t.Fatal(err)
		}
		must(e.s.CreateImage(ctx, store.Image{Project: "p2", Kind: store.ImageRootfs, Name: "alpine", HostPath: "/y"}))(t)

		for _, tc := range []struct {
			f    store.ImageFilter
			want int
		}{
			{store.ImageFilter{}, 3},
			{store.ImageFilter{Kind: store.ImageKernel}, 1},
			{store.ImageFilter{Kind: store.ImageRootfs}, 2},
			{store.ImageFilter{Project: "p1"}, 1},
			{store.ImageFilter{Project: "p1", IncludeGlobal: true}, 2},
			{store.ImageFilter{Project: "p1", IncludeGlobal: true, Kind: store.ImageKernel}, 1},
		} {
			if got := len(must(e.s.ListImages(ctx, tc.f))(t)); got != tc.want {
				t.Errorf("ListImages(%+v) = %d images; want %d", tc.f, got, tc.want)
			}
		}
		if err := e.s.DeleteImage(ctx, kernel.ID); err != nil {
			t.Fatal(err)
		}
		_, err = e.s.GetImage(ctx, kernel.ID)
		wantErr(t, "GetImage after delete", err, store.ErrNotFound)
		wantErr(t, "DeleteImage again", e.s.DeleteImage(ctx, kernel.ID), store.ErrNotFound)
	}},

	{"snapshot/crud", func(t *testing.T, e *env) {
		vm := must(e.s.CreateVM(ctx, newVM("web-1")))(t)
		sn := must(e.s.CreateSnapshot(ctx, store.Snapshot{
			VMID: vm.ID, Project: "default", HostID: "h1",
			Dir:       "/srv/fc/vms/" + vm.ID + "/snapshots/s1",
			StatePath: "/srv/fc/vms/" + vm.ID + "/snapshots/s1/vmstate",
			MemPath:   "/srv/fc/vms/" + vm.ID + "/snapshots/s1/mem",
			Size:      128<<20 + 4096,
			Files:     []store.SnapshotFile{{Path: "vmstate", Size: 4096}, {Path: "mem", Size: 128 << 20}},
			Meta:      json.RawMessage(`{"firecracker_version":"1.7.0","vm":{"vcpu":1,"mem_mib":128}}`),
		}))(t)
		if d := diff(sn, must(e.s.GetSnapshot(ctx, sn.ID))(t)); d != "" {
			t.Fatalf("GetSnapshot (-create +get):\n%s", d)
		}
		e.clock.Advance(time.Second)
		other := must(e.s.CreateSnapshot(ctx, store.Snapshot{VMID: "vm-2", Project: "p2", HostID: "h2", Dir: "/d", StatePath: "/d/s", MemPath: "/d/m"}))(t)
		if other.Files == nil || string(other.Meta) != "{}" {
			t.Fatalf("defaults: files %v meta %s; want [] and {}", other.Files, other.Meta)
		}
		for _, tc := range []struct {
			f    store.SnapshotFilter
			want int
		}{
			{store.SnapshotFilter{}, 2},
			{store.SnapshotFilter{VMID: vm.ID}, 1},
			{store.SnapshotFilter{Project: "p2"}, 1},
			{store.SnapshotFilter{HostID: "h1"}, 1},
			{store.SnapshotFilter{VMID: vm.ID, HostID: "h2"}, 0},
		} {
			if got := len(must(e.s.ListSnapshots(ctx, tc.f))(t)); got != tc.want {
				t.Errorf("ListSnapshots(%+v) = %d; want %d", tc.f, got, tc.want)
			}
		}
		// Snapshots outlive their VM (instantiate after delete).
		if err := e.s.DeleteVM(ctx, vm.ID); err != nil {
			t.Fatal(err)
		}
		must(e.s.GetSnapshot(ctx, sn.ID))(t)
		if err := e.s.DeleteSnapshot(ctx, sn.ID); err != nil {
			t.Fatal(err)
		}
		_, err := e.s.GetSnapshot(ctx, sn.ID)
		wantErr(t, "GetSnapshot after delete", err, store.ErrNotFound)
		wantErr(t, "DeleteSnapshot again", e.s.DeleteSnapshot(ctx, sn.ID), store.ErrNotFound)
	}},
}
