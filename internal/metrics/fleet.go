// Package metrics holds the manager's fleet gauges: what the store says
// about VMs, hosts and snapshots, computed at scrape time from grouped
// queries. It must not import the api or manager packages; the caller
// passes the store and a host lister in.
//
// Cardinality is bounded by the fleet, never by the number of VMs:
//
//	nexus_vms{state,host}                 ≤ 8 states × (hosts + 1)
//	nexus_project_vms{project,state}      ≤ 8 states × (MaxProjects + 1)
//	nexus_host_*{host}                    one series per host (state: 3 per host)
//	nexus_snapshots{project}, …_bytes     ≤ MaxProjects + 1
//
// Projects beyond MaxProjects (the largest are kept) are summed into the
// project "_other", so a tenant creating projects cannot grow the series.
package metrics

import (
	"context"
	"log/slog"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/store"
)

// FleetStore is what the fleet gauges read from the store.
type FleetStore interface {
	VMCounts(ctx context.Context) ([]store.VMCount, error)
	SnapshotCounts(ctx context.Context) ([]store.SnapshotCount, error)
	Ping(ctx context.Context) error
}

// FleetConfig configures NewFleet.
type FleetConfig struct {
	Store FleetStore
	// Hosts lists the fleet with each host's effective state (the
	// manager's view: a silent host is unreachable).
	Hosts func(ctx context.Context) ([]store.Host, error)
	// MaxProjects bounds the project label (default 100).
	MaxProjects int
	// Timeout bounds the store queries of one scrape (default 5s).
	Timeout time.Duration
	Log     *slog.Logger
}

// OtherProject is the project label of the projects beyond MaxProjects.
const OtherProject = "_other"

// NoHost is the host label of VMs not placed on a host.
const NoHost = "none"

// Fleet is a prometheus.Collector of the fleet gauges.
type Fleet struct {
	cfg FleetConfig

	vms, projectVMs                      *prometheus.Desc
	hostCapVCPU, hostCapMem              *prometheus.Desc
	hostAllocVCPU, hostAllocMem, hostVMs *prometheus.Desc
	hostState, hostSeen, hostInfo        *prometheus.Desc
	snaps, snapBytes                     *prometheus.Desc
	storeUp, storeLatency                *prometheus.Desc
}

var _ prometheus.Collector = (*Fleet)(nil)

// NewFleet returns the fleet collector; register it on the manager's registry.
func NewFleet(cfg FleetConfig) *Fleet {
	if cfg.MaxProjects <= 0 {
		cfg.MaxProjects = 100
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	d := prometheus.NewDesc
	return &Fleet{
		cfg:           cfg,
		vms:           d("nexus_vms", "VMs by observed state and host (host \"none\": not placed).", []string{"state", "host"}, nil),
		projectVMs:    d("nexus_project_vms", "VMs by project and observed state (projects beyond the cap are summed into \"_other\").", []string{"project", "state"}, nil),
		hostCapVCPU:   d("nexus_host_capacity_vcpus", "vCPUs a host offers (scaled for simulated hosts), as its agent reports.", []string{"host"}, nil),
		hostCapMem:    d("nexus_host_capacity_memory_bytes", "Memory a host offers (scaled for simulated hosts), as its agent reports.", []string{"host"}, nil),
		hostAllocVCPU: d("nexus_host_allocated_vcpus", "vCPUs held by the live VMMs of a host, as its agent reports.", []string{"host"}, nil),
		hostAllocMem:  d("nexus_host_allocated_memory_bytes", "Memory held by the live VMMs of a host, as its agent reports.", []string{"host"}, nil),
		hostVMs:       d("nexus_host_vmms", "Live VMM processes on a host, as its agent reports.", []string{"host"}, nil),
		hostState:     d("nexus_host_state", "1 for the host's current state (ready, draining or unreachable), 0 for the others.", []string{"host", "state"}, nil),
		hostSeen:      d("nexus_host_last_seen_timestamp_seconds", "When the host's agent last reported (Unix time).", []string{"host"}, nil),
		hostInfo:      d("nexus_host_info", "Always 1; the host's id, VMM version and whether it is simulated.", []string{"host", "host_id", "vmm", "simulated"}, nil),
		snaps:         d("nexus_snapshots", "Snapshots in the catalog by project.", []string{"project"}, nil),
		snapBytes:     d("nexus_snapshot_bytes", "Bytes of the snapshots in the catalog by project.", []string{"project"}, nil),
		storeUp:       d("nexus_store_up", "1 when the store answered this scrape's queries.", nil, nil),
		storeLatency:  d("nexus_store_query_duration_seconds", "How long this scrape's store queries took.", []string{"query"}, nil),
	}
}

// Describe sends every descriptor.
func (f *Fleet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{f.vms, f.projectVMs, f.hostCapVCPU, f.hostCapMem, f.hostAllocVCPU, f.hostAllocMem,
		f.hostVMs, f.hostState, f.hostSeen, f.hostInfo, f.snaps, f.snapBytes, f.storeUp, f.storeLatency} {
		ch <- d
	}
}

// hostStates are every state a host may show, so that each host has a
// series per state and a state change is a value change, not a new series.
var hostStates = []store.HostState{store.HostReady, store.HostDraining, store.HostUnreachable}

// Collect queries the store. A failed query drops its gauges and sets
// nexus_store_up to 0 rather than failing the whole scrape: the process
// and HTTP metrics still matter when the database is away.
func (f *Fleet) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.Timeout)
	defer cancel()
	up := 1.0
	timed := func(query string, fn func() error) bool {
		start := time.Now()
		err := fn()
		ch <- prometheus.MustNewConstMetric(f.storeLatency, prometheus.GaugeValue, time.Since(start).Seconds(), query)
		if err != nil {
			up = 0
			f.cfg.Log.Warn("fleet metrics: store query failed", "query", query, "err", err)
			return false
		}
		return true
	}
	defer func() { ch <- prometheus.MustNewConstMetric(f.storeUp, prometheus.GaugeValue, up) }()

	if !timed("ping", func() error { return f.cfg.Store.Ping(ctx) }) {
		return // the other queries would only wait for the same timeout
	}
	var hosts []store.Host
	names := map[string]string{} // host id → name
	if f.cfg.Hosts != nil && timed("hosts", func() (err error) { hosts, err = f.cfg.Hosts(ctx); return err }) {
		for _, h := range hosts {
			names[h.ID] = h.Name
			f.collectHost(ch, h)
		}
	}
	var counts []store.VMCount
	if timed("vm_counts", func() (err error) { counts, err = f.cfg.Store.VMCounts(ctx); return err }) {
		f.collectVMs(ch, counts, names)
	}
	var snaps []store.SnapshotCount
	if timed("snapshot_counts", func() (err error) { snaps, err = f.cfg.Store.SnapshotCounts(ctx); return err }) {
		f.collectSnapshots(ch, snaps)
	}
}

const mib = 1 << 20

func (f *Fleet) collectHost(ch chan<- prometheus.Metric, h store.Host) {
	g := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	g(f.hostCapVCPU, float64(h.Capacity.VCPU), h.Name)
	g(f.hostCapMem, float64(h.Capacity.MemMiB)*mib, h.Name)
	g(f.hostAllocVCPU, float64(h.Allocated.VCPU), h.Name)
	g(f.hostAllocMem, float64(h.Allocated.MemMiB)*mib, h.Name)
	g(f.hostVMs, float64(h.VMs), h.Name)
	for _, s := range hostStates {
		v := 0.0
		if h.State == s {
			v = 1
		}
		g(f.hostState, v, h.Name, string(s))
	}
	if !h.LastSeenAt.IsZero() {
		g(f.hostSeen, float64(h.LastSeenAt.UnixMilli())/1000, h.Name)
	}
	sim := "false"
	if isSim(h.VMM) {
		sim = "true"
	}
	g(f.hostInfo, 1, h.Name, h.ID, h.VMM, sim)
}

func isSim(vmm string) bool { return len(vmm) > 4 && vmm[len(vmm)-4:] == "-sim" }

// collectVMs folds the (state, project, host) groups into the two
// bounded families.
func (f *Fleet) collectVMs(ch chan<- prometheus.Metric, counts []store.VMCount, names map[string]string) {
	type sh struct{ state, host string }
	byHost := map[sh]int{}
	perProject := map[string]int{}
	for _, c := range counts {
		host := NoHost
		if c.HostID != "" {
			host = names[c.HostID]
			if host == "" {
				host = c.HostID // a VM on a host removed since (the reconciler deals with it)
			}
		}
		byHost[sh{string(c.State), host}] += c.VMs
		perProject[c.Project] += c.VMs
	}
	for k, n := range byHost {
		ch <- prometheus.MustNewConstMetric(f.vms, prometheus.GaugeValue, float64(n), k.state, k.host)
	}
	keep := f.topProjects(perProject)
	type ps struct{ project, state string }
	byProject := map[ps]int{}
	for _, c := range counts {
		p := c.Project
		if !keep[p] {
			p = OtherProject
		}
		byProject[ps{p, string(c.State)}] += c.VMs
	}
	for k, n := range byProject {
		ch <- prometheus.MustNewConstMetric(f.projectVMs, prometheus.GaugeValue, float64(n), k.project, k.state)
	}
}

// topProjects keeps the MaxProjects largest projects (by name on ties, so
// the set is stable between scrapes).
func (f *Fleet) topProjects(size map[string]int) map[string]bool {
	names := make([]string, 0, len(size))
	for p := range size {
		names = append(names, p)
	}
	sort.Slice(names, func(i, j int) bool {
		if size[names[i]] != size[names[j]] {
			return size[names[i]] > size[names[j]]
		}
		return names[i] < names[j]
	})
	keep := map[string]bool{}
	for i, p := range names {
		if i >= f.cfg.MaxProjects {
			break
		}
		keep[p] = true
	}
	return keep
}

func (f *Fleet) collectSnapshots(ch chan<- prometheus.Metric, counts []store.SnapshotCount) {
	size := map[string]int{}
	for _, c := range counts {
		size[c.Project] = c.Snapshots
	}
	keep := f.topProjects(size)
	type agg struct {
		n     int
		bytes int64
	}
	out := map[string]agg{}
	for _, c := range counts {
		p := c.Project
		if !keep[p] {
			p = OtherProject
		}
		a := out[p]
		a.n += c.Snapshots
		a.bytes += c.Bytes
		out[p] = a
	}
	for p, a := range out {
		ch <- prometheus.MustNewConstMetric(f.snaps, prometheus.GaugeValue, float64(a.n), p)
		ch <- prometheus.MustNewConstMetric(f.snapBytes, prometheus.GaugeValue, float64(a.bytes), p)
	}
}
