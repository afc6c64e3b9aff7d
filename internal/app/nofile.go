package app

import (
	"log/slog"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/api"
)

// fdReserve is how many open files the manager keeps for everything but
// log streams: API connections, the store's pool, calls to agents, files.
// With the streams at their cap, /healthz, reads and creates still get a
// descriptor.
const fdReserve = 1024

// fdsPerStream: a relayed stream holds the caller's connection and the
// agent's.
const fdsPerStream = 2

// raiseNoFile lifts the soft open-file limit to the hard one (the Go
// runtime does so too since 1.19; this says it and reads the result) and
// returns the soft limit, or 0 when it cannot be read.
func raiseNoFile() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if lim.Cur < lim.Max {
		raised := unix.Rlimit{Cur: lim.Max, Max: lim.Max}
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &raised) == nil {
			lim = raised
		}
	}
	return lim.Cur
}

// streamBudget is the global stream cap: the configured one (or the API's
// default), lowered so that the streams' descriptors leave fdReserve free
// under the open-file limit nofile (0: unknown, not lowered).
func streamBudget(configured int, nofile uint64, log *slog.Logger) int {
	want := configured
	if want <= 0 {
		want = api.DefaultMaxStreams
	}
	if nofile == 0 {
		return want
	}
	room := 1
	if nofile > fdReserve+fdsPerStream {
		room = int((nofile - fdReserve) / fdsPerStream)
	}
	if room < want {
		log.Warn("the open-file limit caps log streams below their setting; raise the manager's hard limit (LimitNOFILE=)",
			"nofile", nofile, "reserve", fdReserve, "streams", room, "setting", want)
		return room
	}
	return want
}
