package fcsim

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// fifoReader collects what arrives on a FIFO, from the moment it is opened.
type fifoReader struct {
	f    *os.File
	mu   sync.Mutex
	buf  bytes.Buffer
	done chan struct{}
}

func mkfifo(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	must(t, syscall.Mkfifo(p, 0o600))
	return p
}

// openReader opens path for reading without waiting for a writer and
// copies what arrives until the test ends.
func openReader(t testing.TB, path string) *fifoReader {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	must(t, err)
	r := &fifoReader{f: f, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		b := make([]byte, 4096)
		for {
			n, err := f.Read(b)
			r.mu.Lock()
			r.buf.Write(b[:n])
			r.mu.Unlock()
			if err != nil && !errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				// No writer at the moment: the poller reports EOF; wait
				// for one to come.
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	t.Cleanup(func() {
		f.Close()
		<-r.done
	})
	return r
}

func (r *fifoReader) text() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

// waitFor waits until the reader has seen want.
func (r *fifoReader) waitFor(t testing.TB, what, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(r.text(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %q never arrived; got %q", what, want, r.text())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFIFOOutputs: the logger, metrics and serial destinations may be
// FIFOs, with a reader from the start or none until later; firecracker
// opens them read-write and non-blocking, so configuring them succeeds
// either way, InstanceStart and every later call answer, and what was
// written while nobody read is delivered when a reader comes.
func TestFIFOOutputs(t *testing.T) {
	for _, readerFirst := range []bool{true, false} {
		name := "reader appears later"
		if readerFirst {
			name = "reader from the start"
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			p := startInProc(t)
			logFIFO, metricsFIFO, serialFIFO := mkfifo(t, p.dir, "log.fifo"), mkfifo(t, p.dir, "metrics.fifo"), mkfifo(t, p.dir, "serial.fifo")
			readers := map[string]*fifoReader{}
			open := func() {
				readers["log"], readers["metrics"], readers["serial"] = openReader(t, logFIFO), openReader(t, metricsFIFO), openReader(t, serialFIFO)
			}
			if readerFirst {
				open()
			}
			c := p.client
			must(t, c.PutLogger(ctx, firecracker.Logger{LogPath: logFIFO, Level: "Info"}))
			must(t, c.PutMetrics(ctx, firecracker.Metrics{MetricsPath: metricsFIFO}))
			must(t, c.PutSerial(ctx, firecracker.SerialDevice{SerialOutPath: serialFIFO}))
			bootConfig(t, c, p.dir)
			must(t, c.InstanceStart(ctx))
			info, err := c.DescribeInstance(ctx)
			must(t, err)
			if info.State != firecracker.StateRunning {
				t.Fatalf("state %q after InstanceStart", info.State)
			}
			if !readerFirst {
				open()
			}
			readers["log"].waitFor(t, "logger FIFO", `The API server received a Put request on "/actions" with body "{\"action_type\":\"InstanceStart\"}".`)
			readers["metrics"].waitFor(t, "metrics FIFO", `{"utc_timestamp_ms":`)
			readers["serial"].waitFor(t, "serial FIFO", "Command line: console=ttyS0 root=/dev/vda rw\n")
			readers["serial"].waitFor(t, "serial FIFO", simtest.ReadyLine+"\n")
			if bytes.Contains(p.stdout.Bytes(), []byte(simtest.ReadyLine)) {
				t.Fatal("the guest console went to stdout although serial_out_path was set")
			}
		})
	}
}

// TestFullPipes: outputs whose pipe is full lose data, as firecracker's
// do (counted in logger.missed_log_count), and never stall the API.
func TestFullPipes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := startInProc(t)
	logFIFO := mkfifo(t, p.dir, "log.fifo")
	metricsPath := filepath.Join(p.dir, "metrics.json")
	c := p.client
	must(t, c.PutLogger(ctx, firecracker.Logger{LogPath: logFIFO}))
	must(t, c.PutMetrics(ctx, firecracker.Metrics{MetricsPath: metricsPath}))
	bootConfig(t, c, p.dir)
	must(t, c.InstanceStart(ctx))
	// Every request logs two lines of ~120 bytes; a pipe holds 64 KiB.
	for i := 0; i < 800; i++ {
		if _, err := c.DescribeInstance(ctx); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	must(t, c.FlushMetrics(ctx))
	b, err := os.ReadFile(metricsPath)
	must(t, err)
	if !bytes.Contains(b, []byte(`"missed_log_count":`)) || bytes.Contains(lastLine(b), []byte(`"missed_log_count":0,`)) {
		t.Fatalf("no log line was counted as missed: %s", lastLine(b))
	}
	// A reader that comes now gets the first 64 KiB.
	r := openReader(t, logFIFO)
	r.waitFor(t, "log FIFO", `The API server received a Put request on "/metrics"`)
}

var logLineStart = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9} \[test-vm:main\] Running Firecracker v`)

func lastLine(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}

// TestStdoutPipeNobodyReads: as a process whose stdout is a pipe nobody
// reads, the simulator keeps answering once the guest runs: firecracker
// makes stdout non-blocking when the console goes there, and so do we.
func TestStdoutPipeNobodyReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	pr, pw, err := os.Pipe()
	must(t, err)
	defer pr.Close()
	sock := filepath.Join(dir, "fc.sock")
	cmd := exec.Command(simtest.Binary(t), "--api-sock", sock, "--id", "pipe-vm")
	cmd.Stdout, cmd.Stderr = pw, pw
	must(t, cmd.Start())
	pw.Close()
	exited := make(chan int, 1)
	go func() { cmd.Wait(); exited <- cmd.ProcessState.ExitCode() }()
	defer func() { cmd.Process.Kill(); <-exited }()
	waitSocket(t, sock, exited)
	c := firecracker.NewUnix(sock, firecracker.WithTimeout(5*time.Second))
	defer c.CloseIdleConnections()
	bootConfig(t, c, dir)
	must(t, c.InstanceStart(ctx))
	for i := 0; i < 800; i++ {
		if _, err := c.DescribeInstance(ctx); err != nil {
			t.Fatalf("request %d with a full stdout pipe: %v", i, err)
		}
	}
}

// TestLogFileWrittenFromStart: a regular log file is written from offset 0,
// over what it held, as firecracker opens it (no O_APPEND, no O_TRUNC).
func TestLogFileWrittenFromStart(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "fc.log")
	old := strings.Repeat("old line from an earlier run\n", 200)
	must(t, os.WriteFile(logPath, []byte(old), 0o644))
	p := startInProc(t, "--log-path", logPath)
	if _, err := p.client.Version(context.Background()); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(logPath)
	must(t, err)
	if !logLineStart.Match(b) {
		t.Fatalf("log starts with %q; want a new log line at offset 0", b[:40])
	}
	if len(b) != len(old) || !strings.HasSuffix(string(b), "old line from an earlier run\n") {
		t.Fatalf("log is %d bytes (was %d); the rest of the old content must stay, as nothing truncates it", len(b), len(old))
	}
}
