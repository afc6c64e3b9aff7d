package fcsim

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// TestLifecycleWithFIFOs drives a simulator process through the typed
// client the way an orchestrator does, with the logger, metrics and
// serial console on FIFOs that nobody reads until the guest runs: boot,
// readiness from the console, pause, snapshot, resume, Ctrl-Alt-Del; then
// a second process restores the snapshot, again onto FIFOs, and its guest
// announces itself once, when resumed, and continues its counter.
func TestLifecycleWithFIFOs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p := startProc(t, procOpts{})
	c, dir := p.client, p.dir
	v, err := c.DetectVersion(ctx)
	must(t, err)
	if !v.IsSim() || !firecracker.FeaturesOf(v).Serial {
		t.Fatalf("version %v: want the simulator of a release with PUT /serial", v)
	}
	logFIFO, metricsFIFO, serialFIFO := mkfifo(t, dir, "log.fifo"), mkfifo(t, dir, "metrics.fifo"), mkfifo(t, dir, "serial.fifo")
	must(t, c.PutLogger(ctx, firecracker.Logger{LogPath: logFIFO, Level: "Info", ShowLevel: firecracker.Bool(true)}))
	must(t, c.PutMetrics(ctx, firecracker.Metrics{MetricsPath: metricsFIFO}))
	must(t, c.PutSerial(ctx, firecracker.SerialDevice{SerialOutPath: serialFIFO}))
	bootConfig(t, c, dir)
	must(t, c.InstanceStart(ctx))

	logs, metrics, console := openReader(t, logFIFO), openReader(t, metricsFIFO), openReader(t, serialFIFO)
	console.waitFor(t, "console", simtest.ReadyLine+"\n")
	console.waitFor(t, "console", simtest.CounterPrefix+"1\n")
	if i, j := strings.Index(console.text(), simtest.ReadyLine), strings.Index(console.text(), simtest.CounterPrefix); i > j {
		t.Fatalf("the ready line comes after the first counter:\n%s", console.text())
	}
	metrics.waitFor(t, "metrics", `"put_api_requests":{"actions_count":1`)

	must(t, c.Pause(ctx))
	snap, mem := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	must(t, c.CreateSnapshot(ctx, firecracker.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem}))
	saved, err := simtest.LastCounter([]byte(console.text()))
	must(t, err)
	must(t, c.Resume(ctx))
	must(t, c.FlushMetrics(ctx))
	metrics.waitFor(t, "metrics", `"latencies_us":{"full_create_snapshot":`)
	if n := strings.Count(console.text(), simtest.ReadyLine); n != 1 {
		t.Fatalf("ready line printed %d times in one boot (pause/resume must not repeat it)", n)
	}
	must(t, c.SendCtrlAltDel(ctx))
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after Ctrl-Alt-Del; want 0", code)
	}
	logs.waitFor(t, "log", "[proc-vm:main:INFO] Firecracker exiting successfully. exit_code=0")
	var rec map[string]json.RawMessage
	lines := strings.Split(strings.TrimSpace(metrics.text()), "\n")
	must(t, json.Unmarshal([]byte(lines[len(lines)-1]), &rec))
	if _, ok := rec["uart"]; !ok {
		t.Fatalf("last metrics record %s", lines[len(lines)-1])
	}

	// Restore into a new process, serial again on a FIFO.
	q := startProc(t, procOpts{})
	restoredFIFO := mkfifo(t, q.dir, "serial.fifo")
	must(t, q.client.PutSerial(ctx, firecracker.SerialDevice{SerialOutPath: restoredFIFO}))
	must(t, q.client.LoadSnapshot(ctx, firecracker.SnapshotLoadParams{SnapshotPath: snap,
		MemBackend: &firecracker.MemoryBackend{BackendType: "File", BackendPath: mem}}))
	restored := openReader(t, restoredFIFO)
	time.Sleep(50 * time.Millisecond)
	if strings.Contains(restored.text(), simtest.ReadyLine) {
		t.Fatal("a restored guest that is still paused printed the ready line")
	}
	must(t, q.client.Resume(ctx))
	restored.waitFor(t, "restored console", simtest.ReadyLine+"\n"+simtest.CounterPrefix)
	if n, _ := simtest.LastCounter([]byte(restored.text())); n <= saved {
		t.Fatalf("restored counter %d; want it to continue after %d", n, saved)
	}
}
