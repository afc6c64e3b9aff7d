package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/netnsutil"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

// ttlInterval is the reconcile interval of the TTL test's manager; the
// expiry sweep runs every second regardless.
const ttlInterval = 2 * time.Second

// ttlLease is the reconciler lease's TTL there: a SIGKILLed manager keeps
// the lease that long, so its successor acts only after it.
const ttlLease = 3 * time.Second

// TestTTL: a VM with a 2 s time to live is deleted (or stopped, per
// on_expiry) within the reconcile interval of its expiry, with an event
// and an audit row of the system; an extended VM stays; an expiry survives
// a manager restart; bad ttl input is 400 and creates nothing.
func TestTTL(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			c := newCluster(t, engine, 1, "--reconcile-interval", ttlInterval.String(), "--lease-ttl", ttlLease.String())
			ctx := context.Background()
			kernel := simtest.WriteKernel(t, c.dir)
			mk := func(name string, e apitypes.Expiry) apitypes.VM {
				t.Helper()
				vm, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: name, VMConfig: apitypes.VMConfig{KernelPath: kernel}, Expiry: e}, true)
				if err != nil {
					t.Fatalf("create %s: %v", name, err)
				}
				return vm
			}

			// Bad input: 400, nothing made.
			for _, e := range []apitypes.Expiry{
				{TTL: "0s"}, {TTL: "500ms"}, {TTL: "abc"}, {TTL: "9000h"}, {TTL: "-1h"},
				{TTL: "1h", OnExpiry: "explode"}, {OnExpiry: "stop"},
			} {
				_, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "bad", VMConfig: apitypes.VMConfig{KernelPath: kernel}, Expiry: e}, true)
				if !isStatus(err, 400) {
					t.Fatalf("create with %+v = %v; want 400", e, err)
				}
			}
			if l, _ := c.client.ListVMs(ctx, nexus.ListVMsOptions{}); len(l.Items) != 0 {
				t.Fatalf("bad creates left VMs: %+v", l.Items)
			}

			short := mk("short", apitypes.Expiry{TTL: "2s"})
			if short.ExpiresAt == nil || short.OnExpiry != "delete" {
				t.Fatalf("created VM: expires_at %v, on_expiry %q; want set, delete", short.ExpiresAt, short.OnExpiry)
			}
			stopper := mk("stopper", apitypes.Expiry{TTL: "2s", OnExpiry: "stop"})
			kept := mk("kept", apitypes.Expiry{TTL: "2s"})
			for _, bad := range []string{"0s", "x", "9000h"} {
				if _, err := c.client.ExtendTTL(ctx, kept.ID, bad, ""); !isStatus(err, 400) {
					t.Fatalf("extend with %q = %v; want 400", bad, err)
				}
			}
			if _, err := c.client.ExtendTTL(ctx, kept.ID, "1h", "bogus"); !isStatus(err, 400) {
				t.Fatalf("extend with on_expiry bogus = %v; want 400", err)
			}
			ext, err := c.client.ExtendTTL(ctx, kept.ID, "1h", "stop")
			if err != nil {
				t.Fatal(err)
			}
			if ext.ExpiresAt == nil || time.Until(*ext.ExpiresAt) < 50*time.Minute || ext.OnExpiry != "stop" {
				t.Fatalf("extended VM: expires_at %v, on_expiry %q; want about 1h from now, stop", ext.ExpiresAt, ext.OnExpiry)
			}
			if _, err := c.client.ExtendTTL(ctx, "no-such-vm", "1h", ""); !isStatus(err, 404) {
				t.Fatalf("extend of a missing VM = %v; want 404", err)
			}

			// Gone within the reconcile interval after its expiry (plus
			// the time a delete takes).
			deadline := short.ExpiresAt.Add(ttlInterval + 3*time.Second)
			eventually(t, time.Until(deadline), "expired VM deleted", func() error {
				if _, err := c.client.GetVM(ctx, short.ID); !isStatus(err, 404) {
					return fmt.Errorf("still there: %v", err)
				}
				return nil
			})
			eventually(t, 5*time.Second, "expired VM stopped", func() error {
				v, err := c.client.GetVM(ctx, stopper.ID)
				if err != nil {
					return err
				}
				if v.State != "stopped" || v.ExpiresAt != nil {
					return fmt.Errorf("state %s, expires_at %v", v.State, v.ExpiresAt)
				}
				return nil
			})
			evs, err := c.client.Events(ctx, stopper.ID)
			if err != nil || !hasEvent(evs, "time to live over") {
				t.Fatalf("stopped VM's events lack the expiry: %+v, %v", evs.Items, err)
			}
			for id, want := range map[string]string{short.ID: "delete", stopper.ID: "stop"} {
				rows, err := c.client.Audit(ctx, nexus.AuditOptions{VMID: id})
				if err != nil {
					t.Fatal(err)
				}
				found := false
				for _, r := range rows.Items {
					if r.Action == "vm.expire" && r.Actor == "system (reconciler)" && r.Result == "success" {
						found = true
					}
				}
				if !found {
					t.Fatalf("no vm.expire audit row of the system for the %s VM: %+v", want, rows.Items)
				}
			}
			if v, err := c.client.GetVM(ctx, kept.ID); err != nil || v.State != "running" {
				t.Fatalf("extended VM = %s, %v; want running", v.State, err)
			}

			// An expiry is in the store: a manager restarted before it
			// passes still acts on it (once it holds the lease its
			// killed predecessor could not release).
			persist := mk("persist", apitypes.Expiry{TTL: "3s"})
			c.restartManager()
			c.waitHosts(1)
			eventually(t, time.Until(time.Now().Add(ttlLease).Add(ttlInterval+5*time.Second)), "expiry after a manager restart", func() error {
				if _, err := c.client.GetVM(ctx, persist.ID); !isStatus(err, 404) {
					return fmt.Errorf("still there: %v", err)
				}
				return nil
			})

			for _, id := range []string{kept.ID, stopper.ID} {
				if err := c.client.DeleteVM(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			c.assertNoLeaks(short.ID, stopper.ID, kept.ID, persist.ID)
		})
	}
}

func hasEvent(evs apitypes.EventList, substr string) bool {
	for _, e := range evs.Items {
		if strings.Contains(e.Message, substr) {
			return true
		}
	}
	return false
}

// TestIsolatedClones: ten clones of one snapshot of an isolated VM run at
// once on one host, each in its own namespace (made by the agent, its VMM
// started inside) with the same guest MAC; real packets from the host
// reach two clones' namespaces through their veths, and ARP on the bridge
// sees a distinct MAC per clone, so nothing collides; deleting them leaves
// no namespace, veth or TAP.
func TestIsolatedClones(t *testing.T) {
	c := newCluster(t, "sqlite", 1, "--reconcile-interval", "1s", "--orphan-grace", "1s")
	ctx := context.Background()
	a := c.agents[0]
	l := a.layout()
	kernel := simtest.WriteKernel(t, c.dir)
	rootfs := simtest.WriteRootfs(t, c.dir, 16)

	if _, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "bad", VMConfig: apitypes.VMConfig{KernelPath: kernel,
		Network: &apitypes.NetworkSpec{Mode: "isolated"}, NIC: &apitypes.NIC{Disabled: true}}}, true); !isStatus(err, 400) {
		t.Fatalf("isolated without a NIC = %v; want 400", err)
	}
	src, err := c.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "src", VMConfig: apitypes.VMConfig{
		KernelPath: kernel, RootfsPath: rootfs, Network: &apitypes.NetworkSpec{Mode: "isolated"}}}, true)
	if err != nil {
		t.Fatal(err)
	}
	if src.Network == nil || src.Network.Mode != "isolated" || src.Network.Address != src.IP || src.Network.GuestAddr != "192.168.127.2" {
		t.Fatalf("isolated VM's network = %+v (ip %s)", src.Network, src.IP)
	}
	checkIsolated(t, a, src.ID)

	snap, err := createSnapshot(c.client, src.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out apitypes.RestoredVM
	if err := c.client.Do(ctx, "POST", "/v1/snapshots/"+snap.SnapshotID+"/instantiate", nil,
		apitypes.InstantiateSnapshotRequest{Name: "clone", Count: 10}, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Items) != 10 || len(out.IDs) != 10 {
		t.Fatalf("instantiate count 10 made %d VMs", len(out.Items))
	}
	addrs := map[string]bool{}
	for i, v := range out.Items {
		if v.Name != fmt.Sprintf("clone-%d", i+1) || v.State != "running" || v.MAC != src.MAC {
			t.Fatalf("clone %d: name %s, state %s, mac %s; want clone-%d, running, the source's %s", i, v.Name, v.State, v.MAC, i+1, src.MAC)
		}
		if v.Network == nil || v.Network.Mode != "isolated" || addrs[v.Network.Address] || v.Network.Address == src.IP {
			t.Fatalf("clone %d: network %+v; want isolated with an address of its own", i, v.Network)
		}
		addrs[v.Network.Address] = true
		checkIsolated(t, a, v.ID)
	}
	// Every clone's history starts with its instantiation.
	rows, err := c.client.Audit(ctx, nexus.AuditOptions{VMID: out.IDs[5]})
	if err != nil || len(rows.Items) == 0 || rows.Items[0].Action != "snapshot.instantiate" {
		t.Fatalf("audit of clone 6 = %+v, %v; want its snapshot.instantiate row", rows.Items, err)
	}
	// A bridge-mode clone of an isolated guest would have the wrong
	// network: refused, nothing made.
	err = c.client.Do(ctx, "POST", "/v1/snapshots/"+snap.SnapshotID+"/instantiate", nil,
		apitypes.InstantiateSnapshotRequest{Name: "br", Network: &apitypes.NetworkSpec{Mode: "bridge"}}, nil)
	if !isStatus(err, 409) {
		t.Fatalf("bridge-mode clone of an isolated snapshot = %v; want 409", err)
	}

	// Real packets: the host pings two clones' addresses; each answer comes
	// from that clone's namespace over its veth, and the host's ARP table
	// holds a different MAC for each (the veths'), none the guest MAC.
	macs := map[string]string{}
	for _, v := range out.Items[:2] {
		pingFrom(t, a.net, v.Network.Address)
		neighs, err := a.net.nl.NeighList(0, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range neighs {
			if n.IP.String() == v.Network.Address && n.HardwareAddr != nil {
				macs[v.Network.Address] = n.HardwareAddr.String()
			}
		}
		if macs[v.Network.Address] == "" || macs[v.Network.Address] == src.MAC {
			t.Fatalf("host ARP entry of %s = %q; want the clone's veth MAC", v.Network.Address, macs[v.Network.Address])
		}
	}
	if m0, m1 := macs[out.Items[0].Network.Address], macs[out.Items[1].Network.Address]; m0 == m1 {
		t.Fatalf("two clones answer ARP with one MAC %s", m0)
	}

	// An isolated VM no row claims (its manager died before recording it)
	// is an orphan of ours: the sweep removes its VMM, namespace and veth.
	// A veth with our prefix but no mark is not ours and stays.
	ag := c.agentClient(a)
	ghost := uuid.NewString()
	if _, err := ag.Tap(ctx, ghost, agentapi.TapRequest{Isolated: &agentapi.IsolatedNet{
		HostAddr: "172.20.255.200", GuestAddr: "192.168.127.2", GuestGateway: "192.168.127.1/30"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.Spawn(ctx, ghost, agentapi.SpawnRequest{NetNS: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.layout().NetNSPath(ghost)); err != nil || !a.net.hasLink(hostlayout.VethName(ghost)) {
		t.Fatalf("ghost's namespace (%v) or veth missing", err)
	}
	decoy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vh-decoy000000"}, PeerName: "vhp-decoy"}
	if err := a.net.nl.LinkAdd(decoy); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.net.nl.LinkDel(decoy) }()
	eventually(t, 20*time.Second, "orphan isolated VM removed", func() error {
		if _, err := os.Stat(a.layout().NetNSPath(ghost)); err == nil || a.net.hasLink(hostlayout.VethName(ghost)) {
			return fmt.Errorf("namespace or veth of %s still there", ghost)
		}
		return nil
	})
	// The reconciler sees the isolated TAPs and veths as the VMs' own: no
	// restart, no orphan removal.
	waitPasses(t, c.client, 3)
	if !a.net.hasLink("vh-decoy000000") {
		t.Fatal("the reconciler removed a veth that is not ours")
	}
	ids := append([]string{src.ID}, out.IDs...)
	for _, id := range ids {
		evs, err := c.client.Events(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if hasEvent(evs, "restarting") {
			t.Fatalf("vm %s was restarted by the reconciler: %+v", id, evs.Items)
		}
		checkIsolated(t, a, id)
	}
	res, err := c.client.Bulk(ctx, "delete", ids)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res.Results {
		if !r.OK {
			t.Fatalf("delete %s: %s", r.ID, r.Error)
		}
	}
	if err := deleteSnapshot(c.client, snap.SnapshotID); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if a.net.hasLink(hostlayout.VethName(id)) || a.net.hasLink(hostlayout.TapName(id)) {
			t.Errorf("vm %s: veth or tap left on the host", id)
		}
		if _, err := os.Stat(l.NetNSPath(id)); err == nil {
			t.Errorf("vm %s: namespace left", id)
		}
	}
	if n := nsMounts(t, c.dir); n != 0 {
		t.Errorf("%d namespace mounts left under %s", n, c.dir)
	}
	c.assertNoLeaks(ids...)
	c.assertNoSnapshotLeaks()
}

// checkIsolated checks an isolated VM's host objects: its namespace is
// mounted in its run dir, its TAP is inside (and held by the VMM, which
// must run there too: firecracker-sim opens the TAP by name in its own
// namespace), not on the host, and its marked veth is a bridge port.
func checkIsolated(t *testing.T, a *agentProc, id string) {
	t.Helper()
	path := a.layout().NetNSPath(id)
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("vm %s: no namespace at %s: %v", id, path, err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	tap, err := nh.LinkByName(hostlayout.TapName(id))
	if err != nil {
		t.Fatalf("vm %s: no tap in its namespace: %v", id, err)
	}
	if tap.Attrs().RawFlags&unix.IFF_LOWER_UP == 0 {
		t.Fatalf("vm %s: nobody holds the tap in its namespace: the VMM runs elsewhere", id)
	}
	if !strings.HasSuffix(tap.Attrs().Alias, "/vm/"+id) {
		t.Fatalf("vm %s: tap mark %q", id, tap.Attrs().Alias)
	}
	if a.net.hasLink(hostlayout.TapName(id)) {
		t.Fatalf("vm %s: a tap of its name is on the host too", id)
	}
	veth, err := a.net.nl.LinkByName(hostlayout.VethName(id))
	if err != nil || !strings.HasSuffix(veth.Attrs().Alias, "/veth/"+id) || veth.Attrs().MasterIndex == 0 {
		t.Fatalf("vm %s: veth %v, %v; want a marked bridge port", id, veth, err)
	}
}

// pingFrom sends ICMP echo requests to addr from inside the host h and
// waits for a reply.
func pingFrom(t *testing.T, h *hostNet, addr string) {
	t.Helper()
	var conn *icmp.PacketConn
	err := netnsutil.Do(h.ns, func() (err error) {
		conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := &net.IPAddr{IP: net.ParseIP(addr)}
	for seq := 1; seq <= 20; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 0x4e58, Seq: seq, Data: []byte("nexus")}}
		b, _ := msg.Marshal(nil)
		if _, err := conn.WriteTo(b, dst); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				break // timed out: send again
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err == nil && m.Type == ipv4.ICMPTypeEchoReply && from.String() == addr {
				return
			}
		}
	}
	t.Fatalf("no ICMP echo reply from %s", addr)
}

// nsMounts counts namespace mounts under dir.
func nsMounts(t *testing.T, dir string) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir) {
			n++
		}
	}
	return n
}

// TestPools: a pool of a snapshot fills to its size with paused VMs; a
// claim returns a running VM at once and the pool refills; a killed
// pooled VMM is healed (the VM replaced); an empty pool with on_empty fail
// answers 503 pool_empty; deleting a pool deletes its unclaimed VMs.
func TestPools(t *testing.T) {
	for _, engine := range engines {
		t.Run(engine, func(t *testing.T) {
			c := newCluster(t, engine, 1, "--reconcile-interval", "1s")
			ctx := context.Background()
			src, _ := snapVM(t, c, "src", 128, 0)
			snap, err := createSnapshot(c.client, src.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, bad := range []apitypes.CreatePoolRequest{
				{Name: "b", SnapshotID: snap.SnapshotID, Size: 0},
				{Name: "b", SnapshotID: snap.SnapshotID, Size: 101},
				{Name: "b", Size: 1},
				{Name: "b", SnapshotID: snap.SnapshotID, TemplateID: "t", Size: 1},
				{Name: "b", SnapshotID: snap.SnapshotID, Size: 2, MinReady: 3},
				{Name: "b", SnapshotID: snap.SnapshotID, Size: 1, OnEmpty: "maybe"},
				{Name: "-b", SnapshotID: snap.SnapshotID, Size: 1},
			} {
				if _, err := c.client.CreatePool(ctx, bad); !isStatus(err, 400) {
					t.Fatalf("create pool %+v = %v; want 400", bad, err)
				}
			}
			if _, err := c.client.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "b", SnapshotID: "no-such", Size: 1}); !isStatus(err, 404) {
				t.Fatalf("pool of a missing snapshot = %v; want 404", err)
			}

			pool, err := c.client.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "warm", SnapshotID: snap.SnapshotID, Size: 2})
			if err != nil {
				t.Fatal(err)
			}
			waitReady := func(ref string, n int) apitypes.Pool {
				t.Helper()
				var p apitypes.Pool
				eventually(t, 30*time.Second, fmt.Sprintf("pool %s has %d ready", ref, n), func() error {
					var err error
					if p, err = c.client.GetPool(ctx, ref, ""); err != nil {
						return err
					}
					if p.Ready != n || p.Creating != 0 {
						return fmt.Errorf("ready %d, creating %d", p.Ready, p.Creating)
					}
					return nil
				})
				return p
			}
			p := waitReady(pool.ID, 2)
			if p.State != "ready" || p.RefillLagSeconds != 0 {
				t.Fatalf("full pool: state %s, lag %v", p.State, p.RefillLagSeconds)
			}
			pooled := poolVMs(t, c, pool.ID)
			for _, v := range pooled {
				if v.State != "paused" {
					t.Fatalf("pooled VM %s is %s; want paused", v.Name, v.State)
				}
			}

			cl, err := c.client.ClaimPool(ctx, "warm", "", apitypes.ClaimRequest{Expiry: apitypes.Expiry{TTL: "1h"}})
			if err != nil {
				t.Fatal(err)
			}
			if !cl.FromPool || cl.Item.State != "running" || cl.Item.PoolID != "" || cl.Item.ExpiresAt == nil {
				t.Fatalf("claim = from pool %v, state %s, pool %q, expires %v; want a running warm VM with a ttl", cl.FromPool, cl.Item.State, cl.Item.PoolID, cl.Item.ExpiresAt)
			}
			if _, ok := pooled[cl.Item.ID]; !ok {
				t.Fatalf("claimed VM %s was not one of the pool's", cl.Item.ID)
			}
			if p := waitReady("warm", 2); p.Claims != 1 {
				t.Fatalf("claims = %d; want 1", p.Claims)
			}

			// A pooled VMM killed: the VM is replaced and the pool is full again.
			victim := ""
			for id := range poolVMs(t, c, pool.ID) {
				victim = id
			}
			inv, err := c.agentClient(c.agents[0]).Inventory(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range inv.VMMs {
				if m.VMID == victim {
					if err := unix.Kill(m.PID, unix.SIGKILL); err != nil {
						t.Fatal(err)
					}
				}
			}
			eventually(t, 30*time.Second, "killed pooled VM replaced", func() error {
				vms := poolVMs(t, c, pool.ID)
				if _, still := vms[victim]; still {
					return fmt.Errorf("vm %s still in the pool", victim)
				}
				ready := 0
				for _, v := range vms {
					if v.State == "paused" {
						ready++
					}
				}
				if ready != 2 {
					return fmt.Errorf("%d ready", ready)
				}
				return nil
			})

			// on_empty fail: once its snapshot is gone the pool cannot
			// refill; the claim after its last VM is 503 pool_empty.
			snap2, err := createSnapshot(c.client, src.ID, nil)
			if err != nil {
				t.Fatal(err)
			}
			strict, err := c.client.CreatePool(ctx, apitypes.CreatePoolRequest{Name: "strict", SnapshotID: snap2.SnapshotID, Size: 1, OnEmpty: "fail"})
			if err != nil {
				t.Fatal(err)
			}
			waitReady("strict", 1)
			if err := deleteSnapshot(c.client, snap2.SnapshotID); err != nil {
				t.Fatal(err)
			}
			last, err := c.client.ClaimPool(ctx, "strict", "", apitypes.ClaimRequest{})
			if err != nil || !last.FromPool {
				t.Fatalf("claim of the last VM = %+v, %v", last, err)
			}
			_, err = c.client.ClaimPool(ctx, "strict", "", apitypes.ClaimRequest{})
			if e := apiErr(err); e == nil || e.Status != 503 || e.Code != "pool_empty" || e.Suggestion == "" {
				t.Fatalf("claim of an empty pool = %v; want 503 pool_empty with a suggestion", err)
			}

			rows, err := c.client.Audit(ctx, nexus.AuditOptions{ResourceID: pool.ID})
			if err != nil {
				t.Fatal(err)
			}
			refills := 0
			for _, r := range rows.Items {
				if r.Action == "pool.refill" && r.Actor == "system (reconciler)" {
					refills++
				}
			}
			if refills < 2 {
				t.Fatalf("%d pool.refill audit rows of the system; want at least 2: %+v", refills, rows.Items)
			}
			resp, err := http.Get(c.url() + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(body), `nexus_pool_claims_total{pool="warm",result="warm"} 1`) {
				t.Fatalf("/metrics lacks the pool's claims")
			}

			// Deleting a pool deletes its VMs; claimed VMs stay.
			inPool := poolVMs(t, c, pool.ID)
			for _, ref := range []string{"warm", strict.ID} {
				if err := c.client.DeletePool(ctx, ref, ""); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := c.client.GetPool(ctx, "warm", ""); !isStatus(err, 404) {
				t.Fatalf("deleted pool: %v", err)
			}
			var gone []string
			for id := range inPool {
				if _, err := c.client.GetVM(ctx, id); !isStatus(err, 404) {
					t.Fatalf("pool VM %s after the pool's delete: %v", id, err)
				}
				gone = append(gone, id)
			}
			for _, id := range []string{cl.Item.ID, last.Item.ID} {
				if v, err := c.client.GetVM(ctx, id); err != nil || v.State != "running" {
					t.Fatalf("claimed VM %s after its pool's delete: %s, %v", id, v.State, err)
				}
			}
			for _, id := range []string{cl.Item.ID, last.Item.ID, src.ID} {
				if err := c.client.DeleteVM(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if err := deleteSnapshot(c.client, snap.SnapshotID); err != nil {
				t.Fatal(err)
			}
			c.assertNoLeaks(append(gone, victim, cl.Item.ID, last.Item.ID, src.ID)...)
		})
	}
}

// poolVMs are the VMs the pool holds, by id.
func poolVMs(t testing.TB, c *cluster, poolID string) map[string]apitypes.VM {
	t.Helper()
	out := map[string]apitypes.VM{}
	for vm, err := range c.client.VMs(context.Background(), nexus.ListVMsOptions{}) {
		if err != nil {
			t.Fatal(err)
		}
		if vm.PoolID == poolID {
			out[vm.ID] = vm
		}
	}
	return out
}
