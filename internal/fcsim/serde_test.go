package fcsim

import (
	"testing"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
)

// TestSerdeMessages checks the decoder's wording and positions against
// serde_json's (examples from firecracker's own tests and the reference).
func TestSerdeMessages(t *testing.T) {
	for _, tc := range []struct {
		body string
		t    *ty
		want string
	}{
		{`{"mem_size_mib": 128}`, tyMachineConfig, "missing field `vcpu_count` at line 1 column 21"},
		{`{"vcpu_count":300,"mem_size_mib":1}`, tyMachineConfig, "invalid value: integer `300`, expected u8 at line 1 column 17"},
		{`{"vcpu_count":-1,"mem_size_mib":1}`, tyMachineConfig, "invalid value: integer `-1`, expected u8 at line 1 column 16"},
		{`{"vcpu_count":1.5,"mem_size_mib":1}`, tyMachineConfig, "invalid type: floating point `1.5`, expected u8 at line 1 column 17"},
		{`{"vcpu_count":true,"mem_size_mib":1}`, tyMachineConfig, "invalid type: boolean `true`, expected u8 at line 1 column 18"},
		{`{"vcpu_count":null,"mem_size_mib":1}`, tyMachineConfig, "invalid type: null, expected u8 at line 1 column 18"},
		{`{"vcpu_count":1,"mem_size_mib":1,"smt":"yes"}`, tyMachineConfig, "invalid type: string \"yes\", expected a boolean at line 1 column 44"},
		{`{"x":1}`, tyAction, "unknown field `x`, expected `action_type` at line 1 column 4"},
		{`{"state":"Running"}`, tyVM, "unknown variant `Running`, expected `Paused` or `Resumed` at line 1 column 18"},
		{`{"state":"Paused","state":"Paused"}`, tyVM, "duplicate field `state` at line 1 column 25"},
		{`[]`, tyVM, "invalid type: sequence, expected struct Vm at line 1 column 1"},
		{"", tyVM, "EOF while parsing a value at line 1 column 0"},
		{"x", tyVM, "expected value at line 1 column 1"},
		{`{"state"`, tyVM, "EOF while parsing an object at line 1 column 8"},
		{`{"state" "Paused"}`, tyVM, "expected `:` at line 1 column 10"},
		{`{state:1}`, tyVM, "key must be a string at line 1 column 2"},
		{`{"state":"Paused"} x`, tyVM, "trailing characters at line 1 column 20"},
		{"{\n  \"snapshot_path\": \"foo\",\n  \"mem_backend\": {\n    \"backend_path\": \"bar\"\n  }\n}", tySnapshotLoad,
			"missing field `backend_type` at line 5 column 3"},
		{`{"iface_id":"a","host_dev_name":"t","guest_mac":"00:11"}`, tyNet, "The provided MAC address is invalid. at line 1 column 55"},
		{`{"bandwidth":{"size":1}}`, tyRateLimiter, "missing field `refill_time` at line 1 column 23"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			err := decodeBody([]byte(tc.body), tc.t, nil)
			if err == nil || err.Error() != tc.want {
				t.Fatalf("decode(%q) = %v; want %q", tc.body, err, tc.want)
			}
		})
	}
}

func TestSerdeAcceptsValidBodies(t *testing.T) {
	for _, tc := range []struct {
		body string
		t    *ty
	}{
		{`{"vcpu_count":32,"mem_size_mib":1024,"smt":true,"track_dirty_pages":false,"huge_pages":"2M","cpu_template":"T2"}`, tyMachineConfig},
		{`{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:AC:10:00:02","rx_rate_limiter":{"ops":{"size":1,"refill_time":2,"one_time_burst":3}}}`, tyNet},
		{`{"snapshot_path":"s","mem_backend":{"backend_type":"Uffd","backend_path":"p"},"network_overrides":[{"iface_id":"a","host_dev_name":"b"}],"resume_vm":true}`, tySnapshotLoad},
		{`{"smt":null,"vcpu_count":1,"mem_size_mib":1}`, tyMachineConfig},
		{"{\"kernel_image_path\":\"a\\u00e9\\ud83d\\ude00\"}", tyBootSource},
	} {
		if err := decodeBody([]byte(tc.body), tc.t, nil); err != nil {
			t.Errorf("decode(%s) = %v; want ok", tc.body, err)
		}
	}
}

func TestRustDebugString(t *testing.T) {
	if got, want := rustDebugString("a\"b\\c\nd\x01"), `"a\"b\\c\nd\u{1}"`; got != want {
		t.Fatalf("rustDebugString = %s; want %s", got, want)
	}
}

// The console format is a contract: simtest parses it.
func TestConsoleFormatMatchesSimtest(t *testing.T) {
	if CounterPrefix != simtest.CounterPrefix {
		t.Fatalf("fcsim.CounterPrefix %q != simtest.CounterPrefix %q", CounterPrefix, simtest.CounterPrefix)
	}
}
