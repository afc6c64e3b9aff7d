package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/agent/network"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/store"
)

// DownOptions are the settings of `nexus down`.
type DownOptions struct {
	DataDir string // the `nexus up` data dir to undo
	VMs     bool   // stop VMs that still run (and record them as stopped)
	Purge   bool   // also delete the data dir and the run dir
}

// ErrVMsRunning: `nexus down` without --vms found VMs still running, and
// changed nothing.
var ErrVMsRunning = errors.New("VMs are still running")

// Down undoes what `nexus up` did to this host, touching only objects
// that carry its agent's ownership mark (docs/networking.md). It refuses
// while that `nexus up` runs, and changes nothing while VMs run unless
// o.VMs says to stop them. It reports each step on out.
func Down(ctx context.Context, o DownOptions, out io.Writer) error {
	dataDir, err := filepath.Abs(o.DataDir)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dataDir); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(out, "nexus down: nothing to undo: %s does not exist\n", dataDir)
		return nil
	}
	st, err := readUpState(dataDir)
	if errors.Is(err, os.ErrNotExist) {
		// A data dir from before up.json: up's defaults.
		st = upState{RunDir: filepath.Join(dataDir, "run"), Bridge: network.DefaultBridge}
		st.ImagesDir = hostlayout.Layout{RunDir: st.RunDir}.ImagesDir()
	} else if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("nexus down removes network devices and processes: run it as root")
	}

	owner, err := agent.ReadInstanceID(st.RunDir)
	if errors.Is(err, os.ErrNotExist) {
		owner = "" // the agent never ran: no marked object can exist
	} else if err != nil {
		return err
	}
	if owner != "" {
		unlock, err := agent.LockRunDir(st.RunDir)
		if err != nil {
			return fmt.Errorf("%w; stop `nexus up` (Ctrl-C) first", err)
		}
		defer unlock()
	}
	log := slog.New(slog.DiscardHandler)
	did := 0
	say := func(format string, args ...any) {
		did++
		fmt.Fprintf(out, "nexus down: "+format+"\n", args...)
	}

	var live []vmm.Handle
	var sup *vmm.Supervisor
	if owner != "" {
		if sup, err = vmm.New(vmm.Config{Layout: hostlayout.Layout{RunDir: st.RunDir}, Logger: log, Owner: owner}); err != nil {
			return err
		}
		if live, err = sup.Recover(); err != nil {
			return err
		}
	}
	if len(live) > 0 && !o.VMs {
		ids := make([]string, 0, len(live))
		for _, h := range live {
			ids = append(ids, h.VMID)
		}
		return fmt.Errorf("%w: %d (%s); nothing was changed. `nexus down --vms` stops them, or start `nexus up` again and stop them there",
			ErrVMsRunning, len(live), strings.Join(ids, ", "))
	}
	if len(live) > 0 {
		if err := stopUpVMs(ctx, dataDir, sup, live); err != nil {
			return err
		}
		say("stopped %d VMs", len(live))
	}

	var errs []error
	if owner != "" {
		ncfg := network.Config{Owner: owner, Bridge: st.Bridge, Uplink: network.UplinkNone}
		if st.BridgeCIDR != "" {
			if ncfg.Gateway, err = netip.ParsePrefix(st.BridgeCIDR); err != nil {
				return fmt.Errorf("bridge cidr %q in %s: %w", st.BridgeCIDR, upStateFile, err)
			}
		}
		nw, err := network.New(ncfg, log)
		if err != nil {
			return err
		}
		removed, err := nw.RemoveIsolated(ctx, hostlayout.Layout{RunDir: st.RunDir})
		if err != nil {
			errs = append(errs, err)
		}
		more, err := nw.Teardown(ctx, true)
		removed = append(removed, more...)
		nw.Close()
		for _, r := range removed {
			say("removed %s", r)
		}
		if err != nil {
			errs = append(errs, err)
		}
		if err := vmm.RemoveCgroupRoot(owner); err != nil {
			errs = append(errs, err)
		}
	}
	if o.Purge {
		for _, dir := range []string{st.RunDir, dataDir} {
			if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("purge %s: %w", dir, err))
				continue
			}
			say("deleted %s", dir)
		}
		if st.ImagesDir != "" && !within(st.ImagesDir, st.RunDir) && !within(st.ImagesDir, dataDir) {
			fmt.Fprintf(out, "nexus down: kept the images dir %s (outside the data and run dirs)\n", st.ImagesDir)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if did == 0 {
		fmt.Fprintln(out, "nexus down: nothing to undo")
	}
	return nil
}

// stopUpVMs stops the VMMs and records their VMs as stopped in up's
// store, so the next `nexus up` does not restart them.
func stopUpVMs(ctx context.Context, dataDir string, sup *vmm.Supervisor, live []vmm.Handle) error {
	for _, h := range live {
		if err := sup.Stop(ctx, h.VMID, 3*time.Second); err != nil {
			return err
		}
	}
	dbPath := filepath.Join(dataDir, "nexus.db")
	if _, err := os.Stat(dbPath); err != nil {
		return nil
	}
	s, err := store.Open(ctx, "sqlite://"+dbPath)
	if err != nil {
		return fmt.Errorf("record stopped VMs: %w", err)
	}
	defer s.Close()
	for _, h := range live {
		_, err := s.UpdateVM(ctx, h.VMID, func(v *store.VM) error {
			v.State, v.DesiredState = store.VMStopped, store.VMStopped
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("record vm %s stopped: %w", h.VMID, err)
		}
	}
	return nil
}

func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
