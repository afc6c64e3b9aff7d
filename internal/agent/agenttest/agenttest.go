// Package agenttest runs a hollow agent (package hollow) inside a test:
// the real agent API and handlers over in-process firecracker-sim VMMs and
// an in-memory network, on a loopback port, without root. Manager tests
// use it to drive whole lifecycles in milliseconds on any machine.
package agenttest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/agent/hollow"
	"github.com/nexus-microvm/nexus/internal/pki"
)

// Agent is a running hollow agent.
type Agent struct {
	URL    string
	Addr   string // host:port it listens on
	Token  string
	RunDir string
	VMMs   *hollow.VMMs // to kill a VMM behind the agent's back
	run    *agent.Running
}

// Options tune Start; the zero value is fine.
type Options struct {
	Token   string // default "agenttest-token"
	Manager string // register and heartbeat there when set
	Name    string
	Env     []string // firecracker-sim tuning (FC_SIM_…)
	// TLS serves the agent API over TLS and, with a CA, requires the
	// manager's certificate (and checks the manager's when registering).
	TLS pki.Files
	// Mode is dev (default) or prod.
	Mode string
}

// Start runs a hollow agent until the test ends; its run dir is removed
// then, after the agent has stopped.
func Start(t testing.TB, o Options) *Agent {
	t.Helper()
	if o.Token == "" {
		o.Token = "agenttest-token"
	}
	if o.Name == "" {
		o.Name = "hollow-test"
	}
	// A short run dir: unix socket paths under it must fit 107 bytes.
	dir, err := os.MkdirTemp("", "nxh")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r, err := agent.Start(ctx, agent.Options{
		Name: o.Name, Bind: "127.0.0.1:0", Manager: o.Manager, Token: o.Token, RunDir: filepath.Join(dir, "run"),
		Hollow: true, StopGrace: 100 * time.Millisecond, Heartbeat: 100 * time.Millisecond, VMMEnv: o.Env,
		TLS: o.TLS, Mode: o.Mode,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		os.RemoveAll(dir)
		t.Fatalf("start hollow agent: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		r.Wait()
		os.RemoveAll(dir)
	})
	vmms, _ := r.VMMs().(*hollow.VMMs)
	return &Agent{URL: r.URL, Addr: r.Addr, Token: o.Token, RunDir: filepath.Join(dir, "run"), VMMs: vmms, run: r}
}
