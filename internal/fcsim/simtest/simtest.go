// Package simtest helps tests run firecracker-sim as a real process: it
// builds the binary once per test process, writes a kernel and a rootfs the
// simulator accepts, and reads the simulated guest's console counter.
//
// Use it from _test.go files only. Call Main from TestMain so the build
// directory is removed when the test process ends:
//
//	func TestMain(m *testing.M) { simtest.Main(m) }
//
// Without it the directory is left in os.TempDir and removed by the next
// test process that builds the binary.
package simtest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// BinEnv names a prebuilt firecracker-sim to use instead of building one.
const BinEnv = "NEXUS_SIM_BIN"

// CounterPrefix starts the simulated guest's once-a-second console line,
// "sim-guest: counter=<N>" (the same constant as fcsim.CounterPrefix).
const CounterPrefix = "sim-guest: counter="

// ReadyLine is the line the simulated guest prints once per boot, before
// its first counter line (the same constant as fcsim.ReadyLine).
const ReadyLine = "nexus-guest: ready"

const dirPrefix = "nexus-simtest-"

var build struct {
	once sync.Once
	dir  string
	path string
	err  error
}

// Binary returns the path of a firecracker-sim binary: $NEXUS_SIM_BIN when
// set, otherwise cmd/firecracker-sim built once per test process.
func Binary(tb testing.TB) string {
	tb.Helper()
	if p := os.Getenv(BinEnv); p != "" {
		return p
	}
	build.once.Do(func() {
		removeStale()
		build.dir, build.err = os.MkdirTemp("", dirPrefix+strconv.Itoa(os.Getpid())+"-")
		if build.err != nil {
			return
		}
		build.path = filepath.Join(build.dir, "firecracker-sim")
		cmd := exec.Command("go", "build", "-o", build.path, "github.com/nexus-microvm/nexus/cmd/firecracker-sim")
		// Static, as firecracker releases are: a jailed VMM finds no
		// dynamic loader or libc in its chroot.
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("simtest: go build firecracker-sim: %w\n%s", err, out)
		}
	})
	if build.err != nil {
		tb.Fatal(build.err)
	}
	return build.path
}

// Main runs the tests and removes the build directory afterwards.
func Main(m *testing.M) {
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// removeStale removes build directories of test processes that are gone.
func removeStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(filepath.Base(d), dirPrefix), "-", 2)[0])
		if err != nil {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

// KernelELF returns a minimal x86_64 ELF image with one PT_LOAD segment:
// what the simulator (and linux-loader's checks) accept as a kernel.
func KernelELF() []byte {
	le := binary.LittleEndian
	code := []byte{0xf4, 0xeb, 0xfd} // hlt; jmp hlt
	const ehsize, phsize = 64, 56
	b := make([]byte, ehsize+phsize, ehsize+phsize+len(code))
	copy(b, "\x7fELF")
	b[4], b[5], b[6] = 2, 1, 1 // ELFCLASS64, ELFDATA2LSB, EV_CURRENT
	le.PutUint16(b[16:], 2)    // ET_EXEC
	le.PutUint16(b[18:], 62)   // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[24:], 0x1000000+ehsize+phsize) // entry
	le.PutUint64(b[32:], ehsize)                  // phoff
	le.PutUint16(b[52:], ehsize)
	le.PutUint16(b[54:], phsize)
	le.PutUint16(b[56:], 1) // phnum
	p := b[ehsize:]
	le.PutUint32(p[0:], 1) // PT_LOAD
	le.PutUint32(p[4:], 5) // R+X
	le.PutUint64(p[16:], 0x1000000)
	le.PutUint64(p[24:], 0x1000000)
	le.PutUint64(p[32:], uint64(ehsize+phsize+len(code)))
	le.PutUint64(p[40:], uint64(ehsize+phsize+len(code)))
	le.PutUint64(p[48:], 0x1000)
	return append(b, code...)
}

// WriteKernel writes KernelELF to dir/vmlinux and returns its path.
func WriteKernel(tb testing.TB, dir string) string {
	tb.Helper()
	p := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(p, KernelELF(), 0o644); err != nil {
		tb.Fatalf("simtest: write kernel: %v", err)
	}
	return p
}

// WriteRootfs writes a sparse file of sizeMiB MiB to dir/rootfs.ext4 and
// returns its path.
func WriteRootfs(tb testing.TB, dir string, sizeMiB int) string {
	tb.Helper()
	p := filepath.Join(dir, "rootfs.ext4")
	f, err := os.Create(p)
	if err == nil {
		err = f.Truncate(int64(sizeMiB) << 20)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		tb.Fatalf("simtest: write rootfs: %v", err)
	}
	return p
}

// ErrNoCounter means the console has no counter line yet.
var ErrNoCounter = errors.New("simtest: no " + CounterPrefix + "<N> line in the console")

// ReadCounter returns N of the last "sim-guest: counter=N" line in the
// console file (the simulator's stdout).
func ReadCounter(consolePath string) (int, error) {
	data, err := os.ReadFile(consolePath)
	if err != nil {
		return 0, fmt.Errorf("simtest: read console: %w", err)
	}
	return LastCounter(data)
}

// LastCounter is ReadCounter on console output already in memory.
func LastCounter(console []byte) (int, error) {
	n, found := 0, false
	sc := bufio.NewScanner(bytes.NewReader(console))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), CounterPrefix); ok {
			if c, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
				n, found = c, true
			}
		}
	}
	if !found {
		return 0, ErrNoCounter
	}
	return n, nil
}
