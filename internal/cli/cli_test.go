package cli

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"
)

// run executes the command line in-process with env and returns the exit
// code, stdout and stderr.
func run(env map[string]string, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, func(k string) string { return env[k] }, &out, &errb)
	return code, out.String(), errb.String()
}

// walk calls f for every command of the tree.
func walk(c *cobra.Command, f func(*cobra.Command)) {
	f(c)
	for _, s := range c.Commands() {
		walk(s, f)
	}
}

func commandPaths(t *testing.T) [][]string {
	t.Helper()
	var paths [][]string
	walk(newRoot(env(func(string) string { return "" }), &bytes.Buffer{}, &bytes.Buffer{}), func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		paths = append(paths, strings.Fields(c.CommandPath())[1:])
	})
	if len(paths) < 40 {
		t.Fatalf("only %d commands found: the walk is broken", len(paths))
	}
	return paths
}

// TestHelpNeverShowsSecrets runs --help of every command with secrets in
// every variable a flag reads: none may appear (a flag default from the
// environment would print it).
func TestHelpNeverShowsSecrets(t *testing.T) {
	secrets := map[string]string{
		"NEXUS_TOKEN": "nxs_secret-api-token", "AGENT_TOKEN": "secret-join-token-a", "NEXUS_JOIN_TOKEN": "secret-join-token-m",
		"AGENT_METRICS_TOKEN": "secret-metrics-token", "DATABASE_URL": "postgres://u:secret-password@db/nexus",
	}
	for _, p := range commandPaths(t) {
		code, out, errOut := run(secrets, append(p, "--help")...)
		if code != 0 {
			t.Errorf("nexus %s --help: exit %d: %s", strings.Join(p, " "), code, errOut)
		}
		for k, v := range secrets {
			if strings.Contains(out+errOut, strings.TrimPrefix(v, "postgres://u:")) {
				t.Errorf("nexus %s --help shows %s", strings.Join(p, " "), k)
			}
		}
	}
}

// TestUnknownSubcommandsAreUsageErrors: on every level an unknown
// subcommand exits 2 with nothing on stdout, and so does an unknown flag.
func TestUnknownSubcommandsAreUsageErrors(t *testing.T) {
	groups := 0
	for _, p := range commandPaths(t) {
		var c *cobra.Command
		walk(newRoot(env(func(string) string { return "" }), &bytes.Buffer{}, &bytes.Buffer{}), func(x *cobra.Command) {
			if strings.Join(strings.Fields(x.CommandPath())[1:], " ") == strings.Join(p, " ") {
				c = x
			}
		})
		if c == nil || !c.HasSubCommands() {
			continue
		}
		groups++
		code, out, errOut := run(nil, append(p, "frobnicate")...)
		if code != exitUsage || out != "" || !strings.Contains(errOut, `unknown command "frobnicate"`) {
			t.Errorf("nexus %s frobnicate: exit %d, stdout %q, stderr %q; want 2 and the error on stderr", strings.Join(p, " "), code, out, errOut)
		}
		code, _, errOut = run(nil, append(p, "--frobnicate")...)
		if code != exitUsage || !strings.Contains(errOut, "unknown flag") {
			t.Errorf("nexus %s --frobnicate: exit %d %q; want 2", strings.Join(p, " "), code, errOut)
		}
	}
	if groups < 8 {
		t.Fatalf("only %d command groups", groups)
	}
}

// manager is a stand-in manager that records who called it.
type manager struct {
	*httptest.Server
	mu   sync.Mutex
	auth []string
}

func newManager(t *testing.T) *manager {
	m := &manager{}
	m.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m.mu.Lock()
		m.auth = append(m.auth, r.Header.Get("Authorization")+" project="+r.URL.Query().Get("project"))
		m.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"items":[]}`))
	}))
	t.Cleanup(m.Close)
	return m
}

func (m *manager) last() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.auth) == 0 {
		return ""
	}
	return m.auth[len(m.auth)-1]
}

// TestContexts: contexts are saved 0600, switched, listed without their
// tokens, and flags then environment override the context's fields.
func TestContexts(t *testing.T) {
	a, b := newManager(t), newManager(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "nexus", "config.yaml")
	tokFile := filepath.Join(dir, "b.token")
	if err := os.WriteFile(tokFile, []byte("nxs_b-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := map[string]string{"NEXUS_CONFIG": cfg}
	mustRun := func(env map[string]string, args ...string) string {
		t.Helper()
		code, out, errOut := run(env, args...)
		if code != 0 {
			t.Fatalf("nexus %s: exit %d: %s", strings.Join(args, " "), code, errOut)
		}
		return out
	}
	mustRun(e, "context", "add", "a", "--addr", a.URL, "--token", "nxs_a-token", "--project", "team-a")
	mustRun(e, "context", "add", "b", "--addr", b.URL, "--token-file", tokFile)
	if st, err := os.Stat(cfg); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("config file: %v, mode %v; want 0600", err, st.Mode())
	}
	// The first context added is the current one.
	mustRun(e, "vm", "ls")
	if got := a.last(); got != "Bearer nxs_a-token project=team-a" {
		t.Fatalf("context a: the manager saw %q", got)
	}
	mustRun(e, "context", "use", "b")
	if cur := mustRun(e, "context", "current"); cur != "b\n" {
		t.Fatalf("current = %q", cur)
	}
	mustRun(e, "vm", "ls")
	if got := b.last(); got != "Bearer nxs_b-token project=" {
		t.Fatalf("context b: the manager saw %q", got)
	}
	// The environment overrides the context, and flags the environment.
	mustRun(map[string]string{"NEXUS_CONFIG": cfg, "NEXUS_TOKEN": "nxs_env"}, "vm", "ls")
	if got := b.last(); got != "Bearer nxs_env project=" {
		t.Fatalf("env over context: %q", got)
	}
	mustRun(map[string]string{"NEXUS_CONFIG": cfg, "NEXUS_TOKEN": "nxs_env"}, "vm", "ls", "--token", "nxs_flag", "--context", "a")
	if got := a.last(); got != "Bearer nxs_flag project=team-a" {
		t.Fatalf("flag over env, --context a: %q", got)
	}
	ls := mustRun(e, "context", "ls")
	if strings.Contains(ls, "nxs_") || !strings.Contains(ls, "* ") || !strings.Contains(ls, a.URL) {
		t.Fatalf("context ls shows a token or misses the current marker:\n%s", ls)
	}
	// Refusals: an unknown context, a bad name, no address.
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"context", "use", "nope"}, exitNotFound},
		{[]string{"vm", "ls", "--context", "nope"}, exitUsage},
		{[]string{"context", "add", "bad name", "--addr", a.URL}, exitUsage},
		{[]string{"context", "add", "c"}, exitUsage},
		{[]string{"context", "add", "c", "--addr", "ftp://x"}, exitUsage},
		{[]string{"context", "add", "c", "--addr", a.URL, "--token", "x", "--token-file", tokFile}, exitUsage},
	} {
		if code, _, errOut := run(e, c.args...); code != c.code {
			t.Errorf("nexus %s: exit %d (%s); want %d", strings.Join(c.args, " "), code, errOut, c.code)
		}
	}
	mustRun(e, "context", "rm", "b")
	if code, _, _ := run(e, "context", "current"); code != exitNotFound {
		t.Fatalf("current after removing it: exit %d", code)
	}
}

// A bad spawn bound is refused before the agent starts anything: from the
// environment as a usage of it, from the flag by the agent, both naming
// the setting.
func TestAgentRefusesABadSpawnBound(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
	}{
		{map[string]string{"AGENT_MAX_SPAWNS": "-1"}, nil},
		{map[string]string{"AGENT_MAX_SPAWNS": "many"}, nil},
		{nil, []string{"--max-spawns", "-2"}},
	} {
		runDir := filepath.Join(t.TempDir(), "run")
		env := map[string]string{"AGENT_TOKEN": "join", "FC_RUN_DIR": runDir}
		for k, v := range tc.env {
			env[k] = v
		}
		code, out, errOut := run(env, append([]string{"agent", "--bind", "127.0.0.1:0"}, tc.args...)...)
		if code == 0 || out != "" || !strings.Contains(errOut, "AGENT_MAX_SPAWNS") {
			t.Errorf("agent with %v %v: exit %d, stdout %q, stderr %q; want a failure naming AGENT_MAX_SPAWNS", tc.env, tc.args, code, out, errOut)
		}
		if _, err := os.Stat(runDir); !os.IsNotExist(err) {
			t.Errorf("agent with %v %v made its run dir: %v", tc.env, tc.args, err)
		}
	}
}
