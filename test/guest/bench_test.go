package guest_test

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/testutil"
)

// BenchmarkGuestBootToReady boots the image set under QEMU's emulated
// microvm several times (NEXUS_GUEST_BENCH_BOOTS, default 5) per
// iteration and reports the time from starting the VMM to the guest's
// readiness line: ready-p50-ms and friends. Software emulation is far
// slower than firecracker on KVM; the number is a regression guard for
// the images (initrd size, module loading, init), not a product figure.
//
//	make bench-guest
func BenchmarkGuestBootToReady(b *testing.B) {
	qemu := requireQEMU(b)
	imgs := guestImages(b)
	boots := 5
	if s := os.Getenv("NEXUS_GUEST_BENCH_BOOTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("NEXUS_GUEST_BENCH_BOOTS=%q: want a positive number", s)
		}
		boots = n
	}
	var durs []time.Duration
	b.ResetTimer()
	for range b.N {
		for range boots {
			v := startVM(b, bootSpec{VMM: vmmQEMU, Bin: qemu, Images: imgs})
			took, err := v.waitReady(readyTimeout)
			v.close(b)
			if err != nil {
				b.Fatal(err)
			}
			durs = append(durs, took)
		}
	}
	b.StopTimer()
	testutil.ReportLatency(b, "ready", durs)
}

// BenchmarkGuestImageBuild measures scripts/build-images.sh into empty
// directories: cold (the kernel package downloaded, everything built),
// rebuilt with the download cached (what a recipe change costs), and warm
// (everything exists: what every later test run pays). It downloads the
// kernel package (about 70 MB) once per iteration.
func BenchmarkGuestImageBuild(b *testing.B) {
	testutil.RequireRoot(b)
	root, err := repoRoot()
	if err != nil {
		b.Fatal(err)
	}
	var cold, cached, warm []time.Duration
	run := func(imagesDir, cache string) time.Duration {
		b.Helper()
		start := time.Now()
		cmd := exec.Command("bash", filepath.Join(root, "scripts/build-images.sh"))
		cmd.Env = append(os.Environ(), "NEXUS_ADDR=", "NEXUS_TOKEN=", "FC_IMAGES_DIR="+imagesDir, "IMAGES_CACHE="+cache)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("build-images.sh: %v\n%s", err, out)
		}
		return time.Since(start)
	}
	for range b.N {
		tmp, err := os.MkdirTemp("", "nexus-image-bench-")
		if err != nil {
			b.Fatal(err)
		}
		cache := filepath.Join(tmp, "cache")
		cold = append(cold, run(filepath.Join(tmp, "a"), cache))
		warm = append(warm, run(filepath.Join(tmp, "a"), cache))
		cached = append(cached, run(filepath.Join(tmp, "b"), cache))
		// Every host of a fleet must build the identical files: one
		// registration covers them all.
		for _, pat := range []string{"vmlinux-*", "initrd-*", "rootfs-*"} {
			a, _ := filepath.Glob(filepath.Join(tmp, "a", pat))
			bb, _ := filepath.Glob(filepath.Join(tmp, "b", pat))
			if len(a) != 1 || len(bb) != 1 || sha256File(b, a[0]) != sha256File(b, bb[0]) {
				b.Errorf("two builds differ (or are missing): %v vs %v", a, bb)
			}
		}
		if err := os.RemoveAll(tmp); err != nil {
			b.Fatal(err)
		}
	}
	testutil.ReportLatency(b, "cold", cold)
	testutil.ReportLatency(b, "cached-download", cached)
	testutil.ReportLatency(b, "warm", warm)
}

func sha256File(tb testing.TB, path string) string {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}
