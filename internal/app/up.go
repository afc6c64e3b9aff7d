package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/secretfile"
)

// UpOptions are the settings of `nexus up`: its own, and the manager's and
// the agent's, which take the same flags and environment variables as
// `nexus manager` and `nexus agent` (DESIGN.md section 1).
type UpOptions struct {
	DataDir string // --data-dir, default ./.nexus
	FCBin   string // --fc-bin: a firecracker to prefer
	Mode    string
	Version string
	// Manager holds the manager's settings; Listen, DatabaseURL and
	// JoinToken are up's to set.
	Manager ManagerOptions
	// Agent holds the agent's settings; Bind "" reuses the previous run's
	// address (or takes a free port the first time), RunDir "" is
	// <data-dir>/run, ImagesDir "" is <run-dir>/images.
	Agent agent.Options
}

// upState is what `nexus up` last ran with, saved in <data-dir>/up.json:
// the next `up` reuses the agent's address, and `nexus down` knows what to
// undo.
type upState struct {
	RunDir     string `json:"run_dir"`
	ImagesDir  string `json:"images_dir"`
	Bridge     string `json:"bridge"`
	BridgeCIDR string `json:"bridge_cidr,omitempty"`
	Uplink     string `json:"uplink,omitempty"`
	AgentBind  string `json:"agent_bind"`
	Listen     string `json:"listen"`
}

const upStateFile = "up.json"

func readUpState(dataDir string) (upState, error) {
	var st upState
	b, err := os.ReadFile(filepath.Join(dataDir, upStateFile))
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("read %s: %w", filepath.Join(dataDir, upStateFile), err)
	}
	return st, nil
}

func writeUpState(dataDir string, st upState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dataDir, upStateFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save up state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dataDir, upStateFile)); err != nil {
		return fmt.Errorf("save up state: %w", err)
	}
	return nil
}

// Up runs a manager and a local agent in one process until ctx ends, with
// state in an embedded SQLite file under the data dir. It prints what a
// user needs to stdout: which VMM runs the VMs, the admin token, and how
// to create a first VM.
func Up(ctx context.Context, o UpOptions, log *slog.Logger, stdout io.Writer) error {
	dataDir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	prev, _ := readUpState(dataDir)
	ao := o.Agent
	if ao.RunDir == "" {
		ao.RunDir = filepath.Join(dataDir, "run")
	}
	if ao.RunDir, err = filepath.Abs(ao.RunDir); err != nil {
		return err
	}
	if ao.ImagesDir == "" {
		ao.ImagesDir = hostlayout.Layout{RunDir: ao.RunDir}.ImagesDir()
	}
	if ao.ImagesDir, err = filepath.Abs(ao.ImagesDir); err != nil {
		return err
	}
	if ao.Bridge == "" {
		ao.Bridge = network.DefaultBridge
	}
	if ao.Bind == "" {
		// The previous run's port if it is free, so the manager's record of
		// the host stays right; otherwise any free port.
		ao.Bind = "127.0.0.1:0"
		if prev.AgentBind != "" && portFree(prev.AgentBind) {
			ao.Bind = prev.AgentBind
		}
	}
	bin, simulated, why, err := pickVMM(o.FCBin)
	if err != nil {
		return err
	}
	if simulated {
		fmt.Fprintf(stdout, "nexus: %s; using firecracker-sim (%s): VMs are simulated, not real guests; host capacity is scaled %d× for them\n",
			why, bin, agent.SimCapacityScale)
	} else {
		fmt.Fprintf(stdout, "nexus: using firecracker %s with /dev/kvm\n", bin)
	}
	join, err := secretfile.LoadOrCreate(filepath.Join(dataDir, "join.token"))
	if err != nil {
		return err
	}

	mo := o.Manager
	mo.DatabaseURL = "sqlite://" + filepath.Join(dataDir, "nexus.db")
	mo.Mode, mo.JoinToken, mo.Version = o.Mode, join, o.Version
	mo.HoldReconciler = true
	m, err := StartManager(ctx, mo, log)
	if err != nil {
		return err
	}
	tokenPath := filepath.Join(dataDir, "admin.token")
	if _, err := os.Stat(tokenPath); errors.Is(err, os.ErrNotExist) {
		secret, _, err := Bootstrap(ctx, m.Store, "admin (nexus up)")
		if err != nil {
			return err
		}
		if err := os.WriteFile(tokenPath, []byte(secret+"\n"), 0o600); err != nil {
			return fmt.Errorf("write admin token: %w", err)
		}
		fmt.Fprintf(stdout, "nexus: admin token (shown once, also in %s):\n  %s\n", tokenPath, secret)
	} else {
		fmt.Fprintf(stdout, "nexus: admin token in %s\n", tokenPath)
	}

	ao.Manager, ao.Token, ao.Bin, ao.Mode, ao.Version = m.URL(), join, bin, o.Mode, o.Version
	if ao.Heartbeat == 0 {
		ao.Heartbeat = 2 * time.Second
	}
	ag, err := agent.Start(ctx, ao, log)
	if err != nil {
		return err
	}
	if err := writeUpState(dataDir, upState{
		RunDir: ao.RunDir, ImagesDir: ao.ImagesDir, Bridge: ao.Bridge, BridgeCIDR: ao.BridgeCIDR, Uplink: ao.Uplink,
		AgentBind: ag.Addr, Listen: m.Addr,
	}); err != nil {
		return err
	}
	if err := waitForHost(ctx, m, ag.URL, 15*time.Second); err != nil {
		return err
	}
	m.StartReconciler()
	self, err := os.Executable()
	if err != nil {
		self = "nexus"
	}
	fmt.Fprintf(stdout, "nexus: ready at %s (agent %s, bridge %s, state in %s, images in %s)\n", m.URL(), ag.URL, ao.Bridge, dataDir, ao.ImagesDir)
	fmt.Fprintf(stdout, "  export NEXUS_ADDR=%s NEXUS_TOKEN=$(cat %s)\n", m.URL(), tokenPath)
	if simulated {
		fmt.Fprintf(stdout, "  %s vm create --name hello --kernel-path /bin/true   # firecracker-sim boots any ELF file\n", self)
	} else {
		fmt.Fprintf(stdout, "  %s vm create --name hello --kernel-path /path/to/vmlinux --rootfs-path /path/to/rootfs.ext4\n", self)
	}
	fmt.Fprintf(stdout, "  (`make images` builds a kernel and rootfs from Debian packages and registers them)\n")
	fmt.Fprintf(stdout, "  `%s down --data-dir %s` undoes this host's changes once stopped\n", self, dataDir)
	<-ctx.Done()
	fmt.Fprintln(stdout, "nexus: stopping; running VMs keep running and are adopted by the next `nexus up`")
	ag.Wait()
	m.Wait()
	return nil
}

// portFree reports whether addr can be listened on now.
func portFree(addr string) bool {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// waitForHost waits until the local agent has registered at its current
// address.
func waitForHost(ctx context.Context, m *Manager, agentURL string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		hosts, err := m.Manager.Hosts.ListHosts(ctx)
		if err == nil {
			for _, h := range hosts {
				if h.State == "ready" && h.Addr == agentURL {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return errors.New("the local agent did not register with the manager in time")
}

// pickVMM chooses real firecracker when it is usable (a binary and a
// working /dev/kvm), else firecracker-sim, and says why.
func pickVMM(prefer string) (bin string, simulated bool, why string, err error) {
	cand := prefer
	if cand == "" {
		cand, _ = exec.LookPath("firecracker")
	}
	switch {
	case cand == "":
		why = "no firecracker on PATH"
	case isSim(cand):
		return cand, true, "--fc-bin is firecracker-sim", nil
	case !kvmUsable():
		why = "/dev/kvm is not usable"
	default:
		return cand, false, "", nil
	}
	sim := ""
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "firecracker-sim"); isExecutable(p) {
			sim = p
		}
	}
	if sim == "" {
		sim, _ = exec.LookPath("firecracker-sim")
	}
	if sim == "" {
		return "", false, "", fmt.Errorf("%s and firecracker-sim was not found next to nexus or on PATH (run `make build`)", why)
	}
	return sim, true, why, nil
}

func isSim(bin string) bool {
	out, err := exec.Command(bin, "--version").Output()
	return err == nil && strings.Contains(string(out), "-sim")
}

func isExecutable(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// kvmUsable opens /dev/kvm and asks its API version (12 on every kernel
// firecracker supports).
func kvmUsable() bool {
	fd, err := unix.Open("/dev/kvm", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	const kvmGetAPIVersion = 0xAE00
	v, err := unix.IoctlRetInt(fd, kvmGetAPIVersion)
	return err == nil && v == 12
}
