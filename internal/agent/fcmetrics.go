package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// Per-VM metrics. Firecracker flushes one JSON record a line to each VM's
// metrics file (every 60 s, and on demand); most of its counters are
// written as deltas since the previous flush, a few ("store" metrics:
// latencies) as current values. The agent follows each live VMM's file,
// sums the deltas into totals that only grow, and exports them with the
// VMM process's CPU time and resident memory, labelled by vm_id.
//
// Cardinality: len(fcSeries) + 3 series per live VMM (about 30), one label
// (vm_id); a host's VMs are bounded by its capacity. Stopped VMs drop out.
// Totals live as long as the agent: after an agent restart a VM's file is
// summed again from its start (at most maxInitialRead of it), so counters
// stay correct, and Prometheus treats any drop as a counter reset.

// fcSeries is one exported firecracker metric.
type fcSeries struct {
	group, key string // where firecracker writes it ("block": all drives)
	name, help string
	counter    bool
	scale      float64 // multiplies firecracker's value (µs → s); 0 means 1
}

var fcSeriesTable = fcSeriesTableArray[:]

var fcSeriesTableArray = [...]fcSeries{
	{"uart", "write_count", "nexus_fc_uart_writes_total", "Writes to the serial console's UART (one per byte the guest prints).", true, 0},
	{"block", "read_bytes", "nexus_fc_block_read_bytes_total", "Bytes read by the guest from its block devices.", true, 0},
	{"block", "write_bytes", "nexus_fc_block_write_bytes_total", "Bytes written by the guest to its block devices.", true, 0},
	{"block", "read_count", "nexus_fc_block_reads_total", "Read requests of the guest's block devices.", true, 0},
	{"block", "write_count", "nexus_fc_block_writes_total", "Write requests of the guest's block devices.", true, 0},
	{"block", "flush_count", "nexus_fc_block_flushes_total", "Flush requests of the guest's block devices.", true, 0},
	{"block", "rate_limiter_throttled_events", "nexus_fc_block_throttled_total", "Block requests delayed by a rate limiter.", true, 0},
	{"net", "rx_bytes_count", "nexus_fc_net_rx_bytes_total", "Bytes the guest received on its network interface.", true, 0},
	{"net", "tx_bytes_count", "nexus_fc_net_tx_bytes_total", "Bytes the guest sent on its network interface.", true, 0},
	{"net", "rx_packets_count", "nexus_fc_net_rx_packets_total", "Packets the guest received.", true, 0},
	{"net", "tx_packets_count", "nexus_fc_net_tx_packets_total", "Packets the guest sent.", true, 0},
	{"net", "rx_fails", "nexus_fc_net_rx_failures_total", "Failed receives of the network device.", true, 0},
	{"net", "tx_fails", "nexus_fc_net_tx_failures_total", "Failed transmits of the network device.", true, 0},
	{"vcpu", "exit_io_in", "nexus_fc_vcpu_exit_io_in_total", "vCPU exits for port I/O reads.", true, 0},
	{"vcpu", "exit_io_out", "nexus_fc_vcpu_exit_io_out_total", "vCPU exits for port I/O writes.", true, 0},
	{"vcpu", "exit_mmio_read", "nexus_fc_vcpu_exit_mmio_read_total", "vCPU exits for MMIO reads.", true, 0},
	{"vcpu", "exit_mmio_write", "nexus_fc_vcpu_exit_mmio_write_total", "vCPU exits for MMIO writes.", true, 0},
	{"vcpu", "failures", "nexus_fc_vcpu_failures_total", "vCPU failures.", true, 0},
	{"vmm", "panic_count", "nexus_fc_vmm_panics_total", "VMM panics.", true, 0},
	{"seccomp", "num_faults", "nexus_fc_seccomp_faults_total", "Seccomp filter violations.", true, 0},
	{"put_api_requests", "actions_count", "nexus_fc_api_actions_total", "PUT /actions calls (start, flush, ctrl-alt-del).", true, 0},
	{"put_api_requests", "actions_fails", "nexus_fc_api_action_failures_total", "Failed PUT /actions calls.", true, 0},
	{"logger", "missed_metrics_count", "nexus_fc_logger_missed_metrics_total", "Metrics records firecracker could not write.", true, 0},
	{"logger", "missed_log_count", "nexus_fc_logger_missed_logs_total", "Log lines firecracker could not write.", true, 0},
	{"latencies_us", "pause_vm", "nexus_fc_pause_latency_seconds", "Duration of the last pause, as firecracker measured it.", false, 1e-6},
	{"latencies_us", "resume_vm", "nexus_fc_resume_latency_seconds", "Duration of the last resume, as firecracker measured it.", false, 1e-6},
	{"latencies_us", "full_create_snapshot", "nexus_fc_snapshot_create_latency_seconds", "Duration of the last full snapshot, as firecracker measured it.", false, 1e-6},
	{"latencies_us", "load_snapshot", "nexus_fc_snapshot_load_latency_seconds", "Duration of the last snapshot load, as firecracker measured it.", false, 1e-6},
}

// Series of the VMM process and of the metrics file itself.
const (
	seriesCPU     = "nexus_vmm_cpu_seconds_total"
	seriesRSS     = "nexus_vmm_resident_memory_bytes"
	seriesFlushes = "nexus_fc_metrics_flushes_total"
	seriesLast    = "nexus_fc_metrics_last_flush_timestamp_seconds"
)

const (
	// maxInitialRead is how much of an existing file is summed when the
	// agent first sees a VM (a file grows by ~5 KiB a minute).
	maxInitialRead = 16 << 20
	// maxReadPerScrape bounds one VM's share of a scrape; the rest is read
	// by the next one.
	maxReadPerScrape = 4 << 20
	// maxRecordBytes drops a line that never ends (not firecracker's).
	maxRecordBytes = 1 << 20
	// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on
	// every Linux configuration Go supports.
	clockTicks = 100
)

// vmmRef is a live VMM: the VM it runs and its process.
type vmmRef struct {
	VMID string
	PID  int
}

// vmCounters is what the agent knows of one VM's metrics file.
type vmCounters struct {
	ino     uint64 // identity of the file read: a new file starts at 0
	off     int64  // bytes consumed
	partial []byte // a record not yet ended by its newline
	values  []float64
	flushes float64
	last    time.Time // utc_timestamp_ms of the newest record
}

// fcMetrics follows the metrics files of a host's live VMMs. It is safe
// for concurrent use (scrapes and the stats route).
type fcMetrics struct {
	layout hostlayout.Layout
	live   func() []vmmRef
	now    func() time.Time

	mu  sync.Mutex
	vms map[string]*vmCounters

	descs    []*prometheus.Desc
	cpu, rss *prometheus.Desc
	flushes  *prometheus.Desc
	last     *prometheus.Desc
}

func newFCMetrics(layout hostlayout.Layout, live func() []vmmRef) *fcMetrics {
	m := &fcMetrics{layout: layout, live: live, now: time.Now, vms: map[string]*vmCounters{}}
	vm := []string{"vm_id"}
	for _, s := range fcSeriesTable {
		m.descs = append(m.descs, prometheus.NewDesc(s.name, s.help+" (firecracker "+s.group+"."+s.key+")", vm, nil))
	}
	m.cpu = prometheus.NewDesc(seriesCPU, "CPU time (user and system) of the VM's VMM process, vCPU threads included.", vm, nil)
	m.rss = prometheus.NewDesc(seriesRSS, "Resident memory of the VM's VMM process (guest memory it touched included).", vm, nil)
	m.flushes = prometheus.NewDesc(seriesFlushes, "Metrics records firecracker wrote for the VM and the agent read.", vm, nil)
	m.last = prometheus.NewDesc(seriesLast, "When firecracker wrote the VM's newest metrics record (Unix time).", vm, nil)
	return m
}

var _ prometheus.Collector = (*fcMetrics)(nil)

func (m *fcMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range m.descs {
		ch <- d
	}
	ch <- m.cpu
	ch <- m.rss
	ch <- m.flushes
	ch <- m.last
}

// Collect reads what each live VMM's file gained since the last scrape.
func (m *fcMetrics) Collect(ch chan<- prometheus.Metric) {
	for _, v := range m.refresh("") {
		for _, s := range v.samples {
			d, t := m.descFor(s.Name)
			if d == nil {
				continue
			}
			ch <- prometheus.MustNewConstMetric(d, t, s.Value, v.id)
		}
	}
}

func (m *fcMetrics) descFor(name string) (*prometheus.Desc, prometheus.ValueType) {
	switch name {
	case seriesCPU:
		return m.cpu, prometheus.CounterValue
	case seriesRSS:
		return m.rss, prometheus.GaugeValue
	case seriesFlushes:
		return m.flushes, prometheus.CounterValue
	case seriesLast:
		return m.last, prometheus.GaugeValue
	}
	for i, s := range fcSeriesTable {
		if s.name == name {
			if s.counter {
				return m.descs[i], prometheus.CounterValue
			}
			return m.descs[i], prometheus.GaugeValue
		}
	}
	return nil, 0
}

// vmSamples are one VM's current values.
type vmSamples struct {
	id      string
	samples []agentapi.Sample
}

// refresh reads the files of the live VMMs (only vmID's when set) and
// returns their values, ordered by VM id. VMs no longer live are forgotten.
func (m *fcMetrics) refresh(vmID string) []vmSamples {
	live := m.live()
	sort.Slice(live, func(i, j int) bool { return live[i].VMID < live[j].VMID })
	m.mu.Lock()
	defer m.mu.Unlock()
	if vmID == "" {
		alive := make(map[string]bool, len(live))
		for _, r := range live {
			alive[r.VMID] = true
		}
		for id := range m.vms {
			if !alive[id] {
				delete(m.vms, id)
			}
		}
	}
	var todo []vmmRef
	for _, r := range live {
		if vmID != "" && r.VMID != vmID {
			continue
		}
		if m.vms[r.VMID] == nil {
			m.vms[r.VMID] = &vmCounters{values: make([]float64, len(fcSeriesTable))}
		}
		todo = append(todo, r)
	}
	// Reading is mostly system calls (stat, read, /proc): a few workers
	// keep a scrape of a thousand VMs within its budget.
	out := make([]vmSamples, len(todo))
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(len(todo), runtime.GOMAXPROCS(0), 4) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				r := todo[i]
				c := m.vms[r.VMID] // the map is only read while the workers run
				c.read(m.layout.MetricsPath(r.VMID))
				out[i] = vmSamples{id: r.VMID, samples: c.samples(r.PID)}
			}
		}()
	}
	for i := range todo {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

func (c *vmCounters) samples(pid int) []agentapi.Sample {
	out := make([]agentapi.Sample, 0, len(fcSeriesTable)+4)
	for i, s := range fcSeriesTable {
		t := "gauge"
		if s.counter {
			t = "counter"
		}
		out = append(out, agentapi.Sample{Name: s.name, Type: t, Value: c.values[i]})
	}
	out = append(out, agentapi.Sample{Name: seriesFlushes, Type: "counter", Value: c.flushes})
	if !c.last.IsZero() {
		out = append(out, agentapi.Sample{Name: seriesLast, Type: "gauge", Value: float64(c.last.UnixMilli()) / 1000})
	}
	if cpu, rss, err := procUsage(pid); err == nil {
		out = append(out,
			agentapi.Sample{Name: seriesCPU, Type: "counter", Value: cpu},
			agentapi.Sample{Name: seriesRSS, Type: "gauge", Value: rss})
	}
	return out
}

// read consumes the records appended to path since the last read. The
// common case, a file that did not grow since the last scrape, costs one
// stat.
func (c *vmCounters) read(path string) {
	fi, err := os.Stat(path)
	if err != nil {
		return // not configured yet (metrics are set during boot), or gone
	}
	var ino uint64
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	size := fi.Size()
	first := c.ino == 0 && c.off == 0
	if ino != c.ino || size < c.off {
		// A new or truncated file (the VMM was restarted): its records are
		// new deltas, added to the totals, which therefore never drop.
		c.ino, c.off, c.partial = ino, 0, nil
	}
	if size <= c.off {
		return
	}
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	skipPartial := false
	if first && size > maxInitialRead {
		c.off = size - maxInitialRead
		skipPartial = true // the read starts inside a record
	}
	n := min(size-c.off, maxReadPerScrape)
	buf := make([]byte, n)
	got, err := f.ReadAt(buf, c.off)
	if err != nil && !errors.Is(err, io.EOF) {
		return
	}
	buf = buf[:got]
	c.off += int64(got)
	if skipPartial {
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		} else {
			return
		}
	}
	data := append(c.partial, buf...)
	c.partial = nil
	for {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			break
		}
		c.add(data[:i])
		data = data[i+1:]
	}
	if len(data) > 0 && len(data) <= maxRecordBytes {
		c.partial = append([]byte(nil), data...)
	}
}

// fcIndex finds a series by group and key: fcIndex["uart"]["write_count"].
var fcIndex = func() map[string]map[string]int {
	idx := map[string]map[string]int{}
	for i, s := range fcSeriesTable {
		if idx[s.group] == nil {
			idx[s.group] = map[string]int{}
		}
		idx[s.group][s.key] = i
	}
	return idx
}()

// add sums one record into the totals; a malformed line changes nothing.
func (c *vmCounters) add(line []byte) {
	var vals [len(fcSeriesTableArray)]float64
	var have [len(fcSeriesTableArray)]bool
	var ts int64
	ok := walkRecord(line, func(group, key, num []byte) {
		if group == nil {
			if string(key) == "utc_timestamp_ms" {
				ts, _ = strconv.ParseInt(string(num), 10, 64)
			}
			return
		}
		i, found := fcIndex[string(group)][string(key)]
		if !found {
			return
		}
		v, err := strconv.ParseFloat(string(num), 64)
		if err != nil {
			return
		}
		vals[i], have[i] = v, true
	})
	if !ok {
		return // a torn or foreign line: skip it rather than guess
	}
	for i, s := range fcSeriesTable {
		if !have[i] {
			continue
		}
		v := vals[i]
		if s.scale != 0 {
			v *= s.scale
		}
		if s.counter {
			c.values[i] += v
		} else {
			c.values[i] = v
		}
	}
	c.flushes++
	if ts > 0 {
		c.last = time.UnixMilli(ts).UTC()
	}
}

// procUsage reads a process's CPU seconds and resident bytes from
// /proc/<pid>/stat (one read: it has both).
func procUsage(pid int) (cpu, rss float64, err error) {
	if pid <= 0 {
		return 0, 0, fmt.Errorf("no pid")
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("vmm %d usage: %w", pid, err)
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')', at field 3 (state). utime and stime are fields 14 and
	// 15, rss (pages) field 24.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("vmm %d usage: malformed stat", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 22 {
		return 0, 0, fmt.Errorf("vmm %d usage: short stat", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	pages, _ := strconv.ParseFloat(f[21], 64)
	return (ut + st) / clockTicks, pages * float64(os.Getpagesize()), nil
}
