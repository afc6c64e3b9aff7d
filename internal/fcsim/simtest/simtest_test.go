package simtest

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestMain(m *testing.M) { Main(m) }

func TestReadCounter(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	console := "2026-01-01T00:00:00.000000000 [vm:main] Running Firecracker v1.16.1-sim\n" +
		"sim-guest: Run /sbin/init as init process\nsim-guest: counter=1\nsim-guest: counter=2\nsim-guest: counter=12\n"
	if err := os.WriteFile(p, []byte(console), 0o644); err != nil {
		t.Fatal(err)
	}
	if n, err := ReadCounter(p); n != 12 || err != nil {
		t.Fatalf("ReadCounter = %d, %v; want 12", n, err)
	}
	if _, err := LastCounter([]byte("sim-guest: booting\n")); !errors.Is(err, ErrNoCounter) {
		t.Fatalf("LastCounter without a counter line = %v; want ErrNoCounter", err)
	}
}

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	k := WriteKernel(t, dir)
	b, err := os.ReadFile(k)
	if err != nil || string(b[:4]) != "\x7fELF" {
		t.Fatalf("kernel %q: %v", b[:4], err)
	}
	r := WriteRootfs(t, dir, 32)
	fi, err := os.Stat(r)
	if err != nil || fi.Size() != 32<<20 {
		t.Fatalf("rootfs size %v: %v", fi.Size(), err)
	}
}

func TestBinaryIsBuiltOnce(t *testing.T) {
	a, b := Binary(t), Binary(t)
	if a != b {
		t.Fatalf("Binary returned %q then %q", a, b)
	}
	if fi, err := os.Stat(a); err != nil || fi.Mode()&0o111 == 0 {
		t.Fatalf("binary %q: %v", a, err)
	}
}
