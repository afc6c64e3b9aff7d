package vmm

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// procInfo is what /proc says about a pid.
type procInfo struct {
	startTicks uint64 // field 22 of /proc/<pid>/stat: start time since boot
	state      byte   // R, S, D, Z, …
	cmdline    []string
}

// readProc reads /proc/<pid>/stat and cmdline. A missing pid is an error.
func readProc(pid int) (procInfo, error) {
	var pi procInfo
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return pi, err
	}
	// The command name is in parentheses and may contain spaces or ')';
	// the fields we need come after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 || i+2 >= len(stat) {
		return pi, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(stat[i+2:]))
	// fields[0] is field 3 (state); start time is field 22 → fields[19].
	if len(fields) < 20 {
		return pi, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(fields))
	}
	pi.state = fields[0][0]
	pi.startTicks, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return pi, fmt.Errorf("parse /proc/%d/stat start time: %w", pid, err)
	}
	if raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline"); err == nil {
		pi.cmdline = strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	}
	return pi, nil
}

// alive reports whether pid is a running (non-zombie) process started at
// startTicks whose command line carries --id vmID. The start time guards
// against pid reuse; the command line against a recycled pid that happens
// to match the start time of another boot.
func alive(pid int, startTicks uint64, vmID string) bool {
	if pid <= 0 {
		return false
	}
	pi, err := readProc(pid)
	if err != nil || pi.state == 'Z' || pi.state == 'X' {
		return false
	}
	if startTicks != 0 && pi.startTicks != startTicks {
		return false
	}
	return hasFlag(pi.cmdline, "--id", vmID)
}

func hasFlag(argv []string, flag, value string) bool {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag && argv[i+1] == value {
			return true
		}
	}
	return false
}

// scanVMMs finds processes whose command line says they are a VMM of this
// layout: --api-sock is a VM's socket path and --id its VM id.
func scanVMMs(l hostlayout.Layout) []Handle {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []Handle
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pi, err := readProc(pid)
		if err != nil || pi.state == 'Z' || pi.state == 'X' {
			continue
		}
		id, sock := flagValue(pi.cmdline, "--id"), flagValue(pi.cmdline, "--api-sock")
		if id == "" || !hostlayout.ValidVMID(id) || sock != l.SockPath(id) {
			continue
		}
		out = append(out, Handle{Version: handleVersion, VMID: id, PID: pid, StartTicks: pi.startTicks, APISock: sock, StartedAt: time.Now().UTC()})
	}
	return out
}

func flagValue(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}
