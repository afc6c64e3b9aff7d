package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/api"
	"github.com/nexus-microvm/nexus/internal/app"
	"github.com/nexus-microvm/nexus/internal/pki"
	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/version"
)

// strFlag defines a string flag whose default comes from an environment
// variable, and says so in --help.
func strFlag(fs *pflag.FlagSet, p *string, name string, e env, key, def, usage string) {
	if key != "" {
		usage += " (env " + key + ")"
	}
	fs.StringVar(p, name, e.or(key, def), usage)
}

// secretFlag is strFlag for secrets (tokens, database URLs with
// passwords): the environment's value is used but never shown as the
// flag's default in --help.
func secretFlag(fs *pflag.FlagSet, p *string, name string, e env, key, def, usage string) {
	fs.StringVar(p, name, def, usage+" (env "+key+")")
	*p = e.or(key, def) // after the definition: the help keeps def
}

func durFlag(fs *pflag.FlagSet, p *time.Duration, name string, e env, key string, def time.Duration, usage string) error {
	d := def
	if v := e(key); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("%s=%q: %w", key, v, err)
		}
	}
	fs.DurationVar(p, name, d, usage+" (env "+key+")")
	return nil
}

func intFlag(fs *pflag.FlagSet, p *int, name string, e env, key string, def int, usage string) error {
	v := def
	if s := e(key); s != "" {
		var err error
		if v, err = strconv.Atoi(s); err != nil || v < 0 {
			return fmt.Errorf("%s=%q: want a non-negative integer", key, s)
		}
	}
	fs.IntVar(p, name, v, usage+" (env "+key+")")
	return nil
}

func floatFlag(fs *pflag.FlagSet, p *float64, name string, e env, key string, def float64, usage string) error {
	v := def
	if s := e(key); s != "" {
		var err error
		if v, err = strconv.ParseFloat(s, 64); err != nil || v <= 0 {
			return fmt.Errorf("%s=%q: want a positive number", key, s)
		}
	}
	fs.Float64Var(p, name, v, usage+" (env "+key+")")
	return nil
}

// netFlags defines the host networking flags of `agent` and `up`.
func netFlags(fs *pflag.FlagSet, e env, bridge, cidr, uplink *string) {
	strFlag(fs, bridge, "bridge", e, "FC_BRIDGE", "fcbr0", "bridge the TAPs join")
	strFlag(fs, cidr, "bridge-cidr", e, "FC_BRIDGE_CIDR", "", "gateway address/prefix of the VM subnet (default 172.20.0.1/16)")
	strFlag(fs, uplink, "uplink", e, "FC_UPLINK", "", "uplink for NAT (default: the default route's interface; none: no NAT)")
}

// managerTuningFlags defines the reconciler and placement settings that
// `manager` and `up` share.
func managerTuningFlags(fs *pflag.FlagSet, e env, o *app.ManagerOptions) error {
	if err := durFlag(fs, &o.ReconcileInterval, "reconcile-interval", e, "NEXUS_RECONCILE_INTERVAL", 15*time.Second, "periodic reconcile pass"); err != nil {
		return err
	}
	for _, d := range []struct {
		p     *time.Duration
		name  string
		key   string
		def   time.Duration
		usage string
	}{
		{&o.OrphanGrace, "orphan-grace", "NEXUS_ORPHAN_GRACE", 30 * time.Second, "how long a process, TAP or run dir of no VM is left before removal"},
		{&o.StuckGrace, "stuck-grace", "NEXUS_STUCK_GRACE", 20 * time.Second, "how long a boot may stay unfinished before the reconciler redoes it"},
		{&o.HeartbeatTimeout, "heartbeat-timeout", "NEXUS_HEARTBEAT_TIMEOUT", 30 * time.Second, "missed-heartbeat time after which a host is unreachable"},
		{&o.LeaseTTL, "lease-ttl", "NEXUS_LEASE_TTL", 0, "reconciler lease TTL among managers (default max(3×interval, 10s))"},
		{&o.AuditRetention, "audit-retention", "NEXUS_AUDIT_RETENTION", 90 * 24 * time.Hour, "how long audit rows are kept (older ones are pruned hourly; 0 keeps them forever)"},
	} {
		if err := durFlag(fs, d.p, d.name, e, d.key, d.def, d.usage); err != nil {
			return err
		}
	}
	for _, r := range []struct {
		p          *string
		name, key  string
		def, usage string
	}{
		{&o.Rates.Read, "rate-read", "NEXUS_RATE_READ", api.DefaultRateLimits.Read.String(), "each token's reads (GET)"},
		{&o.Rates.Mutation, "rate-mutation", "NEXUS_RATE_MUTATION", api.DefaultRateLimits.Mutation.String(), "each token's changes (start, stop, delete …)"},
		{&o.Rates.Create, "rate-create", "NEXUS_RATE_CREATE", api.DefaultRateLimits.Create.String(), "each token's creates (VMs, images, templates, snapshots, tokens)"},
		{&o.Rates.AuthFailure, "rate-auth-failure", "NEXUS_RATE_AUTH_FAILURE", api.DefaultRateLimits.AuthFailure.String(), "each source address's calls without a valid token"},
	} {
		strFlag(fs, r.p, r.name, e, r.key, "", "rate limit of "+r.usage+": RATE[:BURST] calls per second, 0 for none (default "+r.def+" in prod, none in dev)")
	}
	strFlag(fs, &o.DefaultQuota, "default-quota", e, "NEXUS_DEFAULT_QUOTA", "", "quota of every project without its own, e.g. vms=20,vcpus=40,mem_mib=16384 (none by default; set the same on every manager)")
	strFlag(fs, &o.CORSOrigins, "cors-origins", e, "NEXUS_CORS_ORIGINS", "", "exact origins (scheme://host[:port], comma-separated) whose web pages may call the API; none by default")
	if err := intFlag(fs, &o.MaxStreams, "max-streams", e, "NEXUS_MAX_STREAMS", api.DefaultMaxStreams, "log streams relayed at once (lowered to fit the open-file limit)"); err != nil {
		return err
	}
	if err := intFlag(fs, &o.MaxStreamsPerToken, "max-streams-per-token", e, "NEXUS_MAX_STREAMS_PER_TOKEN", api.DefaultMaxStreamsPerToken, "log streams one token may hold at once"); err != nil {
		return err
	}
	if err := floatFlag(fs, &o.VcpuOvercommit, "vcpu-overcommit", e, "NEXUS_VCPU_OVERCOMMIT", 8, "vCPUs placed per host CPU (simulated hosts are also scaled 64x)"); err != nil {
		return err
	}
	return floatFlag(fs, &o.MemOvercommit, "mem-overcommit", e, "NEXUS_MEM_OVERCOMMIT", 1, "guest memory placed per MiB of host memory")
}

// agentHostFlags defines the host settings that `agent` and `up` share:
// where the agent keeps its files and how it wires VMs to the network.
func agentHostFlags(fs *pflag.FlagSet, e env, o *agent.Options, runDirDefault, runDirHelp string) error {
	strFlag(fs, &o.RunDir, "run-dir", e, "FC_RUN_DIR", runDirDefault, runDirHelp)
	strFlag(fs, &o.ImagesDir, "images-dir", e, "FC_IMAGES_DIR", "", "allow-listed root for kernel and rootfs images (default $FC_RUN_DIR/images)")
	netFlags(fs, e, &o.Bridge, &o.BridgeCIDR, &o.Uplink)
	strFlag(fs, &o.Jail, "jail", e, "FC_JAIL", "", "on: confine every VMM (own uid, chroot, namespaces, cgroup limits, no capabilities); off: do not (default: on in prod mode)")
	strFlag(fs, &o.Jailer, "jailer", e, "FC_JAILER", "", "firecracker's jailer binary to confine VMMs with (default: the agent confines them itself)")
	if err := intFlag(fs, &o.JailUIDBase, "jail-uid-base", e, "FC_JAIL_UID_BASE", vmm.DefaultJailUIDBase, "first uid/gid of jailed VMMs (agents sharing a host need distinct ranges)"); err != nil {
		return err
	}
	if err := intFlag(fs, &o.JailUIDCount, "jail-uid-count", e, "FC_JAIL_UID_COUNT", vmm.DefaultJailUIDCount, "how many uids jailed VMMs may use (at most that many VMs at once)"); err != nil {
		return err
	}
	if err := intFlag(fs, &o.MaxSpawns, "max-spawns", e, "AGENT_MAX_SPAWNS", 0, "VMM starts run at once; the rest wait their turn (default: the host's CPU count, at least 2)"); err != nil {
		return err
	}
	return durFlag(fs, &o.StopGrace, "stop-grace", e, "AGENT_STOP_GRACE", 3*time.Second, "SIGTERM to SIGKILL grace on stop")
}

// tlsFlags defines --tls-cert, --tls-key and --tls-ca with environment
// variables prefix+CERT, KEY, CA.
func tlsFlags(fs *pflag.FlagSet, e env, f *pki.Files, prefix, what string) {
	strFlag(fs, &f.Cert, "tls-cert", e, prefix+"CERT", "", "TLS certificate (PEM): "+what+"; reloaded when the file changes")
	strFlag(fs, &f.Key, "tls-key", e, prefix+"KEY", "", "TLS private key (PEM) of --tls-cert")
	strFlag(fs, &f.CA, "tls-ca", e, prefix+"CA", "", "CA bundle (PEM) that peers' certificates must chain to (mutual TLS); reloaded when the file changes")
}

// newLogger returns the JSON (or text) structured logger servers log with.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use json or text", format)
}

type logFlags struct{ format, level string }

func (l *logFlags) add(fs *pflag.FlagSet, e env, defFormat string) {
	strFlag(fs, &l.format, "log-format", e, "NEXUS_LOG_FORMAT", defFormat, "log format: json or text")
	strFlag(fs, &l.level, "log-level", e, "NEXUS_LOG_LEVEL", "info", "log level: debug, info, warn, error")
}

func newAgentCmd(e env, stdout, stderr io.Writer) *cobra.Command {
	var o agent.Options
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent (root): TAPs, firecracker processes, socket proxy, inventory",
		Long: `Run the host agent. It runs as root, with the capabilities docs/security.md
lists (CAP_NET_ADMIN, and in jail mode the jail's): it creates a bridge, TAP
devices and NAT rules, and starts firecracker processes, which keep running
when the agent stops and are adopted again when it restarts. In jail mode
(FC_JAIL, the default in prod) every VMM runs as a uid of its own in a
chroot under $FC_RUN_DIR/jail, in new mount and PID namespaces, with cgroup
limits and no capabilities; the VMM binary must be static.

Every request must carry the fleet's join token (AGENT_TOKEN, which must
equal the manager's NEXUS_JOIN_TOKEN; prod: at least 32 bytes). Without one,
the agent creates a token in $FC_RUN_DIR/agent.token. With --tls-cert and
--tls-key it serves HTTPS, and with --tls-ca only the manager's certificate
gets in; prod mode serves plain HTTP on loopback only. With AGENT_MANAGER
set it registers there and sends heartbeats.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, lf.format, lf.level)
			if err != nil {
				return err
			}
			o.Version = version.Get().Version
			o.VMMEnv = simEnv(e)
			startPprof(e("NEXUS_PPROF"), log)
			quietSysmon(log)
			r, err := agent.Start(cmd.Context(), o, log)
			if err != nil {
				return err
			}
			r.Wait()
			return nil
		},
	}
	fs := cmd.Flags()
	host, _ := os.Hostname()
	strFlag(fs, &o.Bind, "bind", e, "AGENT_BIND", "127.0.0.1:9090", "listen address")
	strFlag(fs, &o.Advertise, "advertise", e, "AGENT_ADVERTISE", "", "URL the manager reaches this agent at (default http://<bind>, https:// with --tls-cert)")
	strFlag(fs, &o.Manager, "manager", e, "AGENT_MANAGER", "", "manager URL to register with")
	strFlag(fs, &o.Name, "name", e, "AGENT_NAME", host, "host name in the fleet")
	secretFlag(fs, &o.Token, "token", e, "AGENT_TOKEN", "", "the fleet's join token")
	secretFlag(fs, &o.MetricsToken, "metrics-token", e, "AGENT_METRICS_TOKEN", "", "a read-only token for GET /metrics (give Prometheus this, not the join token)")
	if err := agentHostFlags(fs, e, &o, "/srv/fc", "directory for everything the agent creates"); err != nil {
		return errCmd("agent", err)
	}
	tlsFlags(fs, e, &o.TLS, "AGENT_TLS_", "serve the agent API over TLS; with --tls-ca only the manager's certificate gets in")
	strFlag(fs, &o.Bin, "fc-bin", e, "FC_BIN", "firecracker", "VMM binary (firecracker or firecracker-sim)")
	strFlag(fs, &o.Mode, "mode", e, "NEXUS_MODE", "dev", "dev or prod (prod confines the files VMs may read to the run and images dirs, jails VMMs, serves plain HTTP on loopback only, wants a 32-byte join token)")
	fs.BoolVar(&o.Hollow, "hollow", false, "simulated host for tests and benchmarks: firecracker-sim in-process, TAPs in memory, no root; labelled hollow in nexus host ls")
	fs.IntVar(&o.HollowCapacity.Vcpu, "hollow-vcpus", 0, "with --hollow: the vCPUs the host reports (default: the machine's, scaled)")
	fs.IntVar(&o.HollowCapacity.MemMib, "hollow-mem-mib", 0, "with --hollow: the memory in MiB the host reports (default: the machine's, scaled)")
	lf.add(fs, e, "json")
	return cmd
}

// simEnv passes firecracker-sim's tuning variables through to VMMs.
func simEnv(e env) []string {
	var out []string
	for _, k := range []string{"FC_SIM_METRICS_INTERVAL", "FC_SIM_START_DELAY", "FC_SIM_QUIET"} {
		if v := e(k); v != "" {
			out = append(out, k+"="+v)
		}
	}
	return out
}

// errCmd stands for a command whose settings from the environment are
// bad: it reports err whatever flags follow (parsing them would report
// the first as unknown instead).
func errCmd(name string, err error) *cobra.Command {
	return &cobra.Command{Use: name, DisableFlagParsing: true, RunE: func(*cobra.Command, []string) error { return err }}
}

func newManagerCmd(e env, stdout, stderr io.Writer) *cobra.Command {
	var o app.ManagerOptions
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run the manager: REST API, state store, reconciler, scheduler",
		Long: `Run the manager. DATABASE_URL picks the store: sqlite://PATH for one host,
postgres://… for a fleet (several managers may share one Postgres).
Migrations are applied at start. Agents join with the shared join token
(NEXUS_JOIN_TOKEN). The first admin token comes from ` + "`nexus manager bootstrap`" + `.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, lf.format, lf.level)
			if err != nil {
				return err
			}
			o.Version = version.Get().Version
			startPprof(e("NEXUS_PPROF"), log)
			quietSysmon(log)
			m, err := app.StartManager(cmd.Context(), o, log)
			if err != nil {
				return err
			}
			m.Wait()
			return nil
		},
	}
	fs := cmd.PersistentFlags()
	secretFlag(fs, &o.DatabaseURL, "database-url", e, "DATABASE_URL", store.DefaultDSN, "sqlite://PATH or postgres://…")
	lfs := cmd.Flags()
	strFlag(lfs, &o.Listen, "listen", e, "NEXUS_LISTEN", "127.0.0.1:8080", "listen address")
	strFlag(lfs, &o.Mode, "mode", e, "NEXUS_MODE", "dev", "dev or prod (prod refuses raw host paths, needs TLS or loopback and a 32-byte join token)")
	secretFlag(lfs, &o.JoinToken, "join-token", e, "NEXUS_JOIN_TOKEN", "", "the fleet's join token, shared with every agent (prod: at least 32 bytes)")
	tlsFlags(lfs, e, &o.TLS, "NEXUS_TLS_", "serve HTTPS; with --tls-ca agents must present a certificate of it")
	if err := managerTuningFlags(lfs, e, &o); err != nil {
		return errCmd("manager", err)
	}
	lf.add(lfs, e, "json")

	cmd.AddCommand(newMigrateCmd(&o.DatabaseURL, stdout))
	var specFormat, specVersion string
	spec := &cobra.Command{
		Use:   "openapi",
		Short: "Print the API's OpenAPI document (what GET /openapi.json serves) and exit",
		Example: `  nexus manager openapi > openapi.json
  nexus manager openapi --format yaml --openapi 3.0 > openapi-3.0.yaml   # for 3.0-only generators`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			doc := api.Document(version.Get().Version)
			var out []byte
			var err error
			switch specFormat + "/" + specVersion {
			case "json/3.1":
				out, err = json.MarshalIndent(doc, "", "  ")
			case "yaml/3.1":
				out, err = doc.YAML()
			case "json/3.0":
				out, err = doc.Downgrade()
			case "yaml/3.0":
				out, err = doc.DowngradeYAML()
			default:
				return usageErrorf("--format %q --openapi %q: use json or yaml, and 3.1 or 3.0", specFormat, specVersion)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(stdout, strings.TrimSpace(string(out)))
			return err
		},
	}
	spec.Flags().StringVar(&specFormat, "format", "json", "json or yaml")
	spec.Flags().StringVar(&specVersion, "openapi", "3.1", "OpenAPI version: 3.1 (as served) or 3.0 (downgraded, for older tools)")
	cmd.AddCommand(spec)

	var owner, caDir string
	var tlsHosts []string
	boot := &cobra.Command{
		Use:   "bootstrap",
		Short: "Create an admin API token and print it (shown once); with --ca-dir, the fleet's CA and the manager's certificate",
		Long: `Create the first admin API token and print it on stdout (shown once).

With --ca-dir it also creates the fleet's CA there (if there is none) and
issues the manager's certificate (manager.crt, manager.key) for the names
in --tls-host, the ones agents reach it at; agents then get theirs from
` + "`nexus cert issue --host NAME`" + `. What it did is said on stderr.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if caDir != "" {
				if err := bootstrapCA(caDir, tlsHosts, stderr); err != nil {
					return err
				}
			}
			st, err := store.Open(cmd.Context(), o.DatabaseURL)
			if err != nil {
				return err
			}
			defer st.Close()
			secret, rec, err := app.Bootstrap(cmd.Context(), st, owner)
			if err != nil {
				return err
			}
			fmt.Fprintf(stderr, "admin token %s for %s (shown once; store it safely):\n", rec.ID, owner)
			fmt.Fprintln(stdout, secret)
			return nil
		},
	}
	boot.Flags().StringVar(&owner, "owner", "admin", "who the token belongs to")
	boot.Flags().StringVar(&caDir, "ca-dir", "", "create the fleet's CA here (if missing) and issue the manager's certificate")
	boot.Flags().StringSliceVar(&tlsHosts, "tls-host", nil, "names and addresses agents reach the manager at, for its certificate (default: the hostname)")
	cmd.AddCommand(boot)
	return cmd
}

func newUpCmd(e env, stdout, stderr io.Writer) *cobra.Command {
	var o app.UpOptions
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run manager + local agent + SQLite in one process (one host, zero setup)",
		Long: `Run the whole of Nexus on this host in one process: a manager with an
embedded SQLite store under --data-dir and a local agent. It uses the real
firecracker when one is on PATH (or --fc-bin) and /dev/kvm is usable, and
firecracker-sim otherwise, saying so. On first start it creates an admin
token, writes it to <data-dir>/admin.token (mode 0600) and prints it.
Ctrl-C stops; running VMs keep running and the next ` + "`nexus up`" + ` adopts them.
` + "`nexus down`" + ` undoes what it did to the host. Needs root for TAP devices.

It takes the manager's and the agent's settings (flags, or the environment
variables named below), so several instances can share a host: give each
its own --data-dir, --listen, --bridge and --bridge-cidr. The agent listens
on AGENT_BIND, by default the previous run's port on 127.0.0.1 (a free one
the first time). With firecracker-sim, host capacity is scaled 64× (a
simulated VM costs about 1 MiB), so hundreds of small VMs fit on a laptop.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, lf.format, lf.level)
			if err != nil {
				return err
			}
			o.Version = version.Get().Version
			o.Agent.VMMEnv = simEnv(e)
			startPprof(e("NEXUS_PPROF"), log)
			quietSysmon(log)
			return app.Up(cmd.Context(), o, log, stdout)
		},
	}
	fs := cmd.Flags()
	strFlag(fs, &o.DataDir, "data-dir", e, "NEXUS_DATA_DIR", "./.nexus", "state directory")
	strFlag(fs, &o.Manager.Listen, "listen", e, "NEXUS_LISTEN", "127.0.0.1:8080", "manager listen address")
	strFlag(fs, &o.Agent.Bind, "agent-bind", e, "AGENT_BIND", "", "agent listen address (default: the previous run's, else a free port on 127.0.0.1)")
	strFlag(fs, &o.FCBin, "fc-bin", e, "FC_BIN", "", "firecracker binary to prefer (default: firecracker on PATH)")
	if err := agentHostFlags(fs, e, &o.Agent, "", "agent run dir (default <data-dir>/run)"); err != nil {
		return errCmd("up", err)
	}
	if err := managerTuningFlags(fs, e, &o.Manager); err != nil {
		return errCmd("up", err)
	}
	strFlag(fs, &o.Mode, "mode", e, "NEXUS_MODE", "dev", "dev or prod")
	lf.add(fs, e, "text")
	return cmd
}

func newDownCmd(e env, stdout, stderr io.Writer) *cobra.Command {
	var o app.DownOptions
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Undo what `nexus up` did to this host: bridge, NAT, optionally VMs and state",
		Long: `Undo what ` + "`nexus up`" + ` did to this host, once it has stopped. It reads what up
used from <data-dir>/up.json and removes only what carries up's agent mark:
its TAPs, its bridge (if up created it and nothing else is attached), its
NAT table or iptables rules, its cgroups. It needs no nft or iptables binary.

Running VMs keep it from removing anything unless --vms is given, which
stops them (and records them as stopped). --purge also deletes the data dir
and the run dir (with the VMs' disks and snapshots); an images dir outside
them is never deleted. Running it again is fine: it reports nothing to do.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return app.Down(cmd.Context(), o, stdout)
		},
	}
	fs := cmd.Flags()
	strFlag(fs, &o.DataDir, "data-dir", e, "NEXUS_DATA_DIR", "./.nexus", "state directory of the nexus up to undo")
	fs.BoolVar(&o.VMs, "vms", false, "stop the VMs that are still running")
	fs.BoolVar(&o.Purge, "purge", false, "also delete the data dir and the run dir")
	return cmd
}
