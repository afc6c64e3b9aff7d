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
		// A serde-derived struct takes an array of its fields.
		{`[]`, tyVM, "invalid length 0, expected struct Vm with 1 element at line 1 column 2"},
		{`["Paused",1]`, tyVM, "trailing characters at line 1 column 11"},
		{`[1]`, tyMachineConfig, "invalid length 1, expected struct MachineConfig with 6 elements at line 1 column 3"},
		{`{"vcpu_count":[1]}`, tyMachineConfig, "invalid type: sequence, expected u8 at line 1 column 14"},
		{`{"state":{"Paused":1}}`, tyVM, "invalid type: integer `1`, expected unit at line 1 column 20"},
		// The first error in reading order wins, as in serde_json's one pass.
		{`{"vcpu_count":300,`, tyMachineConfig, "invalid value: integer `300`, expected u8 at line 1 column 17"},
		{`{"foo":1,`, tyMachineConfig, "unknown field `foo`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages` at line 1 column 6"},
		{`{"mem_size_mib":1} x`, tyMachineConfig, "missing field `vcpu_count` at line 1 column 18"},
		{`{"smt":null,"vcpu_count":1,"mem_size_mib":1}`, tyMachineConfig, "invalid type: null, expected a boolean at line 1 column 11"},
		{`{"level":"loud"}`, tyLogger, "Invalid LevelFilter at line 1 column 16"},
		{`{"level":"loud","module":"x"}`, tyLogger, "Invalid LevelFilter at line 1 column 15"},
		{`{"metrics_path":"m","extra":1}`, tyMetrics, ""},
		{`{"vcpu_count":1e400,"mem_size_mib":1}`, tyMachineConfig, "number out of range at line 1 column 19"},
		{`{"vcpu_count":-0,"mem_size_mib":1}`, tyMachineConfig, "invalid type: floating point `-0.0`, expected u8 at line 1 column 16"},
		{`{"vcpu_count":18446744073709551616,"mem_size_mib":1}`, tyMachineConfig, "invalid type: floating point `1.8446744073709552e+19`, expected u8 at line 1 column 34"},
		{"{\"kernel_image_path\":\"\xff\"}", tyBootSource, "invalid unicode code point at line 1 column 24"},
		{`{"kernel_image_path":"\udc00"}`, tyBootSource, "lone leading surrogate in hex escape at line 1 column 28"},
		{"", tyVM, "EOF while parsing a value at line 1 column 0"},
		{"x", tyVM, "expected value at line 1 column 1"},
		{`{"state"`, tyVM, "EOF while parsing an object at line 1 column 8"},
		{`{"state" "Paused"}`, tyVM, "expected `:` at line 1 column 10"},
		{`{state:1}`, tyVM, "key must be a string at line 1 column 2"},
		{`{"state":"Paused"} x`, tyVM, "trailing characters at line 1 column 20"},
		{"{\n  \"snapshot_path\": \"foo\",\n  \"mem_backend\": {\n    \"backend_path\": \"bar\"\n  }\n}", tySnapshotLoad,
			"missing field `backend_type` at line 5 column 3"},
		// A custom error is positioned where the struct fixes it: after its
		// closing brace when that follows, before the next comma otherwise.
		{`{"iface_id":"a","host_dev_name":"t","guest_mac":"00:11"}`, tyNet, "The provided MAC address is invalid. at line 1 column 56"},
		{`{"guest_mac":"00:11","iface_id":"a"}`, tyNet, "The provided MAC address is invalid. at line 1 column 20"},
		{`{"bandwidth":{"size":1}}`, tyRateLimiter, "missing field `refill_time` at line 1 column 23"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			_, err := decodeBody([]byte(tc.body), tc.t, nil)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("decode(%q) = %v; want ok", tc.body, err)
				}
				return
			}
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
		{`{"cpu_template":null,"vcpu_count":1,"mem_size_mib":1}`, tyMachineConfig},
		{`[2,256,true,"T2",false,"None"]`, tyMachineConfig},
		{`[1,128]`, tyMachineConfig},
		{`{"state":{"Paused":null}}`, tyVM},
		{`{"iface_id":"a","host_dev_name":"t","guest_mac":"+a:0B:cc:dd:ee:ff"}`, tyNet},
		{"{\"kernel_image_path\":\"a\\u00e9\\ud83d\\ude00\"}", tyBootSource},
	} {
		if _, err := decodeBody([]byte(tc.body), tc.t, nil); err != nil {
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
	if ReadyLine != simtest.ReadyLine {
		t.Fatalf("fcsim.ReadyLine %q != simtest.ReadyLine %q", ReadyLine, simtest.ReadyLine)
	}
}
