package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/hollow"
	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/httpmw"
	"github.com/nexus-microvm/nexus/internal/lifecycle"
	"github.com/nexus-microvm/nexus/internal/pki"
	"github.com/nexus-microvm/nexus/internal/secretfile"
)

// Options are the agent's settings (flags and environment of `nexus agent`).
type Options struct {
	Name       string // AGENT_NAME
	Bind       string // AGENT_BIND
	Advertise  string // URL the manager uses to reach this agent (default http(s)://<bind>)
	Manager    string // AGENT_MANAGER: register and heartbeat there when set
	Token      string // AGENT_TOKEN: the fleet's join token
	RunDir     string // FC_RUN_DIR
	ImagesDir  string // FC_IMAGES_DIR
	Bridge     string // FC_BRIDGE
	BridgeCIDR string // FC_BRIDGE_CIDR: gateway address/prefix of the VM subnet
	Uplink     string // FC_UPLINK
	Bin        string // FC_BIN
	Mode       string // NEXUS_MODE: dev or prod
	StopGrace  time.Duration
	MaxSpawns  int // AGENT_MAX_SPAWNS: spawns at once (0: the CPU count, at least 2)
	Version    string
	// VMMEnv is passed to every VMM process (firecracker-sim's tuning knobs).
	VMMEnv []string
	// Hollow runs a simulated host (package hollow): VMMs in-process, TAPs
	// in memory, no root needed. For tests and scale benchmarks only; the
	// host says so when it registers.
	Hollow bool
	// HollowCapacity, for a hollow host, replaces the capacity it reports
	// (tests and benchmarks of placement); zero: the machine's, scaled.
	HollowCapacity agentapi.Resources
	// Heartbeat is the period of reports to the manager.
	Heartbeat time.Duration
	// MetricsToken (AGENT_METRICS_TOKEN) opens GET /metrics only.
	MetricsToken string

	// Jail is FC_JAIL: "on" confines every VMM (docs/security.md), "off"
	// does not, "" means on in prod mode and off in dev mode.
	Jail string
	// Jailer is FC_JAILER: firecracker's jailer binary; unset, the agent
	// confines VMMs itself with the nexus-jail helper.
	Jailer string
	// JailUIDBase and JailUIDCount are the uid/gid range of jailed VMMs
	// (FC_JAIL_UID_BASE, FC_JAIL_UID_COUNT; zero: the defaults).
	JailUIDBase, JailUIDCount int
	// JailHelper is the nexus-jail binary (default: next to nexus, else
	// nexus itself).
	JailHelper string

	// TLS is --tls-cert, --tls-key and --tls-ca (AGENT_TLS_*): with a
	// certificate the agent serves HTTPS; with a CA it accepts only
	// clients (the manager) with a certificate of that CA, and checks the
	// manager's certificate against it when it registers.
	TLS pki.Files
}

// jailed says whether VMMs are confined, from FC_JAIL and the mode.
func (o Options) jailed() (bool, error) {
	switch o.Jail {
	case "on":
		return true, nil
	case "off":
		return false, nil
	case "":
		return o.Mode == "prod", nil
	}
	return false, fmt.Errorf("agent: FC_JAIL must be on or off (default: on in prod mode), not %q", o.Jail)
}

// Running is a started agent.
type Running struct {
	Agent *Agent
	Addr  string // listen address actually bound
	URL   string // advertised base URL
	Token string
	// Owner is the instance id in the mark of every host object it makes.
	Owner string
	done  <-chan struct{}
}

// Start brings the agent up: run dir, token, VMM supervisor (adopting the
// VMMs of a previous agent process), bridge and NAT, HTTP listener and,
// with a manager configured, registration and heartbeats. It returns once
// the listener is bound; the agent runs until ctx ends.
func Start(ctx context.Context, o Options, log *slog.Logger) (*Running, error) {
	if o.MaxSpawns < 0 {
		return nil, fmt.Errorf("agent: AGENT_MAX_SPAWNS (--max-spawns) must be 0 (the host's CPU count) or more, not %d", o.MaxSpawns)
	}
	if o.RunDir == "" {
		o.RunDir = "/srv/fc"
	}
	runDir, err := filepath.Abs(o.RunDir)
	if err != nil {
		return nil, fmt.Errorf("agent: run dir: %w", err)
	}
	layout := hostlayout.Layout{RunDir: runDir}
	// A VM id is a 36-byte UUID: the longest socket path follows from the run dir.
	if n := len(layout.SockPath("00000000-0000-0000-0000-000000000000")); n > vmm.MaxSocketPath {
		return nil, fmt.Errorf("agent: FC_RUN_DIR %s is too long: VM sockets under it would be %d bytes, unix sockets allow %d", runDir, n, vmm.MaxSocketPath)
	}
	if err := os.MkdirAll(layout.VMsDir(), 0o750); err != nil {
		return nil, fmt.Errorf("agent: create run dir %s: %w", layout.VMsDir(), err)
	}
	if o.Mode == "" {
		o.Mode = "dev"
	}
	if o.Mode != "dev" && o.Mode != "prod" {
		return nil, fmt.Errorf("agent: NEXUS_MODE must be dev or prod, not %q", o.Mode)
	}
	if _, err := o.jailed(); err != nil {
		return nil, err
	}
	if o.ImagesDir == "" {
		o.ImagesDir = layout.ImagesDir()
	}
	if o.ImagesDir, err = filepath.Abs(o.ImagesDir); err != nil {
		return nil, fmt.Errorf("agent: images dir: %w", err)
	}
	if o.Name == "" {
		o.Name, _ = os.Hostname()
	}
	if o.Token == "" {
		if o.Token, err = secretfile.LoadOrCreate(filepath.Join(runDir, "agent.token")); err != nil {
			return nil, err
		}
	}
	if o.Mode == "prod" && len(o.Token) < pki.MinJoinTokenBytes {
		return nil, fmt.Errorf("agent: prod mode needs a join token of at least %d bytes (AGENT_TOKEN is %d): it alone guards an API that starts processes as root; make one with `head -c 32 /dev/urandom | base64`",
			pki.MinJoinTokenBytes, len(o.Token))
	}
	if err := o.TLS.Validate(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if o.Mode == "prod" && !o.TLS.Enabled() && !pki.LoopbackOnly(o.Bind) {
		return nil, fmt.Errorf("agent: prod mode serves plain HTTP on loopback only, and %s is not: the agent API starts processes as root; set --tls-cert and --tls-key (and --tls-ca, so only the manager's certificate gets in)", o.Bind)
	}
	var tlsFiles *pki.Reloader
	if o.TLS.Enabled() || o.TLS.CA != "" {
		if tlsFiles, err = pki.NewReloader(o.TLS, log); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	unlockRunDir, err := LockRunDir(runDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	started := false
	defer func() {
		if !started {
			unlockRunDir()
		}
	}()
	owner, err := InstanceID(runDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var h host
	if o.Hollow {
		h = startHollow(o, layout)
		log.Warn("hollow agent: VMMs are firecracker-sim inside this process and TAPs exist only in memory; for tests and benchmarks only")
		if jailed, _ := o.jailed(); jailed {
			log.Info("hollow agent: jail mode does not apply (there are no VMM processes to confine)")
		}
	} else if h, err = startReal(ctx, o, layout, owner, log); err != nil {
		return nil, err
	}
	sup, nw, version, simulated := h.vmms, h.net, h.version, h.simulated

	cfg := Config{
		Name: o.Name, Layout: layout, Token: o.Token, StopGrace: o.StopGrace, MaxSpawns: o.MaxSpawns,
		Version: o.Version, VMMVersion: version, Simulated: simulated, DevMode: o.Mode != "prod", ImagesDir: o.ImagesDir,
		Owner: owner, Bridge: h.bridge, MetricsToken: o.MetricsToken,
		Jail: h.jail, TLS: o.TLS.Enabled(), MutualTLS: o.TLS.Enabled() && o.TLS.CA != "",
	}
	if o.Hollow {
		cfg.Capacity = o.HollowCapacity
	}
	if o.Mode == "prod" {
		// The VM's own files and snapshots in the run dir are allowed by
		// the proxy's own rules; outside it, only the images dir.
		cfg.ReadRoots = []string{o.ImagesDir}
	}
	a, err := New(cfg, sup, nw, log)
	if err != nil {
		h.release()
		return nil, err
	}
	ln, err := net.Listen("tcp", o.Bind)
	if err != nil {
		h.release()
		return nil, fmt.Errorf("agent: listen on %s: %w", o.Bind, err)
	}
	r := &Running{Agent: a, Addr: ln.Addr().String(), Token: o.Token, Owner: owner}
	scheme := "http"
	if o.TLS.Enabled() {
		// Only the manager may call: with a CA, a client certificate of it
		// is required before any request is read.
		ln = tls.NewListener(ln, tlsFiles.ServerConfig(o.TLS.CA != ""))
		scheme = "https"
		if o.TLS.CA == "" {
			log.Warn("TLS without --tls-ca: the agent checks no client certificate; only the join token keeps others out")
		}
	}
	r.URL = o.Advertise
	if r.URL == "" {
		r.URL = scheme + "://" + r.Addr
	}
	log.Info("agent listening", "addr", r.Addr, "url", r.URL, "name", o.Name, "vmm_version", version, "simulated", simulated, "hollow", o.Hollow, "run_dir", runDir,
		"tls", o.TLS.Enabled(), "mutual_tls", o.TLS.Enabled() && o.TLS.CA != "", "jail", cmp.Or(h.jail, "off"))

	var bg lifecycle.Group
	bg.Go(func() { h.run(ctx) })
	if o.Manager != "" {
		a.guests.enable()
		bg.Go(func() { a.guests.run(ctx) })
		bg.Go(func() { newRegistrar(o, r.URL, a, tlsFiles, log).run(ctx) })
	}
	// Streams end and in-flight requests (a spawn writing its handle, say)
	// drain; the watchers are joined; only then are networking, cgroups and
	// the run dir released.
	started = true
	r.done = httpmw.Serve(ctx, ln, a.Handler(), log, httpmw.Budgets{Drain: 10 * time.Second, Cleanup: 5 * time.Second}, func(cleanup context.Context) {
		if !bg.Wait(cleanup) {
			log.Error("shutdown: agent goroutines did not end in time")
		}
		h.release()
		unlockRunDir()
	})
	return r, nil
}

// host is what the agent runs VMs on: real processes and netlink, or a
// hollow (simulated) host.
type host struct {
	vmms      VMMs
	net       Network
	version   string // the VMM's
	simulated bool
	jail      string         // how VMMs are confined (vmm.Supervisor.JailMode)
	bridge    network.Bridge // as set up at start
	// run watches the VMMs and keeps the network until ctx ends.
	run func(ctx context.Context)
	// release frees the host once the agent's goroutines have ended.
	release func()
}

// startReal prepares a real host: the VMM supervisor (adopting the VMMs of
// a previous agent process), the bridge and NAT.
func startReal(ctx context.Context, o Options, layout hostlayout.Layout, owner string, log *slog.Logger) (host, error) {
	var err error
	jailed, _ := o.jailed()
	missing, err := missingCapabilities(baseCaps)
	if err != nil {
		return host{}, fmt.Errorf("agent: %w", err)
	}
	if len(missing) > 0 {
		log.Warn("the agent lacks capabilities: creating TAP devices and NAT will fail", "uid", os.Geteuid(), "missing", describeCaps(missing))
	}
	if jailed {
		// Without these a VMM cannot be confined: refuse rather than run it
		// unconfined.
		if missing, err = missingCapabilities(jailCaps); err != nil || len(missing) > 0 {
			return host{}, fmt.Errorf("agent: jail mode needs capabilities this process lacks: %s (run the agent as root with them, see docs/security.md, or set FC_JAIL=off)", describeCaps(missing))
		}
	}

	vcfg := vmm.Config{Bin: o.Bin, Layout: layout, Logger: log, Env: o.VMMEnv, Owner: owner}
	if jailed {
		vcfg.Jail = &vmm.JailConfig{UIDBase: o.JailUIDBase, UIDCount: o.JailUIDCount, Jailer: o.Jailer, Helper: o.JailHelper}
		if vcfg.Jail.UIDBase == 0 {
			vcfg.Jail.UIDBase = vmm.DefaultJailUIDBase
		}
		if vcfg.Jail.UIDCount == 0 {
			vcfg.Jail.UIDCount = vmm.DefaultJailUIDCount
		}
		if clash := uidRangeClash(vcfg.Jail.UIDBase, vcfg.Jail.UIDCount); clash != "" {
			log.Warn("the jail uid range overlaps accounts of this host: choose another FC_JAIL_UID_BASE", "clash", clash)
		}
	}
	if vmm.SystemdAvailable() {
		// Each VMM in its own transient scope, so that restarting the
		// agent's unit (KillMode=control-group) does not kill the VMs.
		sc, err := vmm.NewSystemdScoper(ctx, owner)
		if err != nil {
			log.Warn("systemd is PID 1 but its bus is not reachable: VMMs stay in the agent's cgroup", "err", err)
		} else {
			vcfg.Scoper = sc
			log.Info("VMMs run in transient systemd scopes fc-<vm-id>.scope")
		}
	}
	sup, err := vmm.New(vcfg)
	if err != nil {
		return host{}, fmt.Errorf("agent: %w (set FC_BIN to firecracker or firecracker-sim)", err)
	}
	version, simulated := vmmVersion(ctx, sup.Bin())
	if v, ok := firecracker.ParseVersion(version); ok {
		sup.SetCreatesLogFiles(firecracker.FeaturesOf(v).CreatesLogFiles)
	}
	if jailed {
		log.Info("jail mode: every VMM runs as its own uid in a chroot, new mount and PID namespaces, no capabilities",
			"confined_by", sup.JailMode(), "helper", sup.JailHelper(), "uids", fmt.Sprintf("%d+%d", vcfg.Jail.UIDBase, vcfg.Jail.UIDCount),
			"chroot_base", filepath.Join(layout.RunDir, "jail"))
		if m := sup.MissingLimits(); len(m) > 0 {
			log.Warn("jail mode: no cgroup hierarchy takes these VMM limits; VMMs run without them", "limits", strings.Join(m, ","))
		}
	}
	adopted, err := sup.Recover()
	if err != nil {
		return host{}, fmt.Errorf("agent: %w", err)
	}
	for _, h := range adopted {
		log.Info("adopted running vmm", "vm_id", h.VMID, "pid", h.PID)
	}

	ncfg := network.Config{Owner: owner, Bridge: o.Bridge, Uplink: o.Uplink}
	if o.BridgeCIDR != "" {
		if ncfg.Gateway, err = netip.ParsePrefix(o.BridgeCIDR); err != nil {
			return host{}, fmt.Errorf("agent: FC_BRIDGE_CIDR %q: %w", o.BridgeCIDR, err)
		}
	}
	nw, err := network.New(ncfg, log)
	if err != nil {
		return host{}, fmt.Errorf("agent: networking: %w", err)
	}
	br, err := nw.EnsureBridge(ctx)
	if errors.Is(err, network.ErrNoUplink) && o.Uplink == "" {
		// No default route to masquerade out of: run without NAT rather
		// than not at all, and say so.
		log.Warn("no IPv4 default route: VMs get no NAT to the outside; set FC_UPLINK to choose an uplink")
		nw.Close()
		ncfg.Uplink = network.UplinkNone
		if nw, err = network.New(ncfg, log); err != nil {
			return host{}, fmt.Errorf("agent: networking: %w", err)
		}
		br, err = nw.EnsureBridge(ctx)
	}
	if err != nil {
		nw.Close()
		return host{}, fmt.Errorf("agent: %w", err)
	}
	log.Info("bridge ready", "bridge", br.Name, "gateway", br.Gateway.String(), "uplink", br.Uplink, "nat", string(br.NAT), "owner", owner)
	// TAPs of running VMs made by an agent version without ownership marks
	// are ours (their VMM, from our run dir, holds them): mark them.
	for _, h := range adopted {
		if _, err := nw.AdoptTap(ctx, hostlayout.TapName(h.VMID), h.VMID); err != nil {
			log.Warn("could not mark the tap of an adopted vm", "vm_id", h.VMID, "err", err)
		}
	}

	return host{
		vmms: sup, net: nw, version: version, simulated: simulated, jail: sup.JailMode(), bridge: br,
		run: func(ctx context.Context) {
			var wg sync.WaitGroup
			wg.Go(func() { sup.Run(ctx, time.Second) })
			wg.Go(func() { keepBridge(ctx, nw, log, time.Minute) })
			wg.Wait()
		},
		release: func() {
			nw.Close()
			sup.ReleaseCgroups()
		},
	}, nil
}

// uidRangeClash names an account of /etc/passwd or /etc/group whose id
// lies in the jail range, "" when none does: a jailed VMM must not share
// an identity with anything else on the host.
func uidRangeClash(base, count int) string {
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			fields := strings.Split(line, ":")
			if len(fields) < 3 {
				continue
			}
			if id, err := strconv.Atoi(fields[2]); err == nil && id >= base && id < base+count {
				return fmt.Sprintf("%s %s (id %d)", filepath.Base(f), fields[0], id)
			}
		}
	}
	return ""
}

// startHollow prepares a hollow host: in-process simulated VMMs and an
// in-memory network, nothing on the machine but files under the run dir.
func startHollow(o Options, layout hostlayout.Layout) host {
	env := map[string]string{}
	for _, kv := range o.VMMEnv {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	vmms := hollow.NewVMMs(layout, func(k string) string { return env[k] })
	nw := hollow.NewNetwork(o.Bridge)
	br, _ := nw.EnsureBridge(context.Background()) // in memory: it cannot fail
	return host{
		vmms: vmms, net: nw, version: hollow.VMMVersion, simulated: true, bridge: br,
		run:     func(ctx context.Context) { <-ctx.Done() },
		release: vmms.StopAll,
	}
}

// keepBridge re-ensures the bridge, its address, forwarding and NAT every
// interval, so rules removed by hand come back without a restart.
func keepBridge(ctx context.Context, nw *network.Network, log *slog.Logger, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if _, err := nw.EnsureBridge(ctx); err != nil && ctx.Err() == nil {
				log.Error("re-ensuring the bridge failed", "err", err)
			}
		}
	}
}

// VMMs is what runs the agent's VMMs (tests reach a hollow host's).
func (r *Running) VMMs() VMMs { return r.Agent.sup }

// Wait blocks until the agent's server has stopped.
func (r *Running) Wait() { <-r.done }

// vmmVersion asks the binary for its version; firecracker-sim's ends in -sim.
func vmmVersion(ctx context.Context, bin string) (string, bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return "unknown", false
	}
	line := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	v, ok := firecracker.ParseVersion(line)
	if !ok {
		return line, false
	}
	return v.String(), v.IsSim()
}
