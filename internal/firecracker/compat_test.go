package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeFirecracker answers like a given firecracker release does at its
// socket: GET /version with its version, 204 for every other call. It
// records what arrived, so a test can tell what the client sent. It
// stands for releases that cannot run here (no KVM, no old binaries);
// the simulator covers the current one (internal/fcsim's tests).
type fakeFirecracker struct {
	mu       sync.Mutex
	requests []string // "METHOD path body"
}

func startFake(t *testing.T, version string, answer func(w http.ResponseWriter, r *http.Request) bool) (*Client, *fakeFirecracker) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fc.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeFirecracker{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path+" "+string(b))
		f.mu.Unlock()
		if answer != nil && answer(w, r) {
			return
		}
		if r.URL.Path == "/version" {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"firecracker_version":"`+version+`"}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go srv.Serve(ln)
	c := NewUnix(sock, WithTimeout(5*time.Second))
	t.Cleanup(func() {
		c.CloseIdleConnections()
		srv.Close()
	})
	return c, f
}

func (f *fakeFirecracker) sent() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

// TestFeatureChecks: a call that needs a newer firecracker fails with an
// *UnsupportedError that names the feature and the release, before
// anything but GET /version reaches the host; the version is asked once.
func TestFeatureChecks(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name, version string
		call          func(*Client) error
		want          string // "" = allowed
	}{
		{"pmem on 1.13", "1.13.1", func(c *Client) error { return c.PutPmem(ctx, Pmem{ID: "p", PathOnHost: "/x"}) },
			"firecracker 1.13.1 on this host does not support pmem devices: it needs firecracker v1.14 or newer"},
		{"pmem on 1.14", "1.14.0", func(c *Client) error { return c.PutPmem(ctx, Pmem{ID: "p", PathOnHost: "/x"}) }, ""},
		{"pmem rate limiter on 1.15", "1.15.1", func(c *Client) error {
			return c.PutPmem(ctx, Pmem{ID: "p", PathOnHost: "/x", RateLimiter: &RateLimiter{Ops: &TokenBucket{Size: 1, RefillTime: 1}}})
		}, "does not support pmem rate limiters: it needs firecracker v1.16 or newer"},
		{"hot-unplug on 1.15", "1.15.0", func(c *Client) error { return c.DeleteDrive(ctx, "d") }, "does not support device hot-unplug"},
		{"hot-unplug on the simulator", "1.16.1-sim", func(c *Client) error { return c.DeleteDrive(ctx, "d") }, ""},
		{"serial on 1.13", "1.13.0", func(c *Client) error { return c.PutSerial(ctx, SerialDevice{SerialOutPath: "/x"}) }, "PUT /serial"},
		{"mtu on 1.15", "1.15.0", func(c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "e", HostDevName: "t", MTU: Int(1400)})
		}, "network interface MTU"},
		{"an interface without mtu asks nothing", "1.5.0", func(c *Client) error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "e", HostDevName: "t"})
		}, ""},
		{"network overrides on 1.11", "1.11.0", func(c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "m"},
				NetworkOverrides: []NetworkOverride{{IfaceID: "e", HostDevName: "t"}}})
		}, "network overrides on snapshot load: it needs firecracker v1.12"},
		{"vsock override on 1.15", "1.15.1", func(c *Client) error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "m"},
				VsockOverride: &VsockOverride{UDSPath: "v"}})
		}, "vsock overrides"},
		{"huge pages on 1.6", "1.6.0", func(c *Client) error {
			return c.PutMachineConfig(ctx, MachineConfig{VcpuCount: 1, MemSizeMib: 128, HugePages: "2M"})
		}, "huge pages: it needs firecracker v1.7"},
		{"memory hotplug on 1.13", "1.13.0", func(c *Client) error { return c.PutMemoryHotplug(ctx, MemoryHotplugConfig{TotalSizeMib: Int(1024)}) },
			"memory hotplug"},
		{"hinting on 1.13", "1.13.0", func(c *Client) error { return c.StartBalloonHinting(ctx, BalloonStartCmd{}) }, "free page hinting"},
		{"emit_id on 1.16", "1.16.1", func(c *Client) error { return c.PutMetrics(ctx, Metrics{MetricsPath: "m", EmitID: Bool(true)}) },
			"emit_id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, f := startFake(t, tc.version, nil)
			err := tc.call(c)
			sent := f.sent()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("call failed: %v", err)
				}
				return
			}
			var ue *UnsupportedError
			if !errors.As(err, &ue) || !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v; want an UnsupportedError containing %q", err, tc.want)
			}
			if len(sent) != 1 || !strings.HasPrefix(sent[0], "GET /version") {
				t.Fatalf("requests %q; want only GET /version", sent)
			}
			// A second refused call does not ask again.
			tc.call(c)
			if n := len(f.sent()); n != 1 {
				t.Fatalf("%d requests after a second call; the version must be cached", n)
			}
		})
	}
}

// TestTrackDirtyPagesBeforeV113: firecracker older than v1.13 spells the
// load flag enable_diff_snapshots; the client translates.
func TestTrackDirtyPagesBeforeV113(t *testing.T) {
	ctx := context.Background()
	for version, want := range map[string]string{
		"1.12.1": `"enable_diff_snapshots":true`,
		"1.13.0": `"track_dirty_pages":true`,
	} {
		c, f := startFake(t, version, nil)
		err := c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "s", MemBackend: &MemoryBackend{BackendType: "File", BackendPath: "m"},
			TrackDirtyPages: Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		sent := f.sent()
		if last := sent[len(sent)-1]; !strings.HasPrefix(last, "PUT /snapshot/load ") || !strings.Contains(last, want) {
			t.Fatalf("firecracker %s got %q; want a body with %s", version, last, want)
		}
	}
}

// TestDetectVersion reads the versions real releases report.
func TestDetectVersion(t *testing.T) {
	for version, want := range map[string]Version{
		"1.5.1":      {Major: 1, Minor: 5, Patch: 1},
		"1.16.1":     {Major: 1, Minor: 16, Patch: 1},
		"1.17.0-dev": {Major: 1, Minor: 17, Patch: 0, Pre: "dev"},
		"1.16.1-sim": {Major: 1, Minor: 16, Patch: 1, Pre: "sim"},
	} {
		c, _ := startFake(t, version, nil)
		got, err := c.DetectVersion(context.Background())
		if err != nil || got != want {
			t.Fatalf("DetectVersion with %q = %+v, %v; want %+v", version, got, err, want)
		}
	}
	c, _ := startFake(t, "not-a-version", nil)
	if _, err := c.DetectVersion(context.Background()); err == nil || !strings.Contains(err.Error(), `unreadable "not-a-version"`) {
		t.Fatalf("DetectVersion of garbage = %v", err)
	}
}

func TestSnapshotVersions(t *testing.T) {
	for v, want := range map[string]string{
		"1.5.0": "v1.5.0", "1.7.0": "v1.0.0", "1.10.0": "v3.0.0", "1.10.1": "v4.0.0", "1.11.0": "v5.0.0",
		"1.12.1": "v6.0.0", "1.13.0": "v8.0.0", "1.14.4": "v8.0.0", "1.15.1": "v9.0.0", "1.16.1": "v10.0.0", "1.17.0-dev": "v11.0.0",
	} {
		pv, _ := ParseVersion(v)
		if got := FeaturesOf(pv).SnapshotVersion; got != want {
			t.Errorf("FeaturesOf(%s).SnapshotVersion = %s; want %s", v, got, want)
		}
	}
}

// TestMicroHTTPErrorBody: firecracker's HTTP layer answers with a body
// that is not valid JSON (a raw line feed in the string); the client
// still gives the caller firecracker's words.
func TestMicroHTTPErrorBody(t *testing.T) {
	body := "{ \"error\": \"Invalid header. Reason: Invalid value. Key:Content-Length; Value: x\nAll previous unanswered requests will be dropped.\" }"
	c, _ := startFake(t, "1.16.1", func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, body)
		return true
	})
	_, err := c.GetMachineConfig(context.Background())
	ae, ok := IsAPIError(err)
	if !ok || ae.StatusCode != 400 || ae.FaultMessage != "Invalid header. Reason: Invalid value. Key:Content-Length; Value: x\nAll previous unanswered requests will be dropped." {
		t.Fatalf("error %#v", err)
	}
}
