package fcsim

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		err  string
	}{
		{[]string{"--api-sock", "/s", "--id", "a"}, ""},
		{[]string{"--api-sock=/s"}, "Found argument 'api-sock=/s' which wasn't expected, or isn't valid in this context."},
		{[]string{"--bogus"}, "Found argument 'bogus' which wasn't expected, or isn't valid in this context."},
		{[]string{"positional"}, "Found argument 'positional' which wasn't expected, or isn't valid in this context."},
		{[]string{"--id", "a", "--id", "b"}, "The argument 'id' was provided more than once."},
		{[]string{"--api-sock"}, "The argument 'api-sock' requires a value, but none was supplied."},
		{[]string{"--api-sock", "--id", "a"}, "The argument 'api-sock' requires a value, but none was supplied."},
		{[]string{"--no-api"}, "Argument 'config-file' required, but not found."},
		{[]string{"--no-seccomp", "--seccomp-filter", "f"}, "cannot be used together with argument"},
		{[]string{"--bogus", "--version"}, ""}, // --version wins
		{[]string{"--id", "a", "--", "--anything"}, ""},
	} {
		_, err := parseArgs(tc.argv)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("parseArgs(%q) = %v; want ok", tc.argv, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseArgs(%q) = %v; want %q", tc.argv, err, tc.err)
		}
	}
}

func runOnce(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb testutil.SyncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	code := Run(ctx, args, &out, &errb, func(string) string { return "" })
	return code, string(out.Bytes()), string(errb.Bytes())
}

func TestRunExitCodes(t *testing.T) {
	dir := t.TempDir()
	taken := filepath.Join(dir, "taken")
	must(t, os.WriteFile(taken, []byte("keep"), 0o644))
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		output string
	}{
		{"version", []string{"--version"}, 0, "Firecracker v1.16.1-sim\n"},
		{"snapshot version", []string{"--snapshot-version"}, 0, "v10.0.0"},
		{"help", []string{"--help"}, 0, "--api-sock <api-sock>"},
		{"unknown flag", []string{"--bogus"}, 153, "Found argument 'bogus' which wasn't expected"},
		{"bad level", []string{"--level", "chatty"}, 152, "Invalid value for logger level"},
		{"no-api without config", []string{"--no-api"}, 153, "Argument 'config-file' required, but not found."},
		{"bad id", []string{"--id", "bad_id!"}, ExitAbort, "Invalid instance ID"},
		{"socket path taken", []string{"--api-sock", taken}, 1, "Failed to open the API socket at: " + taken + ". Check that it is not already used."},
		{"unreadable config", []string{"--config-file", filepath.Join(dir, "nope.json")}, ExitAbort, "Unable to open or read from the configuration file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runOnce(t, tc.args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.output) {
				t.Fatalf("exit %d, output %q %q; want %d with %q", code, out, errOut, tc.code, tc.output)
			}
		})
	}
	if b, _ := os.ReadFile(taken); string(b) != "keep" {
		t.Fatal("the file in the socket's place was touched")
	}
}

var logLine = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[test-vm:(main|fc_api|fc_vcpu 0)(:(ERROR|WARN|INFO|DEBUG|TRACE))?(:src/[a-z_/]+\.rs:\d+)?\] .+$`)

func TestLoggerFormatAndLevels(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "fc.log")
	p := startInProc(t, "--log-path", logPath, "--level", "Warning", "--show-level", "--show-log-origin")
	rawCall(t, p.sock, "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":1}`)
	rawCall(t, p.sock, "GET", "/", "-")
	b, err := os.ReadFile(logPath)
	must(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) == 0 {
		t.Fatal("empty log")
	}
	for _, l := range lines {
		if !logLine.MatchString(l) {
			t.Errorf("log line %q is not in firecracker's format", l)
		}
		if strings.Contains(l, ":INFO:") {
			t.Errorf("INFO line logged at level Warning: %q", l)
		}
	}
	if !strings.Contains(string(b), "[test-vm:fc_api:ERROR:src/firecracker/src/api_server/parsed_request.rs:61] Received Error. Status code: 400 Bad Request. Message: Machine config error:") {
		t.Errorf("log lacks the error line:\n%s", b)
	}

	// Default: Info, no level, no origin; PUT /logger may be repeated.
	q := startInProc(t)
	second := filepath.Join(dir, "second.log")
	must(t, q.client.PutLogger(context.Background(), firecracker.Logger{LogPath: filepath.Join(dir, "first.log")}))
	must(t, q.client.PutLogger(context.Background(), firecracker.Logger{LogPath: second}))
	rawCall(t, q.sock, "PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	b, _ = os.ReadFile(second)
	want := `[test-vm:fc_api] The API server received a Put request on "/actions" with body "{\"action_type\":\"FlushMetrics\"}".`
	if !strings.Contains(string(b), want) {
		t.Fatalf("second log lacks %q:\n%s", want, b)
	}
	if !strings.HasPrefix(string(q.stdout.Bytes())[30:], "[test-vm:main] Running Firecracker v1.16.1-sim") {
		t.Fatalf("stdout (the log before PUT /logger) starts with %q", q.stdout.Bytes())
	}
}

// TestGuestClock: one line per second of run time; paused time does not
// count; metrics flush periodically while running, not while paused.
func TestGuestClock(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	metricsPath := filepath.Join(dir, "metrics.json")
	var out testutil.SyncBuffer
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan int, 1)
	sock := filepath.Join(dir, "fc.sock")
	env := func(k string) string {
		if k == MetricsIntervalEnv {
			return "100ms"
		}
		return ""
	}
	go func() {
		done <- Run(rctx, []string{"--api-sock", sock, "--metrics-path", metricsPath}, &out, &testutil.SyncBuffer{}, env)
	}()
	defer func() { cancel(); <-done }()
	waitSocket(t, sock, done)
	c := firecracker.NewUnix(sock)
	defer c.CloseIdleConnections()
	bootConfig(t, c, dir)
	must(t, c.InstanceStart(ctx))
	waitCounter(t, func() ([]byte, error) { return out.Bytes(), nil }, 1, 5*time.Second)
	must(t, c.Pause(ctx))
	paused, _ := simtest.LastCounter(out.Bytes())
	records := func() int { b, _ := os.ReadFile(metricsPath); return bytes.Count(b, []byte("\n")) }
	before := records()
	time.Sleep(1300 * time.Millisecond)
	if n, _ := simtest.LastCounter(out.Bytes()); n != paused {
		t.Fatalf("counter moved from %d to %d while paused", paused, n)
	}
	if after := records(); after != before {
		t.Fatalf("metrics flushed while paused: %d -> %d records", before, after)
	}
	must(t, c.Resume(ctx))
	n := waitCounter(t, func() ([]byte, error) { return out.Bytes(), nil }, paused+1, 3*time.Second)
	if n != paused+1 {
		t.Fatalf("counter jumped from %d to %d after resume; paused time must not count", paused, n)
	}
	if records() < before+2 {
		t.Fatalf("periodic metrics did not resume: %d records after %d", records(), before)
	}
	if !bytes.Contains(out.Bytes(), []byte("sim-guest: Command line: console=ttyS0 root=/dev/vda rw\n")) {
		t.Fatalf("boot lines missing:\n%s", out.Bytes())
	}
}

func TestConfigFileBoots(t *testing.T) {
	dir := t.TempDir()
	cfg := `{"boot-source":{"kernel_image_path":"` + simtest.WriteKernel(t, dir) + `","boot_args":"console=ttyS0"},
	  "drives":[{"drive_id":"rootfs","path_on_host":"` + simtest.WriteRootfs(t, dir, 4) + `","is_root_device":true,"is_read_only":true}],
	  "machine-config":{"vcpu_count":2,"mem_size_mib":256},
	  "metrics":{"metrics_path":"` + dir + `/metrics.json"},
	  "unknown-key":{"ignored":true}}`
	cfgPath := filepath.Join(dir, "vm.json")
	must(t, os.WriteFile(cfgPath, []byte(cfg), 0o644))

	t.Run("with api", func(t *testing.T) {
		p := startInProc(t, "--config-file", cfgPath)
		info, err := p.client.DescribeInstance(context.Background())
		must(t, err)
		if info.State != firecracker.StateRunning {
			t.Fatalf("state = %q", info.State)
		}
		mc, _ := p.client.GetMachineConfig(context.Background())
		if mc.VcpuCount != 2 || mc.MemSizeMib != 256 {
			t.Fatalf("machine config = %+v", mc)
		}
		if !bytes.Contains(p.stdout.Bytes(), []byte("Command line: console=ttyS0 root=/dev/vda ro")) {
			t.Fatalf("console:\n%s", p.stdout.Bytes())
		}
	})
	t.Run("no api", func(t *testing.T) {
		var out testutil.SyncBuffer
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() {
			done <- Run(ctx, []string{"--no-api", "--config-file", cfgPath, "--api-sock", filepath.Join(dir, "unused.sock")}, &out, &testutil.SyncBuffer{}, nil)
		}()
		waitCounter(t, func() ([]byte, error) { return out.Bytes(), nil }, 1, 5*time.Second)
		cancel()
		<-done
		if _, err := os.Stat(filepath.Join(dir, "unused.sock")); !isNotExist(err) {
			t.Fatalf("--no-api created the socket: %v", err)
		}
	})
	t.Run("invalid config exits 1", func(t *testing.T) {
		bad := filepath.Join(dir, "bad.json")
		must(t, os.WriteFile(bad, []byte(`{"drives":[]}`), 0o644))
		code, out, _ := runOnce(t, "--no-api", "--config-file", bad)
		if code != 1 || !strings.Contains(out, "missing field `boot-source`") {
			t.Fatalf("exit %d, output %q", code, out)
		}
	})
}
