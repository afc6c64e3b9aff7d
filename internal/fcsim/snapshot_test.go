package fcsim

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// TestSnapshotRoundTrip boots a VM, lets its console count to 2 or more,
// pauses and snapshots it, kills the process, and loads the snapshot into a
// new process: the new console continues from the saved counter.
func TestSnapshotRoundTrip(t *testing.T) {
	ctx := context.Background()
	p := startProc(t, procOpts{})
	bootConfig(t, p.client, p.dir)
	must(t, p.client.InstanceStart(ctx))
	waitCounter(t, func() ([]byte, error) { return os.ReadFile(p.console) }, 2, 10*time.Second)
	must(t, p.client.Pause(ctx))
	saved, err := simtest.ReadCounter(p.console)
	must(t, err)
	snap, mem := filepath.Join(p.dir, "vmstate"), filepath.Join(p.dir, "mem")
	must(t, p.client.CreateSnapshot(ctx, firecracker.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem}))
	checkSparseMem(t, mem, 64)
	p.kill()

	q := startProc(t, procOpts{})
	must(t, q.client.LoadSnapshot(ctx, firecracker.SnapshotLoadParams{SnapshotPath: snap,
		MemBackend: &firecracker.MemoryBackend{BackendType: "File", BackendPath: mem}, ResumeVM: firecracker.Bool(true)}))
	info, err := q.client.DescribeInstance(ctx)
	must(t, err)
	if info.State != firecracker.StateRunning {
		t.Fatalf("state after load with resume_vm = %q", info.State)
	}
	waitCounter(t, func() ([]byte, error) { return os.ReadFile(q.console) }, saved+1, 5*time.Second)
	console, _ := os.ReadFile(q.console)
	first := firstCounter(t, console)
	if first != saved+1 {
		t.Fatalf("restored console starts at counter=%d; want %d (the saved %d plus one)", first, saved+1, saved)
	}
	if cfg, _ := q.client.GetVMConfig(ctx); cfg.MachineConfig == nil || cfg.MachineConfig.MemSizeMib != 64 || len(cfg.Drives) != 1 {
		t.Fatalf("restored config = %+v", cfg)
	}
}

func firstCounter(t *testing.T, console []byte) int {
	t.Helper()
	for _, l := range strings.Split(string(console), "\n") {
		if strings.HasPrefix(l, CounterPrefix) {
			n, err := simtest.LastCounter([]byte(l))
			must(t, err)
			return n
		}
	}
	t.Fatal("no counter line")
	return 0
}

// TestSnapshotLoadValidation corrupts a good state file in the ways
// firecracker detects; every failed load answers 400 and exits 1.
func TestSnapshotLoadValidation(t *testing.T) {
	ctx := context.Background()
	src := startInProc(t)
	bootConfig(t, src.client, src.dir)
	must(t, src.client.InstanceStart(ctx))
	must(t, src.client.Pause(ctx))
	snap, mem := filepath.Join(src.dir, "vmstate"), filepath.Join(src.dir, "mem")
	must(t, src.client.CreateSnapshot(ctx, firecracker.SnapshotCreateParams{SnapshotPath: snap, MemFilePath: mem}))
	good, err := os.ReadFile(snap)
	must(t, err)

	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	resign := func(b []byte) []byte {
		binary.LittleEndian.PutUint64(b[len(b)-8:], crcOf(b[:len(b)-8]))
		return b
	}
	short := filepath.Join(src.dir, "short-mem")
	must(t, os.WriteFile(short, make([]byte, 4096), 0o644))
	for _, tc := range []struct {
		name   string
		state  []byte
		mem    string
		phrase string
	}{
		{"bad magic", mutate(func(b []byte) []byte { b[0] ^= 0xff; return resign(b) }), mem, "Magic value does not match arch"},
		{"bad checksum", mutate(func(b []byte) []byte { b[20] ^= 0x01; return b }), mem, "CRC64 validation failed"},
		{"newer format", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[10:], 99); return resign(b) }), mem,
			"Invalid format version: 10.99.0"},
		{"memory file of the wrong size", good, short, "The memory file is 4096 bytes; the configured guest memory needs 67108864"},
		{"missing memory file", good, filepath.Join(src.dir, "nope"), "Failed to load guest memory: Error creating guest memory from file: " +
			"Failed to load guest memory: No such file or directory (os error 2)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startInProc(t)
			state := filepath.Join(p.dir, "state")
			must(t, os.WriteFile(state, tc.state, 0o644))
			err := p.client.LoadSnapshot(ctx, firecracker.SnapshotLoadParams{SnapshotPath: state,
				MemBackend: &firecracker.MemoryBackend{BackendType: "File", BackendPath: tc.mem}})
			wantFault(t, err, 400, tc.phrase)
			select {
			case code := <-p.done:
				p.done <- code
				if code != 1 {
					t.Fatalf("exit code %d; want 1", code)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("no exit after a failed load")
			}
		})
	}

	t.Run("unknown network override", func(t *testing.T) {
		p := startInProc(t)
		err := p.client.LoadSnapshot(ctx, firecracker.SnapshotLoadParams{SnapshotPath: snap, MemFilePath: mem,
			NetworkOverrides: []firecracker.NetworkOverride{{IfaceID: "eth0", HostDevName: "tap0"}}})
		wantFault(t, err, 400, "Unknown Network Device.")
	})
	t.Run("logger and metrics may come first", func(t *testing.T) {
		p := startInProc(t)
		must(t, p.client.PutLogger(ctx, firecracker.Logger{LogPath: filepath.Join(p.dir, "log")}))
		must(t, p.client.PutMetrics(ctx, firecracker.Metrics{MetricsPath: filepath.Join(p.dir, "metrics")}))
		must(t, p.client.PutMMDS(ctx, map[string]string{"k": "v"}))
		must(t, p.client.LoadSnapshot(ctx, firecracker.SnapshotLoadParams{SnapshotPath: snap, MemFilePath: mem}))
		if info, _ := p.client.DescribeInstance(ctx); info.State != firecracker.StatePaused {
			t.Fatalf("state after load without resume_vm = %q", info.State)
		}
		if b, _ := os.ReadFile(filepath.Join(p.dir, "metrics")); bytes.Count(b, []byte("\n")) != 1 {
			t.Fatalf("metrics after load: %d records; want the one flush of the built VM", bytes.Count(b, []byte("\n")))
		}
	})
}

func crcOf(b []byte) uint64 { return crc64.Checksum(b, crcTable) }

func TestDescribeSnapshot(t *testing.T) {
	b, err := encodeState(vmStatePayload{MemSizeMib: 128})
	must(t, err)
	p := filepath.Join(t.TempDir(), "vmstate")
	must(t, os.WriteFile(p, b, 0o644))
	code, out, _ := runOnce(t, "--describe-snapshot", p)
	if code != 0 || out != "v10.0.0\n" {
		t.Fatalf("--describe-snapshot: exit %d, output %q; want v10.0.0", code, out)
	}
	if binary.LittleEndian.Uint64(b) != 0x0710198486640000 {
		t.Fatalf("state file magic %#x; want firecracker's x86_64 magic", binary.LittleEndian.Uint64(b))
	}
}
