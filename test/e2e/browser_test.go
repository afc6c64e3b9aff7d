package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nexus-microvm/nexus/internal/netnsutil"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// artifactsDir holds what browser tests leave for a person to look at
// (screenshots); it is gitignored.
const artifactsDir = "artifacts"

// browser is a headless Debian Chromium driven over the DevTools protocol
// (chromedp, over pipes), with a fresh profile, in a network namespace of
// its own (browserNet). It records uncaught exceptions and console errors
// (a CSP violation is one) so tests can fail on them.
type browser struct {
	t      testing.TB
	ctx    context.Context
	mu     sync.Mutex
	errors []string
}

// newBrowser starts a browser that can reach the base URLs in reach (a
// cluster's url()) and nothing else.
func newBrowser(t testing.TB, width, height int, reach ...string) *browser {
	t.Helper()
	bin := testutil.RequireTool(t, "chromium", "scripts/setup.sh --test installs Debian's chromium")
	bn := newBrowserNet(t, reach)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.ModifyCmdFunc(bn.launch),
		// No UserDataDir: a profile chromedp makes itself is one it
		// removes at the end, after killing any child of the browser still
		// running (its zombies are then init's to reap).
		chromedp.WindowSize(width, height),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox, // root in a container: the setuid sandbox cannot start
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		// Nothing but this machine is reachable: no background traffic.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	b := &browser{t: t, ctx: ctx}
	// The first Run starts the browser; Console then sees every message of
	// the tab from its first page on.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[int]("1")); err != nil {
		cancel()
		cancelAlloc()
		t.Fatalf("start chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				b.record(fmt.Sprintf("%s (%s:%d)", m.String(), m.URL, m.Line))
			}
		}
	}()
	t.Cleanup(func() {
		cancel() // closes the browser and waits for it
		cancelAlloc()
		<-done
	})
	return b
}

// browserNet is the browser's own network namespace: a loopback and
// nothing else. Chromium fails every request it has in flight when a link
// or address of its namespace comes or goes (net::ERR_NETWORK_CHANGED),
// and the test's namespace sees many: each cluster adds veths for its
// hosts, whose IPv6 addresses settle a second or two later, and removes
// them at its end. (Before, a console module failed so left a page stuck
// at "Loading…" in CI.) Each address the browser must reach is listened on
// at the same host:port inside the namespace and relayed to the test's, so
// pages keep their origin.
type browserNet struct {
	t  testing.TB
	ns netns.NsHandle

	mu    sync.Mutex
	lns   []net.Listener
	conns map[net.Conn]bool
	wg    sync.WaitGroup
	files []*os.File // the namespace fds handed to launches
}

func newBrowserNet(t testing.TB, reach []string) *browserNet {
	t.Helper()
	ns, nl, err := newNetNS()
	if err != nil {
		t.Fatal(err)
	}
	nl.Close()
	bn := &browserNet{t: t, ns: ns, conns: map[net.Conn]bool{}}
	t.Cleanup(bn.close)
	for _, base := range reach {
		u, err := url.Parse(base)
		if err != nil || u.Host == "" {
			t.Fatalf("browser: cannot reach %q: %v", base, err)
		}
		var ln net.Listener
		err = netnsutil.Do(ns, func() (err error) {
			ln, err = net.Listen("tcp", u.Host)
			return err
		})
		if err != nil {
			t.Fatalf("browser: listen for %s in its namespace: %v", u.Host, err)
		}
		bn.lns = append(bn.lns, ln)
		bn.wg.Go(func() { bn.relay(ln, u.Host) })
	}
	return bn
}

// relay hands each connection the browser makes to ln on to addr in the
// test's namespace.
func (bn *browserNet) relay(ln net.Listener, addr string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return // closed
		}
		bn.wg.Go(func() {
			defer c.Close()
			up, err := net.Dial("tcp", addr)
			if err != nil {
				bn.t.Logf("browser: relay to %s: %v", addr, err)
				return
			}
			defer up.Close()
			if !bn.track(c, up) {
				return
			}
			defer bn.untrack(c, up)
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(up, c)
				_ = up.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			_, _ = io.Copy(c, up)
			_ = c.(*net.TCPConn).CloseWrite()
			<-done
		})
	}
}

func (bn *browserNet) track(cs ...net.Conn) bool {
	bn.mu.Lock()
	defer bn.mu.Unlock()
	if bn.conns == nil {
		return false // closing
	}
	for _, c := range cs {
		bn.conns[c] = true
	}
	return true
}

func (bn *browserNet) untrack(cs ...net.Conn) {
	bn.mu.Lock()
	defer bn.mu.Unlock()
	for _, c := range cs {
		delete(bn.conns, c)
	}
}

// launch makes chromedp start the browser through this test binary as a
// launcher (runLauncher), which enters the namespace and execs it. The
// namespace fd follows the DevTools pipes (fds 3 and 4).
func (bn *browserNet) launch(cmd *exec.Cmd) {
	f, err := nsFile(bn.ns)
	if err != nil {
		cmd.Err = fmt.Errorf("browser namespace: %w", err)
		return
	}
	bn.mu.Lock()
	bn.files = append(bn.files, f)
	bn.mu.Unlock()
	cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	cmd.Env = append(cmd.Env, execEnv+"="+cmd.Path, fmt.Sprintf("%s=%d", netnsFDEnv, 2+len(cmd.ExtraFiles)))
	cmd.Path = "/proc/self/exe"
	// What chromedp's own setup does: the browser dies with the test.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// close stops relaying (the browser has gone by now: its cleanup ran
// first) and drops the namespace.
func (bn *browserNet) close() {
	for _, ln := range bn.lns {
		ln.Close()
	}
	bn.mu.Lock()
	for c := range bn.conns {
		c.Close()
	}
	bn.conns = nil
	bn.mu.Unlock()
	bn.wg.Wait()
	for _, f := range bn.files {
		f.Close()
	}
	bn.ns.Close()
}

func (b *browser) record(s string) {
	b.mu.Lock()
	b.errors = append(b.errors, s)
	b.mu.Unlock()
}

// noErrors fails the test if the page threw or logged an error since the
// last call (expected ones, such as a refused call the test made on
// purpose, are allowed).
func (b *browser) noErrors(allowed ...string) {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	defer func() { b.errors = nil }() // each error is judged once
next:
	for _, e := range b.errors {
		for _, a := range allowed {
			if strings.Contains(e, a) {
				continue next
			}
		}
		b.t.Errorf("browser: %s", e)
	}
}

// run runs actions with a deadline.
func (b *browser) run(d time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.failure()
		b.t.Fatalf("browser: %v", err)
	}
}

// eval evaluates a JavaScript expression.
func eval[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		b.failure()
		b.t.Fatalf("browser: %s: %v", js, err)
	}
	return v
}

// evalAsync evaluates a JavaScript expression whose value is a promise.
func evalAsync[T any](b *browser, js string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		b.t.Fatalf("browser: %s: %v", js, err)
	}
	return v
}

// waitJS waits until a JavaScript expression is true.
func (b *browser) waitJS(what, js string, d time.Duration) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 15*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+js+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.failure()
			b.t.Fatalf("browser: %s: not within %s (%s; last error %v)", what, d, js, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failure records what the page looked like and what it had loaded when
// a step failed: a screenshot, and each resource's path and time (a
// module still loading is absent: it is what the page waits for).
func (b *browser) failure() {
	b.shot("failure")
	b.t.Logf("%s", b.loaded())
}

// loaded says the page's state and each resource it loaded, with its time.
func (b *browser) loaded() string {
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	loaded, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.readyState + "; " + performance.getEntriesByType("resource").
		map(e => e.name.replace(location.origin, "") + " " + Math.round(e.responseEnd - e.startTime) + "ms").join(", ")`))
	if err != nil {
		return fmt.Sprintf("page resources: %v", err)
	}
	return "page resources: " + loaded
}

// shot saves a full-page screenshot under artifacts/ and returns its path.
func (b *browser) shot(name string) string {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	if err := os.MkdirAll(artifactsDir, 0o755); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	p := filepath.Join(artifactsDir, fmt.Sprintf("%s-%s.png", strings.ReplaceAll(b.t.Name(), "/", "-"), name))
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		b.t.Logf("screenshot %s: %v", name, err)
		return ""
	}
	abs, _ := filepath.Abs(p)
	b.t.Logf("screenshot: %s", abs)
	return abs
}

// signIn opens the console and signs in with token, as a person would:
// typing it and pressing Enter.
//
// A page whose sign-in form has not shown after 20 s is loaded once more,
// as a person would: twice in CI runs of a loaded 2-core host, headless
// Chromium waited without end for one of the console's modules (the page
// stuck at "Loading…", its other modules loaded in milliseconds, the
// manager answering everything else). The reload is logged, with what the
// page had loaded, so that it stays visible.
func (b *browser) signIn(base, token string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	err := chromedp.Do(ctx, chromedp.Navigate(base+"/ui/#/signin"), chromedp.WaitVisible(chromedp.CSS("#token")))
	cancel()
	if err != nil {
		b.t.Logf("sign-in form not shown after 20 s (%v); %s; loading the page again", err, b.loaded())
		b.run(40*time.Second, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#token")))
	}
	b.run(10*time.Second, chromedp.SendKeys(chromedp.CSS("#token"), token+"\r"))
	b.waitJS("signed in", `document.querySelector("#who-role") !== null`, 30*time.Second)
}

// typeInto replaces what a text field holds with text, typed key by key.
func (b *browser) typeInto(sel, text string) {
	b.t.Helper()
	eval[bool](b, fmt.Sprintf(`(() => { const el = document.querySelector(%q); el.value = ""; return true })()`, sel))
	b.run(10*time.Second, chromedp.SendKeys(chromedp.CSS(sel), text))
}

// confirm clicks a button and then Confirm in the dialog it opens.
func (b *browser) confirm(button string) {
	b.t.Helper()
	b.run(10*time.Second,
		chromedp.Click(chromedp.CSS(button)),
		chromedp.WaitVisible(chromedp.CSS("#confirm-ok")),
		chromedp.Click(chromedp.CSS("#confirm-ok")),
	)
}

// TestBrowserWhileLinksChange loads the console again and again while
// veths come and go in the test's namespace, as test clusters make them
// (a host's veth gets its IPv6 address a second or two after it comes up,
// about when a console test first loads the page): no page may fail.
// Chromium in the test's own namespace failed this within a few loads
// (net::ERR_NETWORK_CHANGED on the console's modules, the page stuck at
// "Loading…"), which is how TestConsole failed in CI.
func TestBrowserWhileLinksChange(t *testing.T) {
	c := newCluster(t, "sqlite", 0)
	b := newBrowser(t, 1024, 768, c.url())
	b.signIn(c.url(), c.admin)
	stop := make(chan struct{})
	var churn sync.WaitGroup
	churn.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := fmt.Sprintf("nxchurn%d", i%2)
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
				t.Errorf("add veth: %v", err)
				return
			}
			if l, err := netlink.LinkByName(name); err == nil {
				_ = netlink.AddrAdd(l, mustAddr(fmt.Sprintf("10.222.%d.1/24", i%2)))
				_ = netlink.LinkSetUp(l)
				time.Sleep(100 * time.Millisecond)
				_ = netlink.LinkDel(l) // its peer goes with it
			}
		}
	})
	defer churn.Wait()
	defer close(stop)
	for i := range 15 {
		b.run(30*time.Second, chromedp.Navigate(fmt.Sprintf("%s/ui/?load=%d#/vms", c.url(), i)))
		b.waitJS("console loaded", `document.querySelector("#who-role") !== null`, 30*time.Second)
		b.noErrors()
	}
}
