package vmm

import (
	"context"
	"fmt"
	"os"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	godbus "github.com/godbus/dbus/v5"
)

// SystemdAvailable reports whether systemd is PID 1 (the sd_booted test).
func SystemdAvailable() bool {
	fi, err := os.Lstat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// SystemdScoper moves VMM processes into transient scopes over D-Bus, as
// `systemd-run --scope` does, so systemd accounts and limits them and
// `systemctl status fc-<id>.scope` shows them.
type SystemdScoper struct {
	conn  *sddbus.Conn
	owner string
}

// NewSystemdScoper connects to the system bus. owner, the agent's instance
// id, goes into every scope's description as its ownership mark.
func NewSystemdScoper(ctx context.Context, owner string) (*SystemdScoper, error) {
	c, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd: %w", err)
	}
	return &SystemdScoper{conn: c, owner: owner}, nil
}

// Attach creates unit (a .scope) holding pid, with lim as the scope's
// MemoryMax, CPUQuota and TasksMax when given, and waits for systemd's
// answer.
func (s *SystemdScoper) Attach(ctx context.Context, unit string, pid int, lim *Limits) error {
	done := make(chan string, 1)
	props := []sddbus.Property{
		sddbus.PropDescription("Nexus microVM " + unit + " (nexus/" + s.owner + ")"),
		sddbus.PropPids(uint32(pid)),
	}
	if lim != nil {
		if lim.MemoryBytes > 0 {
			props = append(props, sddbus.Property{Name: "MemoryMax", Value: godbus.MakeVariant(uint64(lim.MemoryBytes))})
		}
		if lim.CPUQuotaUs > 0 {
			// CPU time per second of wall time, in µs.
			props = append(props, sddbus.Property{Name: "CPUQuotaPerSecUSec", Value: godbus.MakeVariant(uint64(lim.CPUQuotaUs * 1_000_000 / cpuPeriodUs))})
		}
		if lim.Pids > 0 {
			props = append(props, sddbus.Property{Name: "TasksMax", Value: godbus.MakeVariant(uint64(lim.Pids))})
		}
	}
	if _, err := s.conn.StartTransientUnitContext(ctx, unit, "fail", props, done); err != nil {
		return fmt.Errorf("start %s: %w", unit, err)
	}
	select {
	case r := <-done:
		if r != "done" {
			return fmt.Errorf("start %s: %s", unit, r)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes the D-Bus connection.
func (s *SystemdScoper) Close() { s.conn.Close() }
