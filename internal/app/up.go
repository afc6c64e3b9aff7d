package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/secretfile"
)

// UpOptions are the settings of `nexus up`.
type UpOptions struct {
	DataDir    string // --data-dir, default ./.nexus
	Listen     string // --listen, default 127.0.0.1:8080
	FCBin      string // --fc-bin: a firecracker to prefer
	RunDir     string // FC_RUN_DIR, default <data-dir>/run
	Bridge     string
	BridgeCIDR string
	Uplink     string
	Mode       string
	Version    string
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
	runDir := o.RunDir
	if runDir == "" {
		runDir = filepath.Join(dataDir, "run")
	}
	bin, simulated, why, err := pickVMM(o.FCBin)
	if err != nil {
		return err
	}
	if simulated {
		fmt.Fprintf(stdout, "nexus: %s; using firecracker-sim (%s): VMs are simulated, not real guests\n", why, bin)
	} else {
		fmt.Fprintf(stdout, "nexus: using firecracker %s with /dev/kvm\n", bin)
	}
	join, err := secretfile.LoadOrCreate(filepath.Join(dataDir, "join.token"))
	if err != nil {
		return err
	}

	m, err := StartManager(ctx, ManagerOptions{
		Listen: o.Listen, DatabaseURL: "sqlite://" + filepath.Join(dataDir, "nexus.db"),
		Mode: o.Mode, JoinToken: join, Version: o.Version,
	}, log)
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

	ag, err := agent.Start(ctx, agent.Options{
		Bind: "127.0.0.1:0", Manager: m.URL(), Token: join, RunDir: runDir,
		Bin: bin, Bridge: o.Bridge, BridgeCIDR: o.BridgeCIDR, Uplink: o.Uplink,
		Mode: o.Mode, Version: o.Version, Heartbeat: 2 * time.Second,
	}, log)
	if err != nil {
		return err
	}
	if err := waitForHost(ctx, m, 15*time.Second); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		self = "nexus"
	}
	fmt.Fprintf(stdout, "nexus: ready at %s (agent %s, state in %s)\n", m.URL(), ag.URL, dataDir)
	fmt.Fprintf(stdout, "  export NEXUS_ADDR=%s NEXUS_TOKEN=$(cat %s)\n", m.URL(), tokenPath)
	if simulated {
		fmt.Fprintf(stdout, "  %s vm create --name hello --kernel-path /bin/true   # firecracker-sim boots any ELF file\n", self)
	} else {
		fmt.Fprintf(stdout, "  %s vm create --name hello --kernel-path /path/to/vmlinux --rootfs-path /path/to/rootfs.ext4\n", self)
	}
	fmt.Fprintf(stdout, "  (`make images` builds a kernel and rootfs from Debian packages and registers them)\n")
	<-ctx.Done()
	fmt.Fprintln(stdout, "nexus: stopping; running VMs keep running and are adopted by the next `nexus up`")
	ag.Wait()
	m.Wait()
	return nil
}

func waitForHost(ctx context.Context, m *Manager, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		hosts, err := m.Service.ListHosts(ctx)
		if err == nil {
			for _, h := range hosts {
				if h.State == "ready" {
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
