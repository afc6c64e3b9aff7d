package apitypes

import "time"

// QuotaLimits are a project's limits (PUT /v1/projects/{p}/quota's body);
// an absent field is no limit. VMs count whatever their state, from their
// create to their delete.
type QuotaLimits struct {
	VMs           *int64 `json:"vms,omitempty" minimum:"0" maximum:"1000000000" doc:"VMs in the project"`
	VCPUs         *int64 `json:"vcpus,omitempty" minimum:"0" maximum:"1000000000" doc:"vCPUs of its VMs"`
	MemMiB        *int64 `json:"mem_mib,omitempty" minimum:"0" maximum:"1000000000000" doc:"memory of its VMs, MiB"`
	Snapshots     *int64 `json:"snapshots,omitempty" minimum:"0" maximum:"1000000000" doc:"snapshots"`
	SnapshotBytes *int64 `json:"snapshot_bytes,omitempty" minimum:"0" maximum:"1000000000000000000" doc:"bytes of its snapshots"`
	Images        *int64 `json:"images,omitempty" minimum:"0" maximum:"1000000000" doc:"images registered in the project"`
	Templates     *int64 `json:"templates,omitempty" minimum:"0" maximum:"1000000000" doc:"templates"`
	Streams       *int64 `json:"streams,omitempty" minimum:"0" maximum:"1000000" doc:"log streams of its VMs open at once, per manager"`
}

// Quota is a project's quota.
type Quota struct {
	Project   string      `json:"project"`
	Limits    QuotaLimits `json:"limits"`
	UpdatedAt *time.Time  `json:"updated_at,omitempty" doc:"absent: never set"`
	Default   bool        `json:"default" doc:"true: the project has no quota of its own, and these are the manager's defaults (NEXUS_DEFAULT_QUOTA; none unless set)"`
}

// QuotaItem is GET and PUT /v1/projects/{p}/quota.
type QuotaItem struct {
	Item Quota `json:"item"`
}

// UsageCounts is what a project holds.
type UsageCounts struct {
	VMs           int64 `json:"vms"`
	VCPUs         int64 `json:"vcpus"`
	MemMiB        int64 `json:"mem_mib"`
	Snapshots     int64 `json:"snapshots"`
	SnapshotBytes int64 `json:"snapshot_bytes"`
	Images        int64 `json:"images"`
	Templates     int64 `json:"templates"`
	Streams       int64 `json:"streams" doc:"log streams of its VMs open now on the manager that answers"`
}

// ProjectUsage is a project's usage against its quota.
type ProjectUsage struct {
	Project string      `json:"project"`
	Usage   UsageCounts `json:"usage"`
	Limits  QuotaLimits `json:"limits"`
	Default bool        `json:"default" doc:"the limits are the manager's defaults"`
}

// ProjectUsageItem is GET /v1/projects/{p}/usage.
type ProjectUsageItem struct {
	Item ProjectUsage `json:"item"`
}
