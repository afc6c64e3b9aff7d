package network

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nexus-microvm/nexus/internal/hostlayout"
)

// ensureTaps makes the TAPs of the VMs ids and returns their names.
func ensureTaps(t *testing.T, nw *Network, ids ...string) []string {
	t.Helper()
	var names []string
	for _, id := range ids {
		if err := nw.EnsureTap(context.Background(), tapName(id), id); err != nil {
			t.Fatal(err)
		}
		names = append(names, tapName(id))
	}
	return names
}

// foreignVeth adds a veth pair without our mark, name and name+"p", removed
// when the test ends.
func foreignVeth(t *testing.T, tns *testNS, name string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := tns.add(t, v); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tns.h.LinkDel(v) })
}

// ensureIsolated makes the isolated networks of the VMs ids, with host
// addresses 172.20.0.<first>, <first+1>, …; whatever a test leaves of them
// goes when it ends.
func ensureIsolated(t *testing.T, nw *Network, first int, ids ...string) []Isolated {
	t.Helper()
	var out []Isolated
	for i, id := range ids {
		c := isoConfig(t, id, fmt.Sprintf("172.20.0.%d", first+i))
		t.Cleanup(func() { _ = nw.DeleteIsolated(context.Background(), c.VMID, c.NSPath) })
		if err := nw.EnsureIsolated(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// deleteTaps deletes the TAPs names together (deleteTogether).
func deleteTaps(t *testing.T, nw *Network, names ...string) []int {
	t.Helper()
	var dels []func(context.Context) error
	for _, name := range names {
		dels = append(dels, func(ctx context.Context) error { return nw.DeleteTap(ctx, name) })
	}
	return deleteTogether(t, nw, dels...)
}

// deleteTogether runs the deletions dels at once: the first alone, held in
// its batch until the others have queued behind it, which then go as one
// batch. It returns the batch sizes seen.
func deleteTogether(t *testing.T, nw *Network, dels ...func(context.Context) error) []int {
	t.Helper()
	var sizes []int
	held, release := make(chan struct{}), make(chan struct{})
	nw.dels.batchHook = func(n int) {
		sizes = append(sizes, n)
		if len(sizes) == 1 {
			close(held)
			<-release
		}
	}
	defer func() { nw.dels.batchHook = nil }()
	ctx := context.Background()
	errs := make(chan error, len(dels))
	var wg sync.WaitGroup
	wg.Go(func() { errs <- dels[0](ctx) })
	select {
	case <-held:
	case err := <-errs:
		t.Fatalf("the first deletion ended before its batch: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the first deletion never reached its batch")
	}
	for _, del := range dels[1:] {
		wg.Go(func() { errs <- del(ctx) })
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		nw.dels.mu.Lock()
		queued := len(nw.dels.pending)
		nw.dels.mu.Unlock()
		if queued == len(dels)-1 {
			break
		}
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("%d of %d deletions queued behind the first", queued, len(dels)-1)
		}
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	return sizes
}

// Deletions that queue behind one go as one batch, through the agent's
// link group: every TAP of the batch goes, and links that are not ours
// stay, in their own group.
func TestTapDeletesGoTogether(t *testing.T) {
	tns, nw := readyNet(t)
	names := ensureTaps(t, nw, "a1000000000", "a2000000000", "a3000000000", "a4000000000", "a5000000000", "a6000000000")
	// Someone else's: a TAP without our mark and a veth.
	foreign := []netlink.Link{
		&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: "theirtap0"}, Mode: netlink.TUNTAP_MODE_TAP, Flags: tapFlags},
		&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "theirveth0"}, PeerName: "theirveth0p"},
	}
	for _, l := range foreign {
		if err := tns.add(t, l); err != nil {
			t.Fatal(err)
		}
		defer tns.h.LinkDel(l)
	}

	if sizes := deleteTaps(t, nw, names...); !slices.Equal(sizes, []int{1, len(names) - 1}) {
		t.Errorf("batches = %v; want [1 %d]", sizes, len(names)-1)
	}
	if n := countPrefixed(t, tns); n != 0 {
		t.Errorf("links with the tap prefix after the deletes = %d; want 0", n)
	}
	nw.dels.mu.Lock()
	groups := nw.dels.groups
	nw.dels.mu.Unlock()
	if groups != 1 {
		t.Errorf("batches deleted as a link group = %d; want 1", groups)
	}
	for _, l := range foreign {
		got := mustLink(t, tns, l.Attrs().Name)
		if got.Attrs().Group != 0 {
			t.Errorf("%s is in group %d; want 0, untouched", got.Attrs().Name, got.Attrs().Group)
		}
	}
}

// A TAP of ours left in the delete group (its agent died deleting it) is
// taken out of it when EnsureTap meets it again, or else by the next
// batch, so a later batch of other TAPs' deletions does not take it along.
func TestEnsureTapLeavesTheDeleteGroup(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	keep := tapName("b1000000000")
	if err := nw.EnsureTap(ctx, keep, "b1000000000"); err != nil {
		t.Fatal(err)
	}
	if err := tns.h.LinkSetGroup(mustLink(t, tns, keep), int(nw.delGroup)); err != nil {
		t.Fatal(err)
	}
	if err := nw.EnsureTap(ctx, keep, "b1000000000"); err != nil {
		t.Fatal(err)
	}
	if g := mustLink(t, tns, keep).Attrs().Group; g != 0 {
		t.Fatalf("%s is in group %d after EnsureTap; want 0", keep, g)
	}
	stray := tapName("b5000000000") // left in the group, not met again
	if err := nw.EnsureTap(ctx, stray, "b5000000000"); err != nil {
		t.Fatal(err)
	}
	if err := tns.h.LinkSetGroup(mustLink(t, tns, stray), int(nw.delGroup)); err != nil {
		t.Fatal(err)
	}
	names := ensureTaps(t, nw, "b2000000000", "b3000000000", "b4000000000")
	deleteTaps(t, nw, names...)
	for _, name := range []string{keep, stray} {
		assertTap(t, tns, name, false)
		if g := mustLink(t, tns, name).Attrs().Group; g != 0 {
			t.Errorf("%s is in group %d after the batch; want 0", name, g)
		}
	}
	if n := countPrefixed(t, tns); n != 2 {
		t.Errorf("links with the tap prefix = %d; want only %s and %s", n, keep, stray)
	}
	if nw.dels.groups != 1 {
		t.Errorf("batches deleted as a link group = %d; want 1", nw.dels.groups)
	}
}

// A link not ours found in the delete group (someone else picked its
// number) stops group deletions: the batch's TAPs go one by one, and that
// link stays where it is.
func TestDeleteGroupWithAForeignLink(t *testing.T) {
	tns, nw := readyNet(t)
	foreignVeth(t, tns, "theirveth1")
	if err := tns.h.LinkSetGroup(mustLink(t, tns, "theirveth1"), int(nw.delGroup)); err != nil {
		t.Fatal(err)
	}
	names := ensureTaps(t, nw, "c1000000000", "c2000000000", "c3000000000")
	deleteTaps(t, nw, names...)
	if n := countPrefixed(t, tns); n != 0 {
		t.Errorf("links with the tap prefix after the deletes = %d; want 0", n)
	}
	if g := mustLink(t, tns, "theirveth1").Attrs().Group; g != nw.delGroup {
		t.Errorf("theirveth1 is in group %d; want %d, untouched", g, nw.delGroup)
	}
	if nw.dels.groups != 0 || !nw.dels.off {
		t.Errorf("group deletions = %d, off = %v; want none, and off", nw.dels.groups, nw.dels.off)
	}
}

// A batch whose look at the group fails for a passing reason (here a link
// of the batch deleted by hand meanwhile) goes one by one, and group
// deletions stay on for the next batch.
func TestDeleteGroupLinkGoneMeanwhile(t *testing.T) {
	tns, nw := readyNet(t)
	names := ensureTaps(t, nw, "f1000000000", "f2000000000", "f3000000000", "f4000000000")
	nw.dels.checkHook = func() {
		nw.dels.checkHook = nil
		if err := tns.h.LinkDel(mustLink(t, tns, names[3])); err != nil {
			t.Error(err)
		}
	}
	if sizes := deleteTaps(t, nw, names...); !slices.Equal(sizes, []int{1, 3}) {
		t.Errorf("batches = %v; want [1 3]", sizes)
	}
	if nw.dels.groups != 0 || nw.dels.off {
		t.Fatalf("group deletions = %d, off = %v; want none yet, and on", nw.dels.groups, nw.dels.off)
	}
	if n := countPrefixed(t, tns); n != 0 {
		t.Errorf("links with the tap prefix after the deletes = %d; want 0", n)
	}
	deleteTaps(t, nw, ensureTaps(t, nw, "f5000000000", "f6000000000", "f7000000000")...)
	if nw.dels.groups != 1 || nw.dels.off {
		t.Errorf("group deletions = %d, off = %v; want the next batch as a group", nw.dels.groups, nw.dels.off)
	}
}

// Each agent's delete group is its own, and none is a small number.
func TestDeleteGroup(t *testing.T) {
	a, b := deleteGroup("agent-a"), deleteGroup("agent-b")
	if a == b || a < 1<<31 || b < 1<<31 || a != deleteGroup("agent-a") {
		t.Errorf("delete groups %d, %d; want two stable ones, each ≥ 2^31", a, b)
	}
}

// Teardown deletes many TAPs several at a time (in batches): every one
// goes, and what it reports keeps ListTaps' order.
func TestTeardownManyTaps(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	var ids []string
	for i := range 40 {
		ids = append(ids, fmt.Sprintf("%03xd0000000", i))
	}
	var want []string
	for _, name := range ensureTaps(t, nw, ids...) {
		want = append(want, "tap "+name)
	}
	slices.Sort(want)
	removed, err := nw.Teardown(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range removed {
		if strings.HasPrefix(r, "tap ") {
			got = append(got, r)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("Teardown reported taps %v; want %v", got, want)
	}
	if n := countPrefixed(t, tns); n != 0 {
		t.Errorf("links with the tap prefix after Teardown = %d; want 0", n)
	}
	t.Logf("group deletions for 40 TAPs: %d", nw.dels.groups)
}

// An isolated VM's veth deletion joins the batch of the deletions queued
// with it: TAPs and veths go in one group deletion, the veths' namespaces
// are removed, and a veth not ours stays.
func TestVethDeletesJoinTheBatch(t *testing.T) {
	tns, nw := readyNet(t)
	foreignVeth(t, tns, "theirveth2")
	taps := ensureTaps(t, nw, "d1000000000", "d2000000000")
	dels := []func(context.Context) error{
		func(ctx context.Context) error { return nw.DeleteTap(ctx, taps[0]) },
		func(ctx context.Context) error { return nw.DeleteTap(ctx, taps[1]) },
	}
	isos := ensureIsolated(t, nw, 30, "d3000000000", "d4000000000", "d5000000000")
	for _, c := range isos {
		dels = append(dels, func(ctx context.Context) error { return nw.DeleteIsolated(ctx, c.VMID, c.NSPath) })
	}

	if sizes := deleteTogether(t, nw, dels...); !slices.Equal(sizes, []int{1, 4}) {
		t.Errorf("batches = %v; want [1 4]", sizes)
	}
	if nw.dels.groups != 1 || nw.dels.off {
		t.Errorf("group deletions = %d, off = %v; want 1, on", nw.dels.groups, nw.dels.off)
	}
	for _, c := range isos {
		if _, err := tns.h.LinkByName(hostlayout.VethName(c.VMID)); err == nil {
			t.Errorf("veth of %s left", c.VMID)
		}
		if _, err := os.Stat(c.NSPath); !os.IsNotExist(err) {
			t.Errorf("namespace of %s left: %v", c.VMID, err)
		}
	}
	if n := countPrefixed(t, tns); n != 0 {
		t.Errorf("links with the tap prefix after the deletes = %d; want 0", n)
	}
	if g := mustLink(t, tns, "theirveth2").Attrs().Group; g != 0 {
		t.Errorf("theirveth2 is in group %d; want 0, untouched", g)
	}
}

// An isolated VM's veth left in the delete group is taken out of it by
// EnsureIsolated, or else by the next batch, which then still goes as a
// group: it is ours.
func TestEnsureIsolatedLeavesTheDeleteGroup(t *testing.T) {
	ctx := context.Background()
	tns, nw := readyNet(t)
	isos := ensureIsolated(t, nw, 40, "e1000000000", "e2000000000")
	for _, c := range isos {
		if err := tns.h.LinkSetGroup(mustLink(t, tns, hostlayout.VethName(c.VMID)), int(nw.delGroup)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nw.EnsureIsolated(ctx, isos[0]); err != nil { // met again
		t.Fatal(err)
	}
	if g := mustLink(t, tns, hostlayout.VethName(isos[0].VMID)).Attrs().Group; g != 0 {
		t.Fatalf("veth is in group %d after EnsureIsolated; want 0", g)
	}
	deleteTaps(t, nw, ensureTaps(t, nw, "e3000000000", "e4000000000", "e5000000000")...)
	for _, c := range isos {
		if g := mustLink(t, tns, hostlayout.VethName(c.VMID)).Attrs().Group; g != 0 {
			t.Errorf("veth of %s is in group %d after the batch; want 0", c.VMID, g)
		}
	}
	if nw.dels.groups != 1 || nw.dels.off {
		t.Errorf("group deletions = %d, off = %v; want 1, on", nw.dels.groups, nw.dels.off)
	}
	for _, c := range isos {
		if err := nw.DeleteIsolated(ctx, c.VMID, c.NSPath); err != nil {
			t.Error(err)
		}
	}
}
