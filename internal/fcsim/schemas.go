package fcsim

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
)

// The serde types of firecracker's API bodies for the target release line
// (x86_64), as the schemas serde.go decodes with: fields in declaration
// order (serde lists them in that order in "expected one of" and reads a
// JSON array of them in that order), which fields are Option<T> and which
// carry #[serde(default)], and which structs deny unknown fields. Fields
// that exist only on newer lines follow features, which comes from
// internal/firecracker/versions.go.

type tkind int

const (
	tUint tkind = iota
	tInt
	tBool
	tString   // String or PathBuf
	tStrVisit // a string checked inside its visitor (Ipv4Addr)
	tCustom   // String::deserialize, then a check (MacAddr, LevelFilter)
	tEnum     // unit variants
	tStruct
	tSeq
	tMap
	tAny      // serde_json::Value
	tUntagged // #[serde(untagged)] enum
)

type ty struct {
	kind     tkind
	name     string // serde's expectation text, or the struct/enum name
	max      uint64
	min      int64 // tInt
	variants []string
	fields   []field
	deny     bool // #[serde(deny_unknown_fields)]
	elem     *ty
	custom   func(string) error
	alts     []*ty // tUntagged
}

// fieldKind says what serde does when a field is absent or null.
type fieldKind int

const (
	fReq        fieldKind = iota // T: absent is "missing field"
	fOpt                         // Option<T>: absent or null is None; absent from an array is an error
	fDefault                     // #[serde(default)] T: absent is the default; null is an error
	fOptDefault                  // #[serde(default)] Option<T>
)

type field struct {
	name string
	t    *ty
	kind fieldKind
}

func (f field) option() bool { return f.kind == fOpt || f.kind == fOptDefault }

func (t *ty) field(name string) (field, bool) {
	for _, f := range t.fields {
		if f.name == name {
			return f, true
		}
	}
	return field{}, false
}

var (
	tyU8    = &ty{kind: tUint, name: "u8", max: math.MaxUint8}
	tyU16   = &ty{kind: tUint, name: "u16", max: math.MaxUint16}
	tyU32   = &ty{kind: tUint, name: "u32", max: math.MaxUint32}
	tyU64   = &ty{kind: tUint, name: "u64", max: math.MaxUint64}
	tyUsize = &ty{kind: tUint, name: "usize", max: math.MaxUint64}
	tyBool  = &ty{kind: tBool, name: "a boolean"}
	tyStr   = &ty{kind: tString, name: "a string"}
	tyPath  = &ty{kind: tString, name: "path string"}
	tyAny   = &ty{kind: tAny}
)

func req(name string, t *ty) field    { return field{name, t, fReq} }
func opt(name string, t *ty) field    { return field{name, t, fOpt} }
func def(name string, t *ty) field    { return field{name, t, fDefault} }
func optDef(name string, t *ty) field { return field{name, t, fOptDefault} }

// strict is a struct with #[serde(deny_unknown_fields)]; lax one without.
func strict(name string, fields ...field) *ty {
	return &ty{kind: tStruct, name: name, fields: fields, deny: true}
}

func lax(name string, fields ...field) *ty {
	return &ty{kind: tStruct, name: name, fields: fields}
}

func enumOf(name string, variants ...string) *ty {
	return &ty{kind: tEnum, name: name, variants: variants}
}

func seqOf(elem *ty) *ty { return &ty{kind: tSeq, name: "a sequence", elem: elem} }

// features is what the emulated firecracker version supports (immutable).
var features = model.FeaturesOf(mustVersion(model.TargetVersion))

func hugePageVariants() []string {
	if features.TransparentHugePages {
		return []string{"None", "Transparent", "2M"}
	}
	return []string{"None", "2M"}
}

func metricsFields() []field {
	f := []field{req("metrics_path", tyPath)}
	if features.MetricsEmitID {
		f = append(f, def("emit_id", tyBool), def("properties", &ty{kind: tMap, elem: tyStr}))
	}
	return f
}

func snapshotLoadFields() []field {
	f := []field{
		req("snapshot_path", tyPath), opt("mem_file_path", tyPath), opt("mem_backend", tyMemBackend),
		def("enable_diff_snapshots", tyBool), def("track_dirty_pages", tyBool), def("resume_vm", tyBool),
		def("network_overrides", seqOf(tyNetOverride)),
		opt("vsock_override", lax("VsockOverride", req("uds_path", tyStr))),
		def("clock_realtime", tyBool),
	}
	if features.SnapshotLoadHugePages {
		f = append(f, opt("huge_pages", enumOf("HugePagesConfig", "Snapshot", "None", "Transparent", "2M")))
	}
	return f
}

// parseU32 is Rust's str::parse::<u32>, with its error texts.
func parseU32(s string) (uint32, error) {
	if s == "" {
		return 0, errors.New("cannot parse integer from empty string")
	}
	t := strings.TrimPrefix(s, "+")
	if t == "" {
		return 0, errors.New("invalid digit found in string")
	}
	for _, c := range []byte(t) {
		if !isDigit(c) {
			return 0, errors.New("invalid digit found in string")
		}
	}
	v, err := strconv.ParseUint(t, 10, 32)
	if err != nil {
		return 0, errors.New("number too large to fit in target type")
	}
	return uint32(v), nil
}

var (
	tyTokenBucket = lax("TokenBucketConfig",
		req("size", tyU64), opt("one_time_burst", tyU64), req("refill_time", tyU64))
	tyRateLimiter = strict("RateLimiterConfig",
		opt("bandwidth", tyTokenBucket), opt("ops", tyTokenBucket))

	tyStaticCPUTemplate = enumOf("StaticCpuTemplate", "C3", "T2", "T2S", "None", "T2CL", "T2A")
	tyHugePages         = enumOf("HugePageConfig", hugePageVariants()...)

	tyMachineConfig = strict("MachineConfig",
		req("vcpu_count", tyU8), req("mem_size_mib", tyUsize), def("smt", tyBool),
		optDef("cpu_template", tyStaticCPUTemplate), def("track_dirty_pages", tyBool),
		def("huge_pages", tyHugePages))
	tyMachineConfigUpdate = strict("MachineConfigUpdate",
		optDef("vcpu_count", tyU8), optDef("mem_size_mib", tyUsize), optDef("smt", tyBool),
		optDef("cpu_template", tyStaticCPUTemplate), optDef("track_dirty_pages", tyBool),
		optDef("huge_pages", tyHugePages))

	tyBootSource = strict("BootSourceConfig",
		req("kernel_image_path", tyStr), opt("initrd_path", tyStr), opt("boot_args", tyStr))

	tyDrive = strict("BlockDeviceConfig",
		req("drive_id", tyStr), opt("partuuid", tyStr), req("is_root_device", tyBool),
		def("cache_type", enumOf("CacheType", "Unsafe", "Writeback")),
		opt("is_read_only", tyBool), opt("path_on_host", tyStr), opt("rate_limiter", tyRateLimiter),
		opt("io_engine", enumOf("FileEngineType", "Async", "Sync")), opt("socket", tyStr))
	tyDriveUpdate = strict("BlockDeviceUpdateConfig",
		req("drive_id", tyStr), opt("path_on_host", tyStr), opt("rate_limiter", tyRateLimiter))

	tyMAC = &ty{kind: tCustom, custom: func(s string) error {
		if !validMAC(s) {
			return errors.New("The provided MAC address is invalid.")
		}
		return nil
	}}
	tyNet = strict("NetworkInterfaceConfig",
		req("iface_id", tyStr), req("host_dev_name", tyStr), opt("guest_mac", tyMAC),
		opt("mtu", tyU16), opt("rx_rate_limiter", tyRateLimiter), opt("tx_rate_limiter", tyRateLimiter))
	tyNetUpdate = strict("NetworkInterfaceUpdateConfig",
		req("iface_id", tyStr), opt("rx_rate_limiter", tyRateLimiter), opt("tx_rate_limiter", tyRateLimiter))

	tyPmem = strict("PmemConfig",
		req("id", tyStr), req("path_on_host", tyStr), def("root_device", tyBool),
		def("read_only", tyBool), opt("rate_limiter", tyRateLimiter))
	tyPmemUpdate = strict("PmemDeviceUpdateConfig", req("id", tyStr), opt("rate_limiter", tyRateLimiter))

	// LevelFilter deserializes a String, then maps it case-insensitively.
	tyLevel = &ty{kind: tCustom, custom: func(s string) error {
		if _, ok := parseLevel(s); !ok {
			return errors.New("Invalid LevelFilter")
		}
		return nil
	}}
	tyLogger = strict("LoggerConfig",
		opt("log_path", tyPath), opt("level", tyLevel), opt("show_level", tyBool),
		opt("show_log_origin", tyBool), opt("module", tyStr))

	tyMetrics = lax("MetricsConfig", metricsFields()...)

	tyAction = strict("ActionBody",
		req("action_type", enumOf("ActionType", "FlushMetrics", "InstanceStart", "SendCtrlAltDel")))
	tyVM = strict("Vm", req("state", enumOf("VmState", "Paused", "Resumed")))

	tySnapshotCreate = strict("CreateSnapshotParams",
		def("snapshot_type", enumOf("SnapshotType", "Diff", "Full")),
		req("snapshot_path", tyPath), req("mem_file_path", tyPath))
	tyMemBackend = strict("MemBackendConfig",
		req("backend_path", tyPath), req("backend_type", enumOf("MemBackendType", "File", "Uffd")))
	tyNetOverride  = lax("NetworkOverride", req("iface_id", tyStr), req("host_dev_name", tyStr))
	tySnapshotLoad = strict("LoadSnapshotConfig", snapshotLoadFields()...)

	tyBalloon = strict("BalloonDeviceConfig",
		req("amount_mib", tyU32), req("deflate_on_oom", tyBool), def("stats_polling_interval_s", tyU16),
		def("free_page_hinting", tyBool), def("free_page_reporting", tyBool))
	tyBalloonUpdate      = strict("BalloonUpdateConfig", req("amount_mib", tyU32))
	tyBalloonStatsUpdate = strict("BalloonUpdateStatsConfig", req("stats_polling_interval_s", tyU16))
	tyHintingStart       = lax("StartHintingCmd", def("acknowledge_on_stop", tyBool))

	// Ipv4Addr parses inside its visitor; a wrong type expects "IPv4 address".
	tyIPv4 = &ty{kind: tStrVisit, name: "IPv4 address", custom: func(s string) error {
		if a, err := netip.ParseAddr(s); err != nil || !a.Is4() {
			return errors.New("invalid IPv4 address syntax")
		}
		return nil
	}}
	tyMmdsConfig = strict("MmdsConfig",
		def("version", enumOf("MmdsVersion", "V1", "V2")), req("network_interfaces", seqOf(tyStr)),
		opt("ipv4_address", tyIPv4), def("imds_compat", tyBool))

	tyVsock = strict("VsockDeviceConfig",
		optDef("vsock_id", tyStr), req("guest_cid", tyU32), req("uds_path", tyStr))

	tyEntropy = strict("EntropyDeviceConfig", opt("rate_limiter", tyRateLimiter))
	tySerial  = strict("SerialConfig", opt("serial_out_path", tyPath), opt("rate_limiter", tyTokenBucket))

	tyKvmCapability = &ty{kind: tCustom, custom: func(s string) error {
		if _, err := parseU32(strings.TrimPrefix(s, "!")); err != nil {
			return errors.New("Failed to parse string [" + s + "] as a kvm capability - can not convert to numeric: " + err.Error())
		}
		return nil
	}}
	tyCpuidRegister = &ty{kind: tCustom, custom: func(s string) error {
		switch s {
		case "eax", "ebx", "ecx", "edx":
			return nil
		}
		return errors.New("Invalid CPUID register. Must be one of [eax, ebx, ecx, edx]")
	}}
	tyCPUConfig = strict("CustomCpuTemplate",
		def("kvm_capabilities", seqOf(tyKvmCapability)),
		def("cpuid_modifiers", seqOf(lax("CpuidLeafModifier",
			req("leaf", tyStr), req("subleaf", tyStr), req("flags", tyU32),
			req("modifiers", seqOf(lax("CpuidRegisterModifier", req("register", tyCpuidRegister), req("bitmap", tyStr))))))),
		def("msr_modifiers", seqOf(lax("RegisterModifier", req("addr", tyStr), req("bitmap", tyStr)))))

	tyHotplug = strict("MemoryHotplugConfig",
		req("total_size_mib", tyUsize), def("block_size_mib", tyUsize), def("slot_size_mib", tyUsize))
	tyHotplugUpdate = strict("MemoryHotplugSizeUpdate", req("requested_size_mib", tyUsize))

	// tyVmmConfig is the --config-file document: kebab-case keys, unknown
	// keys ignored, drives required (before boot-source, so a document
	// with neither is missing `drives`).
	tyVmmConfig = lax("VmmConfig",
		opt("balloon", tyBalloon), req("drives", seqOf(tyDrive)), req("boot-source", tyBootSource),
		opt("cpu-config", &ty{kind: tUntagged, name: "CustomCpuTemplateOrPath", alts: []*ty{tyPath, tyCPUConfig}}),
		opt("logger", tyLogger), opt("machine-config", tyMachineConfig), opt("metrics", tyMetrics),
		opt("mmds-config", tyMmdsConfig), def("network-interfaces", seqOf(tyNet)), opt("vsock", tyVsock),
		opt("entropy", tyEntropy), def("pmem", seqOf(tyPmem)), opt("memory-hotplug", tyHotplug))
)

// parseMAC is MacAddr::from_str: six colon-separated parts of two
// characters, each read by u8::from_str_radix(_, 16) (which takes a
// leading '+').
func parseMAC(s string) ([6]byte, bool) {
	var mac [6]byte
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return mac, false
	}
	for i, p := range parts {
		if len(p) != 2 {
			return mac, false
		}
		digits := strings.TrimPrefix(p, "+")
		v, err := strconv.ParseUint(digits, 16, 8)
		if err != nil || digits == "" || strings.ContainsAny(digits, "+-_") {
			return mac, false
		}
		mac[i] = byte(v)
	}
	return mac, true
}

func validMAC(s string) bool { _, ok := parseMAC(s); return ok }

// canonicalMAC is MacAddr's Display: lower-case, two digits a byte.
func canonicalMAC(s string) string {
	mac, ok := parseMAC(s)
	if !ok {
		return s
	}
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5])
}
