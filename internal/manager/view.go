package manager

import (
	"encoding/json"
	"path/filepath"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// Scope limits what a caller sees: one project, or every project ("*").
// The zero Scope sees nothing, so a scope that was never filled in fails
// closed. Admin marks an admin caller, the only one who may name raw host
// paths (a raw path can attach any host file to a guest).
type Scope struct {
	Project string
	Admin   bool
}

// All is the scope of an admin: every project.
var All = Scope{Project: "*", Admin: true}

// Sees reports whether the scope includes project.
func (s Scope) Sees(project string) bool {
	return s.Project == "*" || (s.Project != "" && s.Project == project)
}

// filterProject returns the project filter for a list: the scope's own
// project, or the requested one when the scope sees everything.
func (s Scope) filterProject(requested string) (string, bool) {
	if s.Project == "*" {
		return requested, true
	}
	if s.Project == "" {
		return "", false
	}
	if requested != "" && requested != s.Project {
		return "", false
	}
	return s.Project, true
}

// spec is what the store's VM.Spec column holds: the effective
// configuration the VM boots with (defaults applied).
type spec struct {
	apitypes.VMConfig
}

func decodeSpec(vm store.VM) spec {
	var sp spec
	if len(vm.Spec) > 0 {
		_ = json.Unmarshal(vm.Spec, &sp)
	}
	return sp
}

// View renders a stored VM for the API.
func View(vm store.VM) apitypes.VM {
	sp := decodeSpec(vm)
	v := apitypes.VM{
		ID: vm.ID, Name: vm.Name, Project: vm.Project,
		State: string(vm.State), DesiredState: string(vm.DesiredState),
		HostID: vm.HostID, HostAddr: vm.HostAddr, APISock: vm.APISock,
		Tap: vm.TAP, MAC: vm.MAC, LogPath: vm.LogPath,
		Vcpu: vm.VCPU, MemMib: vm.MemMiB,
		KernelImageID: vm.KernelImageID, KernelPath: vm.KernelPath,
		InitrdImageID: vm.InitrdImageID, InitrdPath: vm.InitrdPath,
		RootfsImageID: vm.RootfsImageID, RootfsPath: vm.RootfsPath,
		BootArgs: vm.BootArgs, ExtraDrives: sp.ExtraDrives, NIC: sp.NIC,
		IP: vm.IP, Subnet: vm.Subnet, Gateway: vm.Gateway, BootedAt: vm.BootedAt, GuestReadyAt: vm.GuestReadyAt,
		TemplateID: vm.TemplateID, TemplateVersion: vm.TemplateVersion, TemplateConfig: vm.TemplateConfig, Overrides: vm.Overrides,
		Tags: vm.Tags, CreatedAt: vm.CreatedAt, UpdatedAt: vm.UpdatedAt, LastError: vm.LastError,
		ExpiresAt: vm.ExpiresAt, OnExpiry: vm.OnExpiry, Network: networkView(vm, sp), PoolID: vm.PoolID,
	}
	if v.Tags == nil {
		v.Tags = map[string]string{}
	}
	if vm.LogPath != "" {
		v.ConsolePath = filepath.Join(filepath.Dir(vm.LogPath), "console.log")
	}
	return v
}
