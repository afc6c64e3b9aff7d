package manager

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nexus-microvm/nexus/internal/store"
)

func TestCheckVcpu(t *testing.T) {
	for _, v := range []int{1, 2, 4, 30, 32} {
		if err := checkVcpu("vcpu", v); err != nil {
			t.Errorf("checkVcpu(%d) = %v; want ok", v, err)
		}
	}
	for v, suggest := range map[int]string{0: "use 1", -4: "use 1", 3: "use 4", 31: "use 32", 33: "use 32", 1 << 62: "use 32"} {
		err := checkVcpu("vcpu", v)
		var e *Error
		if !errors.As(err, &e) || e.Kind != KindInvalid || e.Suggestion != suggest {
			t.Errorf("checkVcpu(%d) = %#v; want invalid with %q", v, err, suggest)
		}
	}
}

func TestCheckBootArgsAndTags(t *testing.T) {
	if err := checkBootArgs("boot_args", "console=ttyS0 reboot=k panic=1 ip=172.20.0.2::172.20.0.1:255.255.0.0::eth0:off"); err != nil {
		t.Errorf("plain boot args refused: %v", err)
	}
	for _, bad := range []string{"a\nb", "a\x00", "a\tb", "a\x7f", "a\u0085", strings.Repeat("x", maxBootArgs+1)} {
		if err := checkBootArgs("boot_args", bad); err == nil {
			t.Errorf("checkBootArgs(%q) accepted", bad)
		}
	}
	many := map[string]string{}
	for i := range maxTags + 1 {
		many[fmt.Sprint("k", i)] = "v"
	}
	for name, tags := range map[string]map[string]string{
		"too many":       many,
		"empty key":      {"": "v"},
		"long key":       {strings.Repeat("k", maxTagKey+1): "v"},
		"long value":     {"k": strings.Repeat("v", maxTagValue+1)},
		"control in key": {"k\n": "v"},
		"control in val": {"k": "v\x1b[31m"},
		"invalid utf8":   {"k": "\xff"},
	} {
		if err := checkTags(tags); err == nil {
			t.Errorf("checkTags(%s) accepted", name)
		}
	}
	if err := checkTags(map[string]string{"team": "infra", "ci.job": "1234", "ünïcode": "ok"}); err != nil {
		t.Errorf("good tags refused: %v", err)
	}
}

// A VM larger than every host is the caller's mistake (400), not a
// shortage (503); a VM that fits a host that is merely full is a 503.
func TestPickTooLargeVersusFull(t *testing.T) {
	s := &Placement{core: &core{cfg: Config{VcpuOvercommit: 2, MemOvercommit: 1}}}
	hosts := []store.Host{
		{ID: "h1", Name: "a", State: store.HostReady, Capacity: store.Resources{VCPU: 4, MemMiB: 8192}},
		{ID: "h2", Name: "b", State: store.HostReady, Capacity: store.Resources{VCPU: 8, MemMiB: 4096}},
		{ID: "h3", Name: "gone", State: store.HostUnreachable, Capacity: store.Resources{VCPU: 64, MemMiB: 1 << 20}},
	}
	full := map[string]store.Allocation{"h1": {VCPU: 8, MemMiB: 8192}, "h2": {VCPU: 16, MemMiB: 4096}}
	for _, tc := range []struct {
		vcpu, mem int
		alloc     map[string]store.Allocation
		kind      Kind
		code      string
	}{
		{2, 16384, nil, KindInvalid, "vm_too_large"}, // more memory than any ready host
		{32, 128, nil, KindInvalid, "vm_too_large"},  // more vCPUs than any ready host
		{2, 1024, full, KindNoCapacity, "no_capacity"},
	} {
		_, err := s.pick(hosts, tc.alloc, "", tc.vcpu, tc.mem)
		var e *Error
		if !errors.As(err, &e) || e.Kind != tc.kind || e.Code != tc.code {
			t.Errorf("pick(%d vCPU, %d MiB) = %v; want %s", tc.vcpu, tc.mem, err, tc.code)
		}
	}
	hs, err := s.pick(hosts, nil, "", 2, 6000)
	if err != nil || len(hs) != 1 || hs[0].ID != "h1" {
		t.Errorf("pick(2, 6000) = %v, %v; want h1 only", hs, err)
	}
}
