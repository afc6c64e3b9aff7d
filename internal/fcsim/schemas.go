package fcsim

import (
	"errors"
	"net"
	"strings"

	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// The serde types of firecracker's API bodies for the target release line,
// fields in declaration order (serde lists them in that order in "expected
// one of"). Fields that exist only on newer lines follow features, which
// comes from internal/firecracker/versions.go.

// features is what the emulated firecracker version supports (immutable).
var features = firecracker.FeaturesOf(mustVersion(firecracker.TargetVersion))

func hugePageVariants() []string {
	if features.TransparentHugePages {
		return []string{"None", "Transparent", "2M"}
	}
	return []string{"None", "2M"}
}

func metricsFields() []field {
	f := []field{req("metrics_path", tyPath)}
	if features.MetricsEmitID {
		f = append(f, opt("emit_id", tyBool), opt("properties", &ty{kind: tMap, elem: tyStr}))
	}
	return f
}

func snapshotLoadFields() []field {
	f := []field{
		req("snapshot_path", tyPath), opt("mem_file_path", tyPath), opt("mem_backend", tyMemBackend),
		opt("enable_diff_snapshots", tyBool), opt("track_dirty_pages", tyBool), opt("resume_vm", tyBool),
		opt("network_overrides", seqOf(tyNetOverride)),
		opt("vsock_override", structOf("VsockOverride", req("uds_path", tyStr))),
		opt("clock_realtime", tyBool),
	}
	if features.SnapshotLoadHugePages {
		f = append(f, opt("huge_pages", enumOf("HugePagesConfig", "Snapshot", "None", "Transparent", "2M")))
	}
	return f
}

var (
	tyTokenBucket = structOf("TokenBucketConfig",
		req("size", tyU64), opt("one_time_burst", tyU64), req("refill_time", tyU64))
	tyRateLimiter = structOf("RateLimiterConfig",
		opt("bandwidth", tyTokenBucket), opt("ops", tyTokenBucket))

	tyStaticCPUTemplate = enumOf("StaticCpuTemplate", "C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None")
	tyHugePages         = enumOf("HugePageConfig", hugePageVariants()...)

	tyMachineConfig = structOf("MachineConfig",
		req("vcpu_count", tyU8), req("mem_size_mib", tyUsize), opt("smt", tyBool),
		opt("cpu_template", tyStaticCPUTemplate), opt("track_dirty_pages", tyBool),
		opt("huge_pages", tyHugePages))
	tyMachineConfigUpdate = structOf("MachineConfigUpdate",
		opt("vcpu_count", tyU8), opt("mem_size_mib", tyUsize), opt("smt", tyBool),
		opt("cpu_template", tyStaticCPUTemplate), opt("track_dirty_pages", tyBool),
		opt("huge_pages", tyHugePages))

	tyBootSource = structOf("BootSourceConfig",
		req("kernel_image_path", tyStr), opt("initrd_path", tyStr), opt("boot_args", tyStr))

	tyDrive = structOf("BlockDeviceConfig",
		req("drive_id", tyStr), opt("partuuid", tyStr), req("is_root_device", tyBool),
		opt("cache_type", enumOf("CacheType", "Unsafe", "Writeback")),
		opt("is_read_only", tyBool), opt("path_on_host", tyStr), opt("rate_limiter", tyRateLimiter),
		opt("io_engine", enumOf("FileEngineType", "Async", "Sync")), opt("socket", tyStr))
	tyDriveUpdate = structOf("BlockDeviceUpdateConfig",
		req("drive_id", tyStr), opt("path_on_host", tyStr), opt("rate_limiter", tyRateLimiter))

	tyMAC = &ty{kind: tCustom, custom: func(s string) error {
		if !validMAC(s) {
			return errors.New("The provided MAC address is invalid.")
		}
		return nil
	}}
	tyNet = structOf("NetworkInterfaceConfig",
		req("iface_id", tyStr), req("host_dev_name", tyStr), opt("guest_mac", tyMAC),
		opt("rx_rate_limiter", tyRateLimiter), opt("tx_rate_limiter", tyRateLimiter),
		opt("mtu", tyU16))
	tyNetUpdate = structOf("NetworkInterfaceUpdateConfig",
		req("iface_id", tyStr), opt("rx_rate_limiter", tyRateLimiter), opt("tx_rate_limiter", tyRateLimiter))

	tyPmem = structOf("PmemConfig",
		req("id", tyStr), req("path_on_host", tyStr), opt("root_device", tyBool),
		opt("read_only", tyBool), opt("rate_limiter", tyRateLimiter))
	tyPmemUpdate = structOf("PmemUpdateConfig", req("id", tyStr), opt("rate_limiter", tyRateLimiter))

	tyLevel = &ty{kind: tCustom, custom: func(s string) error {
		if _, ok := parseLevel(s); !ok {
			return errors.New("Failed to parse string to level filter: " + s)
		}
		return nil
	}}
	tyLogger = structOf("LoggerConfig",
		opt("log_path", tyPath), opt("level", tyLevel), opt("show_level", tyBool),
		opt("show_log_origin", tyBool), opt("module", tyStr))

	tyMetrics = structOf("MetricsConfig", metricsFields()...)

	tyAction = structOf("ActionBody",
		req("action_type", enumOf("ActionType", "FlushMetrics", "InstanceStart", "SendCtrlAltDel")))
	tyVM = structOf("Vm", req("state", enumOf("VmState", "Paused", "Resumed")))

	tySnapshotCreate = structOf("CreateSnapshotParams",
		opt("snapshot_type", enumOf("SnapshotType", "Full", "Diff")),
		req("snapshot_path", tyPath), req("mem_file_path", tyPath))
	tyMemBackend = structOf("MemBackendConfig",
		req("backend_path", tyPath), req("backend_type", enumOf("MemBackendType", "File", "Uffd")))
	tyNetOverride  = structOf("NetworkOverride", req("iface_id", tyStr), req("host_dev_name", tyStr))
	tySnapshotLoad = structOf("LoadSnapshotConfig", snapshotLoadFields()...)

	tyBalloon = structOf("BalloonDeviceConfig",
		req("amount_mib", tyU32), req("deflate_on_oom", tyBool), opt("stats_polling_interval_s", tyU16),
		opt("free_page_hinting", tyBool), opt("free_page_reporting", tyBool))
	tyBalloonUpdate      = structOf("BalloonUpdateConfig", req("amount_mib", tyU32))
	tyBalloonStatsUpdate = structOf("BalloonUpdateStatsConfig", req("stats_polling_interval_s", tyU16))
	tyHintingStart       = structOf("StartHintingCmd", opt("acknowledge_on_stop", tyBool))

	tyIPv4 = &ty{kind: tCustom, custom: func(s string) error {
		if ip := net.ParseIP(s); ip == nil || ip.To4() == nil || strings.Contains(s, ":") {
			return errors.New("invalid IPv4 address syntax")
		}
		return nil
	}}
	tyMmdsConfig = structOf("MmdsConfig",
		opt("version", enumOf("MmdsVersion", "V1", "V2")), req("network_interfaces", seqOf(tyStr)),
		opt("ipv4_address", tyIPv4), opt("imds_compat", tyBool))

	tyVsock = structOf("VsockDeviceConfig",
		opt("vsock_id", tyStr), req("guest_cid", tyU32), req("uds_path", tyStr))

	tyEntropy = structOf("EntropyDeviceConfig", opt("rate_limiter", tyRateLimiter))
	tySerial  = structOf("SerialConfig", opt("serial_out_path", tyPath), opt("rate_limiter", tyTokenBucket))

	tyCPUConfig = structOf("CustomCpuTemplate",
		opt("kvm_capabilities", seqOf(tyStr)),
		opt("cpuid_modifiers", seqOf(structOf("CpuidLeafModifier",
			req("leaf", tyStr), req("subleaf", tyStr), req("flags", tyI32),
			req("modifiers", seqOf(structOf("CpuidRegisterModifier",
				req("register", enumOf("CpuidRegister", "eax", "ebx", "ecx", "edx")), req("bitmap", tyStr))))))),
		opt("msr_modifiers", seqOf(structOf("RegisterModifier", req("addr", tyStr), req("bitmap", tyStr)))))

	tyHotplug = structOf("MemoryHotplugConfig",
		req("total_size_mib", tyUsize), opt("slot_size_mib", tyUsize), opt("block_size_mib", tyUsize))
	tyHotplugUpdate = structOf("MemoryHotplugSizeUpdate", req("requested_size_mib", tyUsize))
)

// validMAC checks the syntax firecracker checks: six colon-separated pairs
// of hex digits.
func validMAC(s string) bool {
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return false
	}
	for _, p := range parts {
		if len(p) != 2 || !isHex(p[0]) || !isHex(p[1]) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
