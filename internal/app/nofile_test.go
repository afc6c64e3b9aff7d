package app

import (
	"log/slog"
	"testing"

	"github.com/nexus-microvm/nexus/internal/api"
)

func TestStreamBudget(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		configured int
		nofile     uint64
		want       int
	}{
		{0, 0, api.DefaultMaxStreams},
		{0, 1 << 20, api.DefaultMaxStreams},
		{5000, 1 << 20, 5000},
		{5000, 4096, (4096 - fdReserve) / fdsPerStream},
		{256, 1024, 1},
		{256, 1100, 38},
	} {
		if got := streamBudget(tc.configured, tc.nofile, log); got != tc.want {
			t.Errorf("streamBudget(%d, %d) = %d; want %d", tc.configured, tc.nofile, got, tc.want)
		}
	}
	if n := raiseNoFile(); n == 0 {
		t.Error("raiseNoFile read no limit")
	}
}
