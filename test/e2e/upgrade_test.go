package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
)

// upgradeFrom is the release the rolling-upgrade test upgrades from: the
// commit before migration 00006 (vm_host_alloc_idx), so the current tree
// migrates the database while the old manager serves on it. Its manager
// and agent take the same flags as this tree's. Move it forward when the
// skew policy (docs/upgrading.md) no longer covers it.
const upgradeFrom = "239ce35a0baf561c9986c0c9d59d62c8b6e2bfb1"

// buildRelease builds nexus, firecracker-sim and nexus-jail of commit
// from this repository's history (git archive into a temp dir). Without
// the history (a shallow clone, a source tarball) it skips, except on CI,
// which clones with history and must run it.
func buildRelease(t *testing.T, commit string) binSet {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	if out, err := exec.Command("git", "-C", root, "cat-file", "-e", commit+"^{commit}").CombinedOutput(); err != nil {
		msg := fmt.Sprintf("commit %s (the release to upgrade from) is not in this checkout's git history "+
			"(a shallow clone or no .git: fetch with history, e.g. git fetch --unshallow): %v %s", commit[:12], err, out)
		if os.Getenv("NEXUS_CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	src := t.TempDir()
	archive := exec.Command("git", "-C", root, "archive", "--format=tar", commit)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, err := archive.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	untar.Stdin = pipe
	var stderr bytes.Buffer
	archive.Stderr, untar.Stderr = &stderr, &stderr
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s: %v\n%s", commit, err, stderr.String())
	}
	if err := untar.Wait(); err != nil {
		t.Fatalf("untar %s: %v\n%s", commit, err, stderr.String())
	}
	dir := t.TempDir()
	start := time.Now()
	// -trimpath: the build cache serves the temp dir's packages next time.
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/", "./cmd/nexus", "./cmd/firecracker-sim", "./cmd/nexus-jail")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", commit[:12], err, out)
	}
	t.Logf("built release %s in %s", commit[:12], time.Since(start).Round(time.Millisecond))
	return binSet{nexus: filepath.Join(dir, "nexus"), sim: filepath.Join(dir, "firecracker-sim")}
}

// TestRollingUpgrade upgrades a fleet on Postgres from an older commit of
// this repository to this tree, the way docs/upgrading.md says, while a
// client keeps reading, creating and deleting VMs through the managers a
// load balancer would send it to: the new manager starts beside the old one
// (and migrates the database under it), the old one leaves the rotation and
// stops, then each host is drained, its agent replaced and undrained. No
// VM restarts (same VMM pids), every VM keeps running, and no request
// fails except with a retriable 503.
func TestRollingUpgrade(t *testing.T) {
	old := buildRelease(t, upgradeFrom)
	ctx := context.Background()
	port2 := freePort(t)
	c := newClusterWith(t, clusterOpts{engine: "postgres", bin: old, ports2: []int{port2}})
	for i := range 2 {
		c.startAgent(fmt.Sprintf("host-%d", i))
	}
	c.waitHosts(2)
	kernel := simtest.WriteKernel(t, c.dir)
	var vms []apitypes.VM
	for i := range 4 {
		vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("up-%d", i), VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
		if err != nil {
			t.Fatal(err)
		}
		vms = append(vms, vm)
	}
	before := vmmPIDsByVM(c)
	if len(before) != len(vms) {
		t.Fatalf("VMMs before the upgrade: %v; want one per VM", before)
	}
	pending := migrationsPending(t, c.dsn)
	if len(pending) == 0 {
		t.Fatalf("the old release's database has no migration pending for this tree: move upgradeFrom back before the newest migration")
	}

	mgr1 := fmt.Sprintf("http://127.0.0.1:%d", c.port)
	mgr2 := fmt.Sprintf("http://127.0.0.1:%d", port2)
	lb := newBalancer(t, c.admin, kernel, mgr1)
	defer lb.stop()
	lb.waitRounds(3)

	// A manager of this tree beside the old one: it migrates the database.
	m2 := c.startBin(bins.nexus, "manager-2", []string{"NEXUS_MODE=dev"}, "manager", "--listen", fmt.Sprintf("0.0.0.0:%d", port2),
		"--database-url", c.dsn, "--join-token", c.join)
	t.Cleanup(func() {
		m2.kill()
		if t.Failed() {
			b, _ := os.ReadFile(m2.log)
			t.Logf("--- manager-2.log ---\n%s", tail(string(b), 40))
		}
	})
	m2.waitLog(t, "manager listening", 30*time.Second)
	if p := migrationsPending(t, c.dsn); len(p) != 0 {
		t.Fatalf("after the new manager started, still pending: %v", p)
	}
	// Both releases serve side by side on the migrated database.
	lb.set(mgr1, mgr2)
	lb.waitRounds(4)
	// The old manager leaves the rotation, then stops as systemd stops it.
	lb.set(mgr2)
	lb.waitRounds(1)
	terminate(t, c.mgr)
	// An old manager still starts on the migrated database (a crash
	// restart mid-rollout, or a rollback).
	c.mgr = c.start("manager-old-again", []string{"NEXUS_MODE=dev"}, "manager", "--listen", fmt.Sprintf("0.0.0.0:%d", c.port),
		"--database-url", c.dsn, "--join-token", c.join)
	c.mgr.waitLog(t, "manager listening", 20*time.Second)
	lb.set(mgr1, mgr2)
	lb.waitRounds(2)
	lb.set(mgr2)
	lb.waitRounds(1)
	terminate(t, c.mgr)
	c.mgr = m2 // the cluster's cleanup stops it
	c.client = newClient(mgr2, c.admin)

	// Agents, one host at a time: drain, replace, undrain.
	for _, a := range c.agents {
		if err := c.client.DrainHost(ctx, a.name); err != nil {
			t.Fatalf("drain %s: %v", a.name, err)
		}
		lb.waitRounds(1) // no create placed before the drain is still booting there
		terminate(t, a.proc)
		a.bin = currentBins()
		c.launchAgent(a)
		eventually(t, 20*time.Second, a.name+" ready again", func() error {
			hl, err := c.client.Hosts(ctx)
			if err != nil {
				return err
			}
			for _, h := range hl.Items {
				if h.Name == a.name && h.State != "draining" && h.State != "ready" {
					return fmt.Errorf("%s is %s", a.name, h.State)
				}
			}
			inv, err := c.agentClient(a).Inventory(ctx)
			if err != nil {
				return err
			}
			if len(inv.VMMs) == 0 {
				return fmt.Errorf("the new agent of %s adopted no VMM", a.name)
			}
			return nil
		})
		if err := c.client.UndrainHost(ctx, a.name); err != nil {
			t.Fatalf("undrain %s: %v", a.name, err)
		}
		lb.waitRounds(2)
	}
	lb.stop()

	for _, a := range c.agents {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", a.cmd.Process.Pid))
		if exe != bins.nexus {
			t.Errorf("%s runs %s; want this tree's %s", a.name, exe, bins.nexus)
		}
	}
	if after := vmmPIDsByVM(c); !mapsEqual(before, after) {
		t.Errorf("VMM pids changed across the upgrade (a VM restarted): %v → %v", before, after)
	}
	for _, vm := range vms {
		got, err := c.client.GetVM(ctx, vm.ID)
		if err != nil || got.State != "running" {
			t.Errorf("vm %s after the upgrade: %s, %v", vm.Name, got.State, err)
		}
	}
	// The new agents control the VMMs they adopted.
	if err := c.client.VMAction(ctx, vms[0].ID, "pause"); err != nil {
		t.Errorf("pause an adopted VM: %v", err)
	}
	lb.report(t)
	c.teardown(t, vms)
}

// migrationsPending asks this tree's nexus which migrations the database
// lacks.
func migrationsPending(t *testing.T, dsn string) []int64 {
	t.Helper()
	out, err := exec.Command(bins.nexus, "manager", "migrate", "--dry-run", "-o", "json", "--database-url", dsn).Output()
	if err != nil {
		t.Fatalf("nexus manager migrate --dry-run: %v", err)
	}
	var r struct {
		Pending []struct{ Version int64 } `json:"pending"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("migrate --dry-run -o json: %v in %s", err, out)
	}
	var v []int64
	for _, m := range r.Pending {
		v = append(v, m.Version)
	}
	return v
}

// terminate stops a process as systemd does (SIGTERM) and waits for it.
func terminate(t *testing.T, p *proc) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("stop %s: %v", p.name, err)
	}
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(40 * time.Second):
		p.kill()
		t.Fatalf("%s did not stop within 40s of SIGTERM", p.name)
	}
}

// vmmPIDsByVM maps each VM id to its VMM's pid, from /proc.
func vmmPIDsByVM(c *cluster) map[string]int {
	out := map[string]int{}
	for _, a := range c.agents {
		for _, pid := range vmmPIDs(a.runDir) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			args := strings.Split(string(b), "\x00")
			if i := slices.Index(args, "--id"); i >= 0 && i+1 < len(args) {
				out[args[i+1]] = pid
			}
		}
	}
	return out
}

func mapsEqual(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// balancer is a client behind a load balancer: it sends each request to
// the next manager in rotation, in rounds (list VMs, get one, create one
// and delete it), and records every answer. Only 2xx and 503 (retriable)
// are allowed.
type balancer struct {
	t      *testing.T
	token  string
	kernel string
	hc     *http.Client

	targets  atomic.Pointer[[]string]
	rounds   atomic.Int64
	next     atomic.Int64
	stopping atomic.Bool // the round under way finishes: it deletes what it created
	done     chan struct{}
	once     sync.Once

	mu       sync.Mutex
	counts   map[string]int // "METHOD path-kind status" → n
	failures []string
}

func newBalancer(t *testing.T, token, kernel string, targets ...string) *balancer {
	b := &balancer{t: t, token: token, kernel: kernel, hc: &http.Client{Transport: http.DefaultTransport},
		done: make(chan struct{}), counts: map[string]int{}}
	b.set(targets...)
	go b.run(context.Background())
	return b
}

func (b *balancer) set(targets ...string) { b.targets.Store(&targets) }

func (b *balancer) stop() {
	b.once.Do(func() {
		b.stopping.Store(true)
		<-b.done
	})
}

// waitRounds waits until n more rounds have completed.
func (b *balancer) waitRounds(n int64) {
	b.t.Helper()
	want := b.rounds.Load() + n + 1 // the round under way may have started before
	eventually(b.t, 60*time.Second, fmt.Sprintf("%d client rounds", n), func() error {
		if got := b.rounds.Load(); got < want {
			return fmt.Errorf("%d of %d rounds", got, want)
		}
		return nil
	})
}

func (b *balancer) run(ctx context.Context) {
	defer close(b.done)
	for i := 0; !b.stopping.Load(); i++ {
		b.call(ctx, "GET", "/v1/vms?limit=50", "list", nil)
		var created struct {
			ID   string `json:"id"`
			Item struct {
				ID string `json:"id"`
			} `json:"item"`
		}
		body, _ := json.Marshal(apitypes.CreateVMRequest{Name: fmt.Sprintf("churn-%d", i), VMConfig: apitypes.VMConfig{KernelPath: b.kernel}})
		if raw := b.call(ctx, "POST", "/v1/vms?wait=true", "create", body); raw != nil {
			_ = json.Unmarshal(raw, &created)
			id := created.Item.ID
			if id == "" {
				id = created.ID
			}
			b.call(ctx, "GET", "/v1/vms/"+id, "get", nil)
			// A delete the balancer saw fail with 503 is tried again: the
			// client must leave nothing behind.
			for range 20 {
				if b.call(ctx, "DELETE", "/v1/vms/"+id, "delete", nil) != nil {
					break
				}
			}
		}
		b.rounds.Add(1)
	}
}

// call sends one request to the next manager and returns the body of a
// 2xx answer (nil otherwise).
func (b *balancer) call(ctx context.Context, method, path, kind string, body []byte) []byte {
	targets := *b.targets.Load()
	base := targets[int(b.next.Add(1))%len(targets)]
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, method, base+path, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+b.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		b.record(fmt.Sprintf("%s %s error", method, kind), fmt.Sprintf("%s %s%s: %v", method, base, path, err))
		return nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	key := fmt.Sprintf("%s %s %d", method, kind, resp.StatusCode)
	switch {
	case resp.StatusCode/100 == 2:
		b.record(key, "")
		return raw
	case resp.StatusCode == http.StatusServiceUnavailable:
		b.record(key, "")
	default:
		b.record(key, fmt.Sprintf("%s %s%s: %d %s", method, base, path, resp.StatusCode, bytes.TrimSpace(raw)))
	}
	return nil
}

func (b *balancer) record(key, failure string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.counts[key]++
	if failure != "" {
		b.failures = append(b.failures, failure)
	}
}

// report logs what the client saw and fails the test on any failure.
func (b *balancer) report(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	keys := make([]string, 0, len(b.counts))
	for k := range b.counts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, " %s×%d", k, b.counts[k])
	}
	t.Logf("client answers during the upgrade (%d rounds):%s", b.rounds.Load(), sb.String())
	for _, f := range b.failures {
		t.Errorf("request failed during the upgrade: %s", f)
	}
}
