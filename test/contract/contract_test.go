// Package contract checks the API document the manager serves with the
// tools integrators use: Redocly's linter (recommended rules), Go client
// generation with oapi-codegen, and TypeScript types from
// openapi-typescript type-checked by tsc. The tools are installed by
// scripts/setup.sh --test (test/contract/tools pins them); without them the
// test skips, and on CI it fails.
package contract

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/api"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

const npmBin = "/usr/local/nexus-tools/npm/node_modules/.bin"

// oapiCodegen is the generator version; its runtime comes with it.
const oapiCodegen = "github.com/oapi-codegen/oapi-codegen/v2/cmd/oapi-codegen@v2.8.2"

// served fetches a document from a manager's HTTP handler.
func served(t *testing.T, path string) []byte {
	t.Helper()
	ts := httptest.NewServer(api.New(api.Deps{Version: "contract-test", Log: slog.New(slog.DiscardHandler)}))
	defer ts.Close()
	resp, err := http.Get(ts.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
	}
	return b
}

func npmTool(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(npmBin, name)
	if _, err := os.Stat(p); err != nil {
		msg := name + " is not installed: run scripts/setup.sh --test (npm ci of test/contract/tools)"
		if testutil.OnCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

func runTool(t *testing.T, dir string, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NO_COLOR=1", "REDOCLY_TELEMETRY=off", "REDOCLY_SUPPRESS_UPDATE_NOTICE=true")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestDocument(t *testing.T) {
	doc31, doc30 := served(t, "/openapi.json"), served(t, "/openapi-3.0.json")

	// The recommended rules, with the exceptions and reasons of
	// redocly-ignore.yaml: no error, no warning.
	t.Run("redocly-lint", func(t *testing.T) {
		t.Parallel()
		bin := npmTool(t, "redocly")
		dir := t.TempDir()
		write(t, dir, "openapi.json", doc31)
		cfg, err := os.ReadFile("redocly.yaml")
		if err != nil {
			t.Fatal(err)
		}
		write(t, dir, "redocly.yaml", cfg)
		ignore, err := os.ReadFile("redocly-ignore.yaml")
		if err != nil {
			t.Fatal(err)
		}
		write(t, dir, ".redocly.lint-ignore.yaml", ignore)
		out := runTool(t, dir, 2*time.Minute, bin, "lint", "--format=stylish", "--max-problems=50", "openapi.json")
		if strings.Contains(out, "warning") {
			t.Fatalf("redocly warns:\n%s", out)
		}
	})

	// TypeScript users: the generated types compile, and a use of the
	// error body and a create's {item} type-checks.
	t.Run("openapi-typescript", func(t *testing.T) {
		t.Parallel()
		gen, tsc := npmTool(t, "openapi-typescript"), npmTool(t, "tsc")
		dir := t.TempDir()
		write(t, dir, "openapi.json", doc31)
		runTool(t, dir, 2*time.Minute, gen, "openapi.json", "-o", "nexus.d.ts")
		write(t, dir, "use.ts", []byte(`import type { paths, components } from "./nexus";
type Err = components["schemas"]["Error"];
type Created = paths["/v1/vms"]["post"]["responses"][201]["content"]["application/json"];
type NotFound = paths["/v1/vms/{id}"]["get"]["responses"][404]["content"]["application/json"];
export const describe = (e: Err): string => e.error + ": " + (e.message ?? "") + " " + e.request_id;
export const createdID = (c: Created): string => c.item.id;
export const code = (e: NotFound): number => e.status;
`))
		runTool(t, dir, 2*time.Minute, tsc, "--strict", "--noEmit", "--target", "es2022", "--module", "es2022",
			"--moduleResolution", "bundler", "nexus.d.ts", "use.ts")
	})

	// Go users of other generators: oapi-codegen's client (it reads 3.0)
	// compiles. Its module and the runtime come from the Go module proxy.
	t.Run("oapi-codegen", func(t *testing.T) {
		t.Parallel()
		goBin, err := exec.LookPath("go")
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		write(t, dir, "openapi.json", doc30)
		write(t, dir, "go.mod", []byte("module example.com/nexusapi\n\ngo 1.24\n"))
		src := runToolOut(t, dir, goBin, "run", oapiCodegen, "-generate", "types,client", "-package", "nexusapi", "openapi.json")
		write(t, dir, "client.go", src)
		write(t, dir, "use.go", []byte(`package nexusapi

import "context"

// getVM uses the generated client and the error schema.
func getVM(ctx context.Context, c *ClientWithResponses, id string) (string, *Error, error) {
	r, err := c.GetVmWithResponse(ctx, id)
	if err != nil {
		return "", nil, err
	}
	if r.JSON200 != nil {
		return r.JSON200.Item.Id, nil, nil
	}
	return "", r.JSON404, nil
}

var _ = getVM
`))
		runTool(t, dir, 3*time.Minute, goBin, "mod", "tidy")
		runTool(t, dir, 3*time.Minute, goBin, "vet", "./...")
	})
}

// runToolOut runs a generator and returns its stdout alone.
func runToolOut(t *testing.T, dir, name string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(name), strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func write(t *testing.T, dir, name string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}
