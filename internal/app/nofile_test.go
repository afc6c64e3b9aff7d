package app

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/api"
	"github.com/nexus-microvm/nexus/internal/store"
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

func TestRateOptions(t *testing.T) {
	prod, err := RateOptions{}.limits("prod")
	if err != nil || prod.Read != api.DefaultRateLimits.Read || prod.AuthFailure != api.DefaultRateLimits.AuthFailure {
		t.Errorf("prod defaults: %+v %v", prod, err)
	}
	dev, err := RateOptions{Create: "2:4"}.limits("dev")
	if err != nil || dev.Read.On() || dev.Create != (api.Rate{PerSecond: 2, Burst: 4}) {
		t.Errorf("dev with a create limit: %+v %v", dev, err)
	}
	off, err := RateOptions{Read: "0"}.limits("prod")
	if err != nil || off.Read.On() || !off.Mutation.On() {
		t.Errorf("prod with reads off: %+v %v", off, err)
	}
	if _, err := (RateOptions{Mutation: "fast"}).limits("prod"); err == nil || !strings.Contains(err.Error(), "NEXUS_RATE_MUTATION") {
		t.Errorf("a bad rate: %v; want an error naming NEXUS_RATE_MUTATION", err)
	}
}

func TestParseQuota(t *testing.T) {
	l, err := ParseQuota(" vms=20, mem_mib=0 ,streams=3")
	if err != nil || l.VMs == nil || *l.VMs != 20 || l.MemMiB == nil || *l.MemMiB != 0 || *l.Streams != 3 || l.VCPUs != nil {
		t.Errorf("ParseQuota = %+v, %v", l, err)
	}
	if l, err := ParseQuota(""); err != nil || l != (store.QuotaLimits{}) {
		t.Errorf("empty: %+v, %v", l, err)
	}
	for _, bad := range []string{"vms", "cpus=2", "vms=-1", "vms=x", "vms=1,vms=2", "vms=1.5"} {
		if _, err := ParseQuota(bad); err == nil {
			t.Errorf("ParseQuota(%q) accepted", bad)
		}
	}
}
