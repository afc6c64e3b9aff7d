package fcsim

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Metric groups in firecracker's serialization order, with their keys. A key
// ending in "_agg" is an aggregate {min_us, max_us, sum_us}. Groups marked
// store keep their values across flushes; all others are counters written
// as deltas since the previous flush.
type metricGroup struct {
	name  string
	keys  []string
	store bool
}

var (
	blockKeys = []string{"activate_fails", "cfg_fails", "no_avail_buffer", "event_fails", "execute_fails",
		"invalid_reqs_count", "flush_count", "queue_event_count", "rate_limiter_event_count", "update_count",
		"update_fails", "read_bytes", "write_bytes", "read_count", "write_count", "read_agg", "write_agg",
		"rate_limiter_throttled_events", "io_engine_throttled_events", "remaining_reqs_count"}
	netKeys = []string{"activate_fails", "cfg_fails", "mac_address_updates", "no_rx_avail_buffer",
		"no_tx_avail_buffer", "event_fails", "rx_queue_event_count", "rx_event_rate_limiter_count",
		"rx_rate_limiter_throttled", "rx_tap_event_count", "rx_bytes_count", "rx_packets_count", "rx_fails",
		"rx_count", "tap_read_fails", "tap_write_fails", "tap_write_agg", "tx_bytes_count",
		"tx_malformed_frames", "tx_fails", "tx_count", "tx_packets_count", "tx_partial_reads",
		"tx_queue_event_count", "tx_rate_limiter_event_count", "tx_rate_limiter_throttled",
		"tx_spoofed_mac_count", "tx_remaining_reqs_count"}
	pmemKeys = []string{"activate_fails", "cfg_fails", "event_fails", "queue_event_count", "rate_limiter_throttled_events",
		"rate_limiter_event_count"}

	groupsBeforeBlock = []metricGroup{
		{name: "api_server", keys: []string{"process_startup_time_us", "process_startup_time_cpu_us"}, store: true},
		{name: "balloon", keys: []string{"activate_fails", "inflate_count", "stats_updates_count",
			"stats_update_fails", "deflate_count", "event_fails", "free_page_report_count",
			"free_page_report_freed", "free_page_report_fails", "free_page_hint_count",
			"free_page_hint_freed", "free_page_hint_fails"}},
	}
	groupsBeforeNet = []metricGroup{
		{name: "deprecated_api", keys: []string{"deprecated_http_api_calls"}},
		{name: "get_api_requests", keys: []string{"instance_info_count", "machine_cfg_count", "mmds_count",
			"vmm_version_count", "hotplug_memory_count"}},
		{name: "i8042", keys: []string{"error_count", "missed_read_count", "missed_write_count", "read_count",
			"reset_count", "write_count"}},
		{name: "uart", keys: []string{"error_count", "flush_count", "missed_read_count", "missed_write_count",
			"read_count", "write_count", "rate_limiter_dropped_bytes"}},
		{name: "latencies_us", keys: []string{"full_create_snapshot", "diff_create_snapshot", "load_snapshot",
			"pause_vm", "resume_vm", "vmm_full_create_snapshot", "vmm_diff_create_snapshot",
			"vmm_load_snapshot", "vmm_pause_vm", "vmm_resume_vm"}, store: true},
		{name: "logger", keys: []string{"missed_metrics_count", "metrics_fails", "missed_log_count", "rate_limited_log_count"}},
		{name: "mmds", keys: []string{"rx_accepted", "rx_accepted_err", "rx_accepted_unusual", "rx_bad_eth",
			"rx_invalid_token", "rx_no_token", "rx_count", "tx_bytes", "tx_count", "tx_errors", "tx_frames",
			"connections_created", "connections_destroyed"}},
	}
	groupsBeforePmem = []metricGroup{
		{name: "patch_api_requests", keys: []string{"drive_count", "drive_fails", "network_count",
			"network_fails", "machine_cfg_count", "machine_cfg_fails", "mmds_count", "mmds_fails",
			"hotplug_memory_count", "hotplug_memory_fails", "pmem_count", "pmem_fails"}},
		{name: "put_api_requests", keys: []string{"actions_count", "actions_fails", "boot_source_count",
			"boot_source_fails", "drive_count", "drive_fails", "logger_count", "logger_fails",
			"machine_cfg_count", "machine_cfg_fails", "cpu_cfg_count", "cpu_cfg_fails", "metrics_count",
			"metrics_fails", "network_count", "network_fails", "mmds_count", "mmds_fails", "vsock_count",
			"vsock_fails", "pmem_count", "pmem_fails", "serial_count", "serial_fails",
			"hotplug_memory_count", "hotplug_memory_fails"}},
		{name: "seccomp", keys: []string{"num_faults"}},
		{name: "vcpu", keys: []string{"exit_io_in", "exit_io_out", "exit_mmio_read", "exit_mmio_write",
			"failures", "kvmclock_ctrl_fails", "exit_io_in_agg", "exit_io_out_agg", "exit_mmio_read_agg", "exit_mmio_write_agg"}},
		{name: "vmm", keys: []string{"panic_count"}},
		{name: "signals", keys: []string{"sigbus", "sigsegv", "sigxfsz", "sigxcpu", "sigpipe", "sighup", "sigill"}, store: true},
		{name: "vsock", keys: []string{"activate_fails", "cfg_fails", "rx_queue_event_fails",
			"tx_queue_event_fails", "ev_queue_event_fails", "muxer_event_fails", "conn_event_fails",
			"rx_queue_event_count", "tx_queue_event_count", "rx_bytes_count", "tx_bytes_count",
			"rx_packets_count", "tx_packets_count", "conns_added", "conns_killed", "conns_removed",
			"killq_resync", "tx_flush_fails", "tx_write_fails", "rx_read_fails"}},
		{name: "entropy", keys: []string{"activate_fails", "entropy_event_fails", "entropy_event_count",
			"entropy_bytes", "host_rng_fails", "entropy_rate_limiter_throttled", "rate_limiter_event_count"}},
	}
	groupsAfterPmem = []metricGroup{
		{name: "interrupts", keys: []string{"triggers", "config_updates"}},
		{name: "memory_hotplug", keys: []string{"activate_fails", "queue_event_fails", "queue_event_count",
			"plug_count", "plug_bytes", "plug_fails", "unplug_count", "unplug_bytes", "unplug_fails",
			"unplug_discard_fails", "unplug_all_count", "unplug_all_fails", "state_count", "state_fails"}},
	}
)

// errMetricsReinit is firecracker's answer to a second metrics init.
var errMetricsReinit = errors.New("Reinitialization of metrics not allowed.")

// metrics is firecracker's METRICS: counters, stores and the output file.
// It is safe for concurrent use.
type metrics struct {
	mu   sync.Mutex
	out  *sink
	vals map[string]uint64 // "group.key"
	now  func() time.Time
}

func newMetrics() *metrics {
	return &metrics{vals: make(map[string]uint64), now: time.Now}
}

// init opens the metrics file; it works once per process.
func (m *metrics) init(path string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.out != nil {
		return errMetricsReinit
	}
	f, err := openSink(path)
	if err != nil {
		return err
	}
	m.out = f
	return nil
}

func (m *metrics) add(key string, n uint64) {
	m.mu.Lock()
	m.vals[key] += n
	m.mu.Unlock()
}

func (m *metrics) inc(key string) { m.add(key, 1) }

func (m *metrics) set(key string, v uint64) {
	m.mu.Lock()
	m.vals[key] = v
	m.mu.Unlock()
}

// devices names the per-device groups of a flush.
type devices struct {
	blocks, nets, pmems, vhostBlocks []string
}

// flush writes one record when metrics are configured; counters restart
// from zero afterwards. It reports whether a record was written.
func (m *metrics) flush(d devices) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.out == nil {
		return false, nil
	}
	var sb strings.Builder
	sb.WriteString(`{"utc_timestamp_ms":`)
	sb.WriteString(strconv.FormatInt(m.now().UnixMilli(), 10))
	var reset []string
	write := func(name, prefix string, keys []string, store bool) {
		sb.WriteString(`,"` + name + `":{`)
		for i, k := range keys {
			if i > 0 {
				sb.WriteByte(',')
			}
			sb.WriteString(`"` + k + `":`)
			full := prefix + "." + k
			if strings.HasSuffix(k, "_agg") {
				sb.WriteString(`{"min_us":0,"max_us":0,"sum_us":0}`)
				continue
			}
			sb.WriteString(strconv.FormatUint(m.vals[full], 10))
			if !store {
				reset = append(reset, full)
			}
		}
		sb.WriteByte('}')
	}
	groups := func(gs []metricGroup) {
		for _, g := range gs {
			write(g.name, g.name, g.keys, g.store)
		}
	}
	perDevice := func(prefix string, ids []string, keys []string) {
		for _, id := range ids {
			write(prefix+id, prefix+id, keys, false)
		}
		write(strings.TrimSuffix(prefix, "_"), strings.TrimSuffix(prefix, "_"), keys, false)
	}
	groups(groupsBeforeBlock)
	perDevice("block_", d.blocks, blockKeys)
	groups(groupsBeforeNet)
	perDevice("net_", d.nets, netKeys)
	groups(groupsBeforePmem)
	perDevice("pmem_", d.pmems, pmemKeys)
	for _, id := range d.vhostBlocks {
		write("vhost_user_block_"+id, "vhost_user_block_"+id, []string{"activate_fails", "cfg_fails", "init_time_us", "activate_time_us", "config_change_time_us"}, false)
	}
	groups(groupsAfterPmem)
	sb.WriteString("}\n")
	if _, err := m.out.Write([]byte(sb.String())); err != nil {
		// Only the missed count: firecracker never bumps metrics_fails.
		m.vals["logger.missed_metrics_count"]++
		return false, err
	}
	for _, k := range reset {
		delete(m.vals, k)
	}
	return true, nil
}

func (m *metrics) close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.out != nil {
		m.out.Close()
		m.out = nil
	}
}
