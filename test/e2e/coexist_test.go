package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// upInstance is one `nexus up` running in a test host's namespace.
type upInstance struct {
	t       testing.TB
	h       *hostNet
	dataDir string
	runDir  string
	url     string
	client  *nexus.Client
	cmd     *exec.Cmd
	log     string
	printed []string
}

// startUpIn runs `nexus up` inside h with its manager on h's address (so
// the test reaches it over the veth) and the given extra flags and
// environment, and waits until it says it is ready.
func startUpIn(t testing.TB, h *hostNet, dir string, port int, env []string, args ...string) *upInstance {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	u := &upInstance{t: t, h: h, dataDir: filepath.Join(dir, "data"), log: filepath.Join(dir, "up.log")}
	u.runDir = filepath.Join(u.dataDir, "run")
	listen := fmt.Sprintf("%s:%d", h.agentIP, port)
	u.cmd = u.launcher(env, append([]string{"up", "--data-dir", u.dataDir, "--listen", listen,
		"--fc-bin", bins.sim, "--log-format", "json"}, args...)...)
	out, err := u.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	lf, err := os.Create(u.log)
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()
	u.cmd.Stderr = lf
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.kill)
	u.printed = waitReady(t, out, u.log)
	tok, err := os.ReadFile(filepath.Join(u.dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	u.url = "http://" + listen
	u.client = nexus.New(u.url, strings.TrimSpace(string(tok)))
	return u
}

// launcher is the nexus binary run inside the instance's host namespace.
func (u *upInstance) launcher(env []string, args ...string) *exec.Cmd {
	f, err := u.h.file()
	if err != nil {
		u.t.Fatal(err)
	}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(append(os.Environ(), execEnv+"="+bins.nexus), env...)
	cmd.ExtraFiles = []*os.File{f}
	return cmd
}

// stop sends Ctrl-C and waits: up returns, the VMs keep running.
func (u *upInstance) stop() {
	u.t.Helper()
	_ = u.cmd.Process.Signal(syscall.SIGINT)
	if err := u.cmd.Wait(); err != nil {
		u.t.Fatalf("nexus up after Ctrl-C: %v", err)
	}
}

// kill is the cleanup of last resort: up and whatever VMMs it left.
func (u *upInstance) kill() {
	if u.cmd.Process != nil && u.cmd.ProcessState == nil {
		_ = u.cmd.Process.Kill()
		_ = u.cmd.Wait()
	}
	ids := vmIDsOf(u.runDir)
	killVMMs(u.runDir)
	removeCgroups(u.runDir, ids)
}

// down runs `nexus down` for this instance inside its host namespace.
func (u *upInstance) down(args ...string) (int, string) {
	cmd := u.launcher(nil, append([]string{"down", "--data-dir", u.dataDir}, args...)...)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		u.t.Fatal(err)
	}
	return 0, string(out)
}

// hostState is what a test host holds that Nexus could touch: links (with
// their kind, master and alias) and nf_tables tables.
func (h *hostNet) state(t testing.TB) []string {
	t.Helper()
	links, err := h.nl.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []string
	for _, l := range links {
		a := l.Attrs()
		out = append(out, fmt.Sprintf("link %s %s master=%s alias=%q", a.Name, l.Type(), names[a.MasterIndex], a.Alias))
	}
	c, err := nftables.New(nftables.WithNetNSFd(int(h.ns)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		out = append(out, "nft table "+tb.Name)
	}
	slices.Sort(out)
	return out
}

// nftRules counts the rules of an ip table in h.
func (h *hostNet) nftRules(t testing.TB, table string) int {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(h.ns)))
	if err != nil {
		t.Fatal(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatal(err)
		}
		n += len(rules)
	}
	return n
}

// holdTap opens the TAP in h the way firecracker does and keeps it open
// until the test ends: another program's VM.
func (h *hostNet) holdTap(t testing.TB, name string) {
	t.Helper()
	var fd int
	err := h.do(func() error {
		f, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		ifr, _ := unix.NewIfreq(name)
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
		if err := unix.IoctlIfreq(f, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(f)
			return err
		}
		fd = f
		return nil
	})
	if err != nil {
		t.Fatalf("hold %s open: %v", name, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
}

// vmmPIDsByID maps VM id → VMM pid for the VMMs of runDir.
func vmmPIDsByID(runDir string) map[string]int {
	out := map[string]int{}
	for _, pid := range vmmPIDs(runDir) {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		args := strings.Split(string(b), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "--id" {
				out[args[i+1]] = pid
			}
		}
	}
	return out
}

// TestUpInstancesCoexist: two complete `nexus up` on one host (their own
// data dirs, bridges, subnets, ports) churn VMs while their reconcilers run
// with a 1 s orphan grace. Neither loses a VM, a TAP or a NAT rule; a loose
// decoy TAP and another program's TAP (on its own bridge, held open) survive
// every orphan sweep. `nexus down` refuses while VMs run, then (with --vms
// --purge) leaves the host exactly as it was before, and says so when run
// again. The first instance runs with AGENT_BIND and FC_IMAGES_DIR set and
// must use them.
func TestUpInstancesCoexist(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	dir := shortTempDir(t)
	h := newHostNet(t)

	// Another program's objects: a loose TAP with a VM-like name, and a
	// TAP on its own bridge that it holds open.
	loose, held := "tap-dec0dec0001", "tap-dec0dec0002"
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	must("decoy bridge", h.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "otherbr0"}}))
	other, err := h.nl.LinkByName("otherbr0")
	must("decoy bridge", err)
	for _, tp := range []*netlink.Tuntap{
		{LinkAttrs: netlink.LinkAttrs{Name: loose}, Mode: netlink.TUNTAP_MODE_TAP, Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR},
		{LinkAttrs: netlink.LinkAttrs{Name: held, MasterIndex: other.Attrs().Index}, Mode: netlink.TUNTAP_MODE_TAP,
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR},
	} {
		must("decoy "+tp.Name, h.addTap(tp))
	}
	heldLink, err := h.nl.LinkByName(held)
	must("decoy", err)
	must("decoy up", h.nl.LinkSetUp(heldLink))
	h.holdTap(t, held)
	before := h.state(t)

	imagesA := filepath.Join(dir, "images-a")
	must("images dir", os.MkdirAll(imagesA, 0o755))
	bindA := fmt.Sprintf("%s:%d", h.agentIP, freePort(t))
	tune := []string{"NEXUS_ORPHAN_GRACE=1s", "NEXUS_RECONCILE_INTERVAL=1s", "NEXUS_STUCK_GRACE=5s"}
	a := startUpIn(t, h, filepath.Join(dir, "a"), freePort(t), append([]string{"AGENT_BIND=" + bindA, "FC_IMAGES_DIR=" + imagesA}, tune...),
		"--bridge", "nxa0", "--bridge-cidr", "172.30.0.1/24")
	b := startUpIn(t, h, filepath.Join(dir, "b"), freePort(t), tune, "--bridge", "nxb0", "--bridge-cidr", "172.31.0.1/24")

	// AGENT_BIND and FC_IMAGES_DIR are used.
	hosts, err := a.client.Hosts(ctx)
	if err != nil || len(hosts.Items) != 1 || hosts.Items[0].Addr != "http://"+bindA || !hosts.Items[0].Simulated {
		t.Fatalf("a's hosts = %+v, %v; want one simulated host at http://%s", hosts, err, bindA)
	}
	kernel := simtest.WriteKernel(t, imagesA)
	var img apitypes.Image
	if err := a.client.Do(ctx, "POST", "/v1/images", nil, apitypes.CreateImageRequest{Kind: "kernel", Name: "k", HostPath: kernel}, &img); err != nil {
		t.Fatalf("register an image under FC_IMAGES_DIR: %v", err)
	}

	kernelPath := simtest.WriteKernel(t, dir)
	steady := map[*upInstance][]string{}
	for _, u := range []*upInstance{a, b} {
		for i := range 3 {
			vm, err := u.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("steady-%d", i),
				VMConfig: apitypes.VMConfig{KernelPath: kernelPath}}, true)
			if err != nil {
				t.Fatal(err)
			}
			steady[u] = append(steady[u], vm.ID)
		}
	}
	pidsA, pidsB := vmmPIDsByID(a.runDir), vmmPIDsByID(b.runDir)

	// Churn on both for several orphan-grace periods.
	deadline := time.Now().Add(6 * time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for _, u := range []*upInstance{a, b} {
		for w := range 2 {
			wg.Go(func() {
				for i := 0; time.Now().Before(deadline); i++ {
					vm, err := u.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: fmt.Sprintf("churn-%d-%d", w, i),
						VMConfig: apitypes.VMConfig{KernelPath: kernelPath}}, true)
					if err == nil {
						err = u.client.VMAction(ctx, vm.ID, "stop")
					}
					if err == nil {
						err = u.client.VMAction(ctx, vm.ID, "start")
					}
					if err == nil {
						err = u.client.DeleteVM(ctx, vm.ID)
					}
					if err != nil {
						errs <- fmt.Errorf("%s churn: %w", u.dataDir, err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Passes that start after the churn, and after an orphan grace of it,
	// see whatever is left: two passes each, one of them past the grace.
	for _, u := range []*upInstance{a, b} {
		waitPasses(t, u.client, 2)
	}

	for u, pids := range map[*upInstance]map[string]int{a: pidsA, b: pidsB} {
		now := vmmPIDsByID(u.runDir)
		for _, id := range steady[u] {
			vm, err := u.client.GetVM(ctx, id)
			if err != nil || vm.State != "running" {
				t.Errorf("%s: steady vm %s = %+v, %v; want running", u.dataDir, id, vm.State, err)
			}
			if now[id] == 0 || now[id] != pids[id] {
				t.Errorf("%s: steady vm %s's VMM pid %d → %d: it was restarted or lost", u.dataDir, id, pids[id], now[id])
			}
			tap, err := h.nl.LinkByName(hostlayout.TapName(id))
			if err != nil || !strings.HasSuffix(tap.Attrs().Alias, "/vm/"+id) {
				t.Errorf("%s: tap of steady vm %s: %v", u.dataDir, id, err)
			}
		}
		l, err := u.client.ListVMs(ctx, nexus.ListVMsOptions{State: "failed"})
		if err != nil || len(l.Items) != 0 {
			t.Errorf("%s: failed VMs after the churn: %+v, %v", u.dataDir, l, err)
		}
	}
	for _, table := range []string{"nexus-nxa0", "nexus-nxb0"} {
		if n := h.nftRules(t, table); n != 3 {
			t.Errorf("nft table %s has %d rules; want 3", table, n)
		}
	}
	for _, name := range []string{loose, held, "otherbr0"} {
		if _, err := h.nl.LinkByName(name); err != nil {
			t.Errorf("another program's %s is gone: %v", name, err)
		}
	}

	// down: refused while VMs run, then undone with --vms --purge, one
	// instance at a time; the other keeps everything.
	a.stop()
	b.stop()
	if code, out := a.down(); code == 0 || !strings.Contains(out, "still running") || !strings.Contains(out, "--vms") {
		t.Fatalf("down with running VMs: exit %d, %q; want a refusal that names --vms", code, out)
	}
	if _, err := h.nl.LinkByName("nxa0"); err != nil {
		t.Fatalf("the refused down removed the bridge: %v", err)
	}
	if code, out := a.down("--vms", "--purge"); code != 0 {
		t.Fatalf("down --vms --purge: exit %d\n%s", code, out)
	} else {
		t.Logf("down a:\n%s", out)
	}
	if _, err := h.nl.LinkByName("nxa0"); err == nil {
		t.Error("a's bridge is left after its down")
	}
	if _, err := os.Stat(a.dataDir); !os.IsNotExist(err) {
		t.Error("a's data dir is left after down --purge")
	}
	for _, id := range steady[b] {
		if _, err := h.nl.LinkByName(hostlayout.TapName(id)); err != nil {
			t.Errorf("a's down took b's tap %s: %v", hostlayout.TapName(id), err)
		}
	}
	if len(vmmPIDsByID(b.runDir)) != 3 || h.nftRules(t, "nexus-nxb0") != 3 {
		t.Error("a's down touched b's VMs or NAT")
	}
	if code, out := b.down("--vms", "--purge"); code != 0 {
		t.Fatalf("b's down: exit %d\n%s", code, out)
	}
	if after := h.state(t); !slices.Equal(after, before) {
		t.Errorf("host after both downs:\n%s\nwant as before up:\n%s", strings.Join(after, "\n"), strings.Join(before, "\n"))
	}
	if code, out := a.down(); code != 0 || !strings.Contains(out, "nothing to undo") {
		t.Errorf("down again: exit %d, %q; want nothing to undo", code, out)
	}
}

// addTap creates a tuntap inside h (a tuntap is born in the namespace of
// the thread that opens /dev/net/tun).
func (h *hostNet) addTap(tp *netlink.Tuntap) error {
	return h.do(func() error { return h.nl.LinkAdd(tp) })
}

// do runs fn on a thread inside h, thrown away afterwards.
func (h *hostNet) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := netns.Set(h.ns); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// TestUpHoldsHundredsOfSimulatedVMs: a plain `nexus up` (no overcommit
// flags) on this 2-core machine runs 200 one-vCPU simulated VMs, because a
// simulated host's capacity is scaled, and deletes them without a trace.
func TestUpHoldsHundredsOfSimulatedVMs(t *testing.T) {
	testutil.RequireRoot(t)
	const total = 200
	ft := newFleetTarget(t, "sqlite")
	kernel := simtest.WriteKernel(t, ft.dir)
	_, ids := createMany(t, ft.client, kernel, "many", total, 25, 128)
	if t.Failed() {
		t.FailNow()
	}
	ctx := context.Background()
	hosts, err := ft.client.Hosts(ctx)
	if err != nil || len(hosts.Items) != 1 {
		t.Fatalf("hosts: %+v, %v", hosts, err)
	}
	if h := hosts.Items[0]; !h.Simulated || h.VMM == "" {
		t.Errorf("host %+v: want one labelled simulated", h)
	}
	l, err := ft.client.ListVMs(ctx, nexus.ListVMsOptions{State: "running", Limit: 1000})
	if err != nil || len(l.Items) != total {
		t.Fatalf("running VMs = %d, %v; want %d", len(l.Items), err, total)
	}
	deleteAll(t, ft.client, ids, 100)
	if n := ft.leftovers(); n != 0 {
		t.Fatalf("%d leftovers after deleting every VM", n)
	}
}
