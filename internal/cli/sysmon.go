package cli

import (
	"log/slog"

	"github.com/nexus-microvm/nexus/internal/sysmon"
)

// quietSysmon eases the Go runtime's monitor thread in a long-running
// server (see package sysmon). Where the host does not allow it, the
// server only spends some more CPU, and says so once.
func quietSysmon(log *slog.Logger) {
	tid, err := sysmon.Quiet(sysmon.Slack)
	if err != nil {
		log.Info("the Go runtime's monitor thread keeps its timer slack (some more CPU per request)", "err", err)
		return
	}
	log.Debug("the Go runtime's monitor thread polls less often", "thread", tid, "timer_slack", sysmon.Slack.String())
}
