package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/nexus-microvm/nexus/internal/store"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkConsoleVMList1000 measures how long the console takes, in a
// real headless Chromium against a real manager process, from navigating to
// the VM list until all 1,000 VMs are drawn and the page answers script
// (its main thread is free: the time to interactive). Target: under 1 s.
// page-ms is the browser's own clock: navigation start → every row in the
// DOM, laid out, and the main thread free for the next task; wall-ms is the
// test's clock, navigating and polling through the DevTools protocol every
// 10 ms, so it adds the protocol's round trips (much more on a busy machine).
func BenchmarkConsoleVMList1000(b *testing.B) {
	c := newCluster(b, "sqlite", 0)
	ctx := context.Background()
	st, err := store.Open(ctx, c.dsn)
	if err != nil {
		b.Fatal(err)
	}
	// Rows only: stopped and failed VMs without a host, which the reconciler
	// leaves alone, with the fields a real list shows.
	states := []store.VMState{store.VMStopped, store.VMStopped, store.VMStopped, store.VMFailed}
	for i := range 1000 {
		s := states[i%len(states)]
		if _, err := st.CreateVM(ctx, store.VM{Name: fmt.Sprintf("vm-%04d", i), Project: "default", State: s, DesiredState: store.VMStopped,
			VCPU: 1, MemMiB: 128, Tags: map[string]string{"team": fmt.Sprintf("t%d", i%7), "tier": "web"}}); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()

	br := newBrowser(b, 1280, 900, c.url())
	br.signIn(c.url(), c.admin)
	full := `document.querySelectorAll("#vm-table tbody tr").length === 1000`
	var wall, page []time.Duration
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		nctx, cancel := context.WithTimeout(br.ctx, 30*time.Second)
		if err := chromedp.Do(nctx, chromedp.Navigate(fmt.Sprintf("%s/ui/?run=%d#/vms", c.url(), i))); err != nil {
			b.Fatal(err)
		}
		for {
			ok, err := chromedp.Run(nctx, chromedp.Evaluate[bool](full))
			if err != nil {
				b.Fatal(err)
			}
			if ok {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		wall = append(wall, time.Since(start))
		ms, err := chromedp.Run(nctx, chromedp.Evaluate[float64](`new Promise(r => { const f = () => { const e = performance.getEntriesByName("vms-interactive")[0]; e ? r(e.startTime) : setTimeout(f, 5) }; f() })`, chromedp.EvalAwaitPromise))
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		page = append(page, time.Duration(ms*float64(time.Millisecond)))
	}
	b.StopTimer()
	testutil.ReportLatency(b, "page", page)
	testutil.ReportLatency(b, "wall", wall)
	br.noErrors()
}
