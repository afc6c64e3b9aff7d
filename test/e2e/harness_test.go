// Package e2e holds black-box tests that start real processes: `nexus
// manager`, `nexus agent` and firecracker-sim, talking real HTTP over real
// sockets, with real TAP devices, against real SQLite and Postgres.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/api"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/jsonhttp"
	"github.com/nexus-microvm/nexus/internal/pki"
	"github.com/nexus-microvm/nexus/internal/testutil"
	"github.com/nexus-microvm/nexus/internal/testutil/apicontract"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

var bins struct {
	dir, nexus, sim, jail string
}

// binSet is the nexus and firecracker-sim binaries a process runs: this
// tree's (bins) unless a test starts an older build (TestRollingUpgrade).
type binSet struct{ nexus, sim string }

func currentBins() binSet { return binSet{nexus: bins.nexus, sim: bins.sim} }

func TestMain(m *testing.M) {
	runLauncher()
	testutil.IsolateNetwork()
	dir, err := os.MkdirTemp("", "nexus-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins.dir = dir
	bins.nexus = filepath.Join(dir, "nexus")
	bins.sim = filepath.Join(dir, "firecracker-sim")
	bins.jail = filepath.Join(dir, "nexus-jail") // next to nexus: the agent's jail helper
	for _, b := range [][2]string{{bins.nexus, "./cmd/nexus"}, {bins.sim, "./cmd/firecracker-sim"}, {bins.jail, "./cmd/nexus-jail"}} {
		cmd := exec.Command("go", "build", "-o", b[0], "github.com/nexus-microvm/nexus/"+strings.TrimPrefix(b[1], "./"))
		// Static, as `make build` makes them: a jailed VMM has no libc.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", b[1], err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	http.DefaultTransport = &apicontract.Recorder{Base: http.DefaultTransport}
	contract.Base = jsonhttp.NewTransport()
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		code = checkContract()
	}
	os.Exit(code)
}

// contract records the error answers the SDK's clients get (newClient);
// http.DefaultTransport records those of plain requests.
var contract = &apicontract.Recorder{}

// newClient is nexus.New with the error answers it gets recorded.
func newClient(addr, token string, opts ...nexus.Option) *nexus.Client {
	return nexus.New(addr, token, append([]nexus.Option{nexus.WithHTTPClient(&http.Client{Transport: contract})}, opts...)...)
}

// checkContract holds every error answer the suite saw to the OpenAPI
// document: a status its operation declares, a body of its schema.
func checkContract() int {
	doc, err := api.Document("e2e").Downgrade()
	if err != nil {
		fmt.Fprintln(os.Stderr, "contract: the document:", err)
		return 1
	}
	c, err := apicontract.Load(doc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "contract:", err)
		return 1
	}
	var problems []string
	checked := 0
	for _, r := range []*apicontract.Recorder{contract, http.DefaultTransport.(*apicontract.Recorder)} {
		p, n := r.Check(c)
		problems, checked = append(problems, p...), checked+n
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "contract: %d of the %d error answers the suite saw do not match the OpenAPI document:\n", len(problems), checked)
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, " -", p)
		}
		return 1
	}
	fmt.Fprintf(os.Stderr, "contract: the %d error answers the suite saw match the OpenAPI document\n", checked)
	return 0
}

// proc is one started nexus process.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // stderr+stdout file
}

func (p *proc) kill() {
	if p.cmd.Process != nil && p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
	}
}

// waitLog waits for a JSON log line whose msg is msg and returns it.
func (p *proc) waitLog(t testing.TB, msg string, d time.Duration) map[string]any {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		f, err := os.Open(p.log)
		if err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var m map[string]any
				if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
					f.Close()
					return m
				}
			}
			f.Close()
		}
		if p.cmd.ProcessState != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(p.log)
	t.Fatalf("%s: no %q log line within %s; log:\n%s", p.name, msg, d, b)
	return nil
}

// cluster is a manager and its agents on this machine. Each agent has its
// own bridge and run dir and no NAT, so the host's firewall is untouched.
type cluster struct {
	t       testing.TB
	mgrArgs []string
	dir     string
	dsn     string
	join    string
	admin   string
	port    int
	ports2  []int // further managers the agents may fail over to
	mgr     *proc
	agents  []*agentProc
	client  *nexus.Client
	restore func()
	// tls, when set, runs the fleet with mutual TLS: certificates of a CA
	// made with `nexus manager bootstrap --ca-dir` and `nexus cert issue`.
	tls *fleetTLS
	// bin runs the manager and the agents started from now on.
	bin binSet
}

// fleetTLS is the cluster's CA directory and the manager's certificate.
type fleetTLS struct {
	caDir string
	mgr   pki.Files
}

// clusterOpts configure newClusterWith.
type clusterOpts struct {
	engine  string
	agents  int
	mgrArgs []string
	tls     bool     // mutual TLS between manager and agents
	env     []string // added to every agent's environment (FC_JAIL=on …)
	bin     binSet   // default: this tree's binaries
	ports2  []int    // further managers the agents may fail over to
}

type agentProc struct {
	*proc
	name   string
	runDir string
	net    *hostNet
	url    string
	env    []string // extra environment (firecracker-sim knobs)
	bin    binSet   // what it runs (launchAgent)
}

func (a *agentProc) layout() hostlayout.Layout { return hostlayout.Layout{RunDir: a.runDir} }

// client returns an agent API client (what the manager uses).
func (c *cluster) agentClient(a *agentProc) *agentapi.Client {
	if c.tls != nil {
		return agentapi.NewClient(a.url, c.join, &http.Client{Transport: c.transport(c.tls.mgr)})
	}
	return agentapi.NewClient(a.url, c.join, nil)
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// engineDSN returns a fresh database of the named engine.
func engineDSN(t testing.TB, engine, dir string) string {
	if engine == "postgres" {
		return testutil.FreshPostgres(t)
	}
	return "sqlite://" + filepath.Join(dir, "nexus.db")
}

// newCluster starts a manager (with extra flags mgrArgs) on a fresh
// database of engine, and n agents.
func newCluster(t testing.TB, engine string, n int, mgrArgs ...string) *cluster {
	return newClusterWith(t, clusterOpts{engine: engine, agents: n, mgrArgs: mgrArgs})
}

// newClusterWith starts a manager and o.agents agents as o says.
func newClusterWith(t testing.TB, o clusterOpts) *cluster {
	t.Helper()
	testutil.RequireRoot(t)
	dir := shortTempDir(t)
	// 37 bytes: long enough for prod mode.
	c := &cluster{t: t, dir: dir, join: fmt.Sprintf("join-%016x%016x", rand.Uint64(), rand.Uint64()), port: freePort(t), mgrArgs: o.mgrArgs,
		bin: o.bin, ports2: o.ports2}
	if c.bin == (binSet{}) {
		c.bin = currentBins()
	}
	c.dsn = engineDSN(t, o.engine, dir)

	args := []string{"manager", "bootstrap", "--database-url", c.dsn, "--owner", "e2e"}
	if o.tls {
		// The manager is reached at 127.0.0.1 from here and at each test
		// host's side of its veth (10.201.N.1) from the agents.
		hosts := []string{"127.0.0.1"}
		for i := 1; i <= 250; i++ {
			hosts = append(hosts, fmt.Sprintf("10.201.%d.1", i))
		}
		c.tls = &fleetTLS{caDir: filepath.Join(dir, "pki")}
		args = append(args, "--ca-dir", c.tls.caDir, "--tls-host", strings.Join(hosts, ","))
		c.tls.mgr = pki.Files{Cert: filepath.Join(c.tls.caDir, "manager.crt"), Key: filepath.Join(c.tls.caDir, "manager.key"),
			CA: filepath.Join(c.tls.caDir, pki.CACertFile)}
		c.mgrArgs = append(c.mgrArgs, "--tls-cert", c.tls.mgr.Cert, "--tls-key", c.tls.mgr.Key, "--tls-ca", c.tls.mgr.CA)
	}
	out, err := exec.Command(c.bin.nexus, args...).Output()
	if err != nil {
		t.Fatalf("bootstrap: %v", err)
	}
	c.admin = strings.TrimSpace(string(out))
	c.startManager()
	c.client = c.newClient(c.admin)
	for i := range o.agents {
		c.startAgent(fmt.Sprintf("host-%d", i), o.env...)
	}
	c.waitHosts(o.agents)
	t.Cleanup(c.cleanup)
	return c
}

// newClient is an API client of the manager with token (checking the
// manager's certificate against the fleet's CA under TLS).
func (c *cluster) newClient(token string) *nexus.Client {
	if c.tls == nil {
		return newClient(c.url(), token)
	}
	return nexus.New(c.url(), token, nexus.WithHTTPClient(&http.Client{Transport: c.transport(pki.Files{CA: c.tls.mgr.CA})}))
}

// transport is an HTTP transport presenting f's certificate and checking
// servers against its CA.
func (c *cluster) transport(f pki.Files) *http.Transport {
	r, err := pki.NewReloader(f, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	tr := jsonhttp.NewTransport()
	r.ConfigureTransport(tr)
	return tr
}

func (c *cluster) scheme() string {
	if c.tls != nil {
		return "https"
	}
	return "http"
}

// managerURLs is the AGENT_MANAGER list for agent a: every manager, as
// reached from a's host.
func (c *cluster) managerURLs(a *agentProc) string {
	urls := []string{fmt.Sprintf("%s://%s:%d", c.scheme(), a.net.hostIP, c.port)}
	for _, p := range c.ports2 {
		urls = append(urls, fmt.Sprintf("%s://%s:%d", c.scheme(), a.net.hostIP, p))
	}
	return strings.Join(urls, ",")
}

func (c *cluster) url() string { return fmt.Sprintf("%s://127.0.0.1:%d", c.scheme(), c.port) }

func (c *cluster) start(name string, env []string, args ...string) *proc {
	c.t.Helper()
	return c.startBin(c.bin.nexus, name, env, args...)
}

// startBin starts the nexus binary bin.
func (c *cluster) startBin(bin, name string, env []string, args ...string) *proc {
	c.t.Helper()
	logPath := filepath.Join(c.dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	return &proc{name: name, cmd: cmd, log: logPath}
}

func (c *cluster) startManager() {
	c.t.Helper()
	// All addresses: agents reach the manager over their veth.
	args := append([]string{"manager", "--listen", fmt.Sprintf("0.0.0.0:%d", c.port), "--database-url", c.dsn, "--join-token", c.join}, c.mgrArgs...)
	c.mgr = c.start("manager", []string{"NEXUS_MODE=dev"}, args...)
	c.mgr.waitLog(c.t, "manager listening", 20*time.Second)
}

// startAgent starts an agent in a network namespace of its own (a host),
// with env added to its environment.
func (c *cluster) startAgent(name string, env ...string) *agentProc {
	c.t.Helper()
	a := &agentProc{name: name, runDir: filepath.Join(c.dir, name, "run"), net: newHostNet(c.t), env: env, bin: c.bin}
	c.launchAgent(a)
	c.agents = append(c.agents, a)
	return a
}

func (c *cluster) launchAgent(a *agentProc) {
	c.t.Helper()
	f, err := a.net.file()
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	logPath := filepath.Join(c.dir, "agent-"+a.name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer lf.Close()
	// The test binary re-executes itself as a launcher that enters the
	// host's namespace and execs nexus there.
	args := []string{"agent",
		"--bind", a.net.agentIP + ":9090", "--manager", c.managerURLs(a),
		"--token", c.join, "--name", a.name, "--run-dir", a.runDir, "--fc-bin", a.bin.sim,
		"--stop-grace", "200ms"}
	if c.tls != nil {
		f := a.tlsFiles(c)
		args = append(args, "--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA)
	}
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(append(os.Environ(), execEnv+"="+a.bin.nexus), a.env...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	a.proc = &proc{name: "agent-" + a.name, cmd: cmd, log: logPath}
	m := a.waitLog(c.t, "agent listening", 20*time.Second)
	a.url = m["url"].(string)
}

// tlsFiles issues the agent's certificate (once) with `nexus cert issue`,
// for its name and its address.
func (a *agentProc) tlsFiles(c *cluster) pki.Files {
	c.t.Helper()
	f := pki.Files{Cert: filepath.Join(c.tls.caDir, a.name+".crt"), Key: filepath.Join(c.tls.caDir, a.name+".key"), CA: c.tls.mgr.CA}
	if _, err := os.Stat(f.Cert); err == nil {
		return f
	}
	out, err := exec.Command(bins.nexus, "cert", "issue", "--ca-dir", c.tls.caDir, "--host", a.name, "--san", a.net.agentIP).CombinedOutput()
	if err != nil {
		c.t.Fatalf("nexus cert issue: %v\n%s", err, out)
	}
	return f
}

// restartAgent SIGKILLs an agent and starts it again on the same run dir.
func (c *cluster) restartAgent(a *agentProc) {
	c.t.Helper()
	a.kill()
	_ = os.Remove(a.log)
	c.launchAgent(a)
}

// restartManager SIGKILLs the manager and starts it again.
func (c *cluster) restartManager() {
	c.t.Helper()
	c.mgr.kill()
	_ = os.Remove(c.mgr.log)
	c.startManager()
}

func (c *cluster) waitHosts(n int) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		l, err := c.client.Hosts(context.Background())
		ready := 0
		if err == nil {
			for _, h := range l.Items {
				if h.State == "ready" {
					ready++
				}
			}
		}
		if ready >= n {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("%d hosts did not become ready", n)
}

// cleanup kills everything the cluster started and removes its devices,
// whatever a failed test left.
func (c *cluster) cleanup() {
	if c.mgr != nil {
		c.mgr.kill()
	}
	for _, a := range c.agents {
		a.kill()
		ids := vmIDsOf(a.runDir)
		killVMMs(a.runDir)
		removeCgroups(a.runDir, ids)
		// Isolated VMs' namespaces are bind-mounted in their run dirs: a
		// failed test may leave them mounted.
		for _, id := range ids {
			_ = unix.Unmount(a.layout().NetNSPath(id), unix.MNT_DETACH)
		}
		// Its namespace (bridge, TAPs, NAT) goes with a.net's cleanup; its
		// chroots (in the run dir) with the test's temp dir.
	}
	if c.t.Failed() {
		for _, p := range append([]string{filepath.Join(c.dir, "manager.log")}, agentLogs(c)...) {
			if b, err := os.ReadFile(p); err == nil {
				c.t.Logf("--- %s ---\n%s", filepath.Base(p), tail(string(b), 40))
			}
		}
	}
}

func agentLogs(c *cluster) []string {
	var out []string
	for _, a := range c.agents {
		out = append(out, a.log)
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// vmmPIDs returns the pids of firecracker-sim processes serving runDir.
func vmmPIDs(runDir string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !strings.Contains(string(cmd), "firecracker-sim") || !strings.Contains(string(cmd), runDir+"/") {
			continue
		}
		if stat, err := os.ReadFile("/proc/" + e.Name() + "/stat"); err == nil {
			if i := strings.LastIndexByte(string(stat), ')'); i > 0 && i+2 < len(stat) && (stat[i+2] == 'Z' || stat[i+2] == 'X') {
				continue
			}
		}
		out = append(out, pid)
	}
	return out
}

// vmIDsOf lists the VM ids a run dir knows: its VM dirs and its VMMs.
func vmIDsOf(runDir string) []string {
	var ids []string
	if entries, err := os.ReadDir(filepath.Join(runDir, "vms")); err == nil {
		for _, e := range entries {
			ids = append(ids, e.Name())
		}
	}
	for _, pid := range vmmPIDs(runDir) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmd), "\x00")
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "--id" {
				ids = append(ids, args[i+1])
			}
		}
	}
	return ids
}

// removeCgroups removes the cgroups of VMMs the test killed behind the
// back of runDir's agent (an agent removes those of the VMMs it stops), and
// the agent's own cgroup dir.
func removeCgroups(runDir string, ids []string) {
	owner, err := agent.ReadInstanceID(runDir)
	if err != nil {
		return
	}
	for _, id := range ids {
		for _, dir := range vmm.CgroupDirs(owner, id) {
			for range 50 { // the killed process leaves its group as it exits
				if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}
	_ = vmm.RemoveCgroupRoot(owner)
}

func killVMMs(runDir string) {
	for _, pid := range vmmPIDs(runDir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// assertHostsEmpty checks that no host holds anything of any VM: no VMM
// process, VM run dir, TAP or VMM cgroup.
func (c *cluster) assertHostsEmpty() {
	c.t.Helper()
	for _, a := range c.agents {
		if pids := vmmPIDs(a.runDir); len(pids) != 0 {
			c.t.Errorf("host %s: vmm processes left: %v", a.name, pids)
		}
		if entries, _ := os.ReadDir(a.layout().VMsDir()); len(entries) != 0 {
			c.t.Errorf("host %s: run dirs left: %v", a.name, entries)
		}
		if links, _ := a.net.nl.LinkList(); len(links) > 0 {
			for _, l := range links {
				if strings.HasPrefix(l.Attrs().Name, hostlayout.TapPrefix) {
					c.t.Errorf("host %s: tap %s left", a.name, l.Attrs().Name)
				}
			}
		}
		if owner, err := agent.ReadInstanceID(a.runDir); err == nil {
			for _, root := range vmm.CgroupRoots(owner) {
				entries, _ := os.ReadDir(root)
				for _, e := range entries {
					if e.IsDir() {
						c.t.Errorf("host %s: cgroup %s left", a.name, filepath.Join(root, e.Name()))
					}
				}
			}
		}
		c.assertNoJailLeft(a)
	}
}

// assertNoJailLeft checks that an agent left no chroot in its run dir and
// no mount under it in the host's mount table (a jail's mounts live in its
// VMM's own namespace and must go with it).
func (c *cluster) assertNoJailLeft(a *agentProc) {
	c.t.Helper()
	execs, _ := os.ReadDir(filepath.Join(a.runDir, "jail"))
	for _, e := range execs {
		if vms, _ := os.ReadDir(filepath.Join(a.runDir, "jail", e.Name())); len(vms) != 0 {
			c.t.Errorf("host %s: chroots left in %s: %v", a.name, filepath.Join(a.runDir, "jail", e.Name()), vms)
		}
	}
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), a.runDir) {
		c.t.Errorf("host %s: mounts under its run dir in the host's mount table:\n%s", a.name, b)
	}
}

// assertNoLeaks checks that nothing of the given VMs is left on any host:
// no process, TAP, socket or run dir.
func (c *cluster) assertNoLeaks(ids ...string) {
	c.t.Helper()
	for _, a := range c.agents {
		if pids := vmmPIDs(a.runDir); len(pids) != 0 {
			c.t.Errorf("host %s: vmm processes left: %v", a.name, pids)
		}
		l := a.layout()
		for _, id := range ids {
			if _, err := os.Stat(l.VMDir(id)); err == nil {
				c.t.Errorf("host %s: run dir of vm %s left", a.name, id)
			}
		}
	}
	for _, a := range c.agents {
		owner, err := agent.ReadInstanceID(a.runDir)
		if err != nil {
			c.t.Errorf("host %s: instance id: %v", a.name, err)
			continue
		}
		for _, id := range ids {
			for _, dir := range vmm.CgroupDirs(owner, id) {
				if _, err := os.Stat(dir); err == nil {
					c.t.Errorf("cgroup %s of vm %s left", dir, id)
				}
			}
		}
		c.assertNoJailLeft(a)
	}
	for _, a := range c.agents {
		for _, id := range ids {
			if a.net.hasLink(hostlayout.TapName(id)) {
				c.t.Errorf("host %s: tap %s of vm %s left", a.name, hostlayout.TapName(id), id)
			}
		}
	}
}

// eventually retries f until it returns nil or d passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %v", what, d, err)
}

// waitPasses waits until the leading reconciler of the manager cl talks
// to has finished n passes that started after this call: an event to wait
// for, not a time to sleep.
func waitPasses(t testing.TB, cl *nexus.Client, n int) {
	t.Helper()
	since := time.Now()
	seen := 0
	var last time.Time
	eventually(t, 30*time.Second, fmt.Sprintf("%d reconcile passes", n), func() error {
		var st apitypes.ReconcilerStatus
		if err := cl.Do(context.Background(), "GET", "/v1/reconciler", nil, nil, &st); err != nil {
			return err
		}
		if st.LastPassAt.After(since) && !st.LastPassAt.Equal(last) {
			last = st.LastPassAt
			seen++
		}
		if seen < n {
			return fmt.Errorf("%d of %d passes", seen, n)
		}
		return nil
	})
}

// shortTempDir is a temp dir with a short path: VM sockets live several
// levels below it and unix socket paths are limited to 107 bytes.
func shortTempDir(t testing.TB) string {
	dir, err := os.MkdirTemp("", "nx")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
