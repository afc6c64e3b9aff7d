package apitypes

import (
	"encoding/json"
	"time"
)

// SharedProject is the project of images every project may use. Only
// admins register (and delete) them.
const SharedProject = "*"

// CreateImageRequest is the body of POST /v1/images.
type CreateImageRequest struct {
	Kind     string `json:"kind" enum:"kernel,initrd,rootfs"`
	Name     string `json:"name" minLength:"1" maxLength:"63" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"unique within the project"`
	HostPath string `json:"host_path" minLength:"1" maxLength:"4096" doc:"the file on the hosts: absolute, or relative to FC_IMAGES_DIR; it must resolve (symlinks followed) to a regular file under FC_IMAGES_DIR"`
	SHA256   string `json:"sha256,omitempty" pattern:"^[0-9a-fA-F]{64}$" doc:"expected checksum: registration fails if the file differs; computed when omitted"`
	Project  string `json:"project,omitempty" maxLength:"63" doc:"default: the token's project; \"*\" shares the image with every project (admins only)"`
	ReadOnly bool   `json:"read_only,omitempty" doc:"rootfs: VMs attach the image itself read-only instead of a private copy (kernels and initrds are always only read)"`
}

// Image is a registered kernel, initrd or rootfs image.
type Image struct {
	ID        string    `json:"id"`
	Kind      string    `json:"kind" enum:"kernel,initrd,rootfs"`
	Name      string    `json:"name"`
	Project   string    `json:"project" doc:"\"*\" for a shared image"`
	HostPath  string    `json:"host_path" doc:"canonical path on the hosts (symlinks resolved)"`
	SHA256    string    `json:"sha256"`
	Size      int64     `json:"size"`
	ReadOnly  bool      `json:"read_only"`
	CreatedAt time.Time `json:"created_at"`
}

// ImageItem is GET /v1/images/{id}.
type ImageItem struct {
	Item Image `json:"item"`
}

// ImageCreated is the answer of POST /v1/images: {item} like GET, with the
// image's fields at the top level too (deprecated: read item).
type ImageCreated struct {
	Image
	Item Image `json:"item"`
}

// ImageList is GET /v1/images.
type ImageList struct {
	Items []Image `json:"items"`
}

// TemplateConfig is a template's VM configuration. It references
// registered images only, never host paths. As overrides at instantiation
// every field is optional and replaces the template's (extra_drives and
// nic as a whole).
type TemplateConfig struct {
	Vcpu          *int         `json:"vcpu,omitempty" minimum:"1" maximum:"32" doc:"vCPUs (default 1)"`
	MemMib        *int         `json:"mem_mib,omitempty" minimum:"1" maximum:"1048576" doc:"guest memory in MiB (default 128)"`
	KernelImageID string       `json:"kernel_image_id,omitempty" maxLength:"64" doc:"a kernel image: id, or name (stored as its id); required in a template"`
	InitrdImageID string       `json:"initrd_image_id,omitempty" maxLength:"64" doc:"an initrd image: id, or name (stored as its id)"`
	RootfsImageID string       `json:"rootfs_image_id,omitempty" maxLength:"64" doc:"a rootfs image: id, or name (stored as its id)"`
	BootArgs      string       `json:"boot_args,omitempty" maxLength:"2048"`
	ExtraDrives   []ExtraDrive `json:"extra_drives,omitempty" maxItems:"16" doc:"each with image_id (no path)"`
	NIC           *NIC         `json:"nic,omitempty"`
}

// CreateTemplateRequest is the body of POST /v1/templates.
type CreateTemplateRequest struct {
	Name    string         `json:"name" minLength:"1" maxLength:"63" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"unique within the project"`
	Project string         `json:"project,omitempty" maxLength:"63" doc:"default: the token's project"`
	Config  TemplateConfig `json:"config"`
}

// Template is a saved, named VM configuration.
type Template struct {
	ID        string         `json:"id"`
	Name      string         `json:"name"`
	Project   string         `json:"project"`
	Owner     string         `json:"owner,omitempty"`
	Config    TemplateConfig `json:"config"`
	Version   int            `json:"version" doc:"the current version: 1 on create, one more on every update"`
	CreatedAt time.Time      `json:"created_at"`
}

// UpdateTemplateRequest is the body of PUT /v1/templates/{id}: the whole
// new config, which becomes the template's next version.
type UpdateTemplateRequest struct {
	Config TemplateConfig `json:"config"`
}

// TemplateVersion is one immutable config a template had.
type TemplateVersion struct {
	TemplateID string         `json:"template_id"`
	Version    int            `json:"version"`
	Config     TemplateConfig `json:"config"`
	Owner      string         `json:"owner,omitempty" doc:"who made this version"`
	CreatedAt  time.Time      `json:"created_at"`
}

// TemplateVersionItem is GET /v1/templates/{id}/versions/{version}.
type TemplateVersionItem struct {
	Item TemplateVersion `json:"item"`
}

// TemplateVersionList is GET /v1/templates/{id}/versions: newest first.
type TemplateVersionList struct {
	Items []TemplateVersion `json:"items"`
	// NextBefore pages on: pass it as before (0: no more).
	NextBefore int `json:"next_before,omitempty" doc:"pass as before for the next page; absent on the last"`
}

// TemplateChange is one config field that differs between two versions
// (a field absent from one side has no from or to).
type TemplateChange struct {
	Field string          `json:"field" doc:"the config field, e.g. kernel_image_id"`
	From  json.RawMessage `json:"from,omitempty"`
	To    json.RawMessage `json:"to,omitempty"`
}

// TemplateDiff is GET /v1/templates/{id}/diff: the fields that differ,
// sorted by name (empty when the versions are the same).
type TemplateDiff struct {
	TemplateID string           `json:"template_id"`
	From       int              `json:"from"`
	To         int              `json:"to"`
	Changes    []TemplateChange `json:"changes"`
}

// TemplateItem is GET /v1/templates/{id}.
type TemplateItem struct {
	Item Template `json:"item"`
}

// TemplateCreated is the answer of POST /v1/templates: {item} like GET,
// with the template's fields at the top level too (deprecated: read item).
type TemplateCreated struct {
	Template
	Item Template `json:"item"`
}

// TemplateList is GET /v1/templates.
type TemplateList struct {
	Items []Template `json:"items"`
}

// InstantiateRequest is the body of POST /v1/templates/{id}/instantiate.
type InstantiateRequest struct {
	Name      string            `json:"name" minLength:"1" maxLength:"63" pattern:"^[A-Za-z0-9][A-Za-z0-9._-]*$" doc:"the VM's name; with count, VMs are named name-1 … name-N"`
	Tags      map[string]string `json:"tags,omitempty"`
	Overrides *TemplateConfig   `json:"overrides,omitempty" doc:"fields of the template's config to replace for these VMs"`
	Count     int               `json:"count,omitempty" minimum:"1" maximum:"100" doc:"how many VMs (default 1); all are made or none: on a failure the others of the call are deleted"`
	Expiry
}

// InstantiateResponse is the answer of POST /v1/templates/{id}/instantiate.
type InstantiateResponse struct {
	ID    string   `json:"id" doc:"the first (or only) VM"`
	IDs   []string `json:"ids" doc:"every VM made, in name order"`
	Items []VM     `json:"items"`
}
