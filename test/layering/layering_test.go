// Package layering checks the import rules that keep the code's layers
// true: what each package may know of the product. A new import that
// breaks a rule fails here, with the rule's reason.
package layering

import (
	"go/build"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/nexus-microvm/nexus/"

// rule: packages under pkg may import of the product only what allow
// lists (prefixes), or must not import what deny lists.
type rule struct {
	pkg   string
	allow []string // nil: no allow-list
	deny  []string
	why   string
}

var rules = []rule{
	{pkg: "internal/fcsim", allow: []string{"internal/firecracker/model", "internal/fcsim"},
		why: "firecracker-sim stands in for a third-party binary: it knows firecracker's models and nothing of Nexus"},
	{pkg: "internal/firecracker", allow: []string{"internal/firecracker"},
		why: "the one place that knows firecracker's API depends on nothing of Nexus"},
	{pkg: "internal/store", allow: []string{"internal/store"},
		why: "persistence knows no service, HTTP or agent"},
	{pkg: "internal/apierr", allow: []string{}, why: "the error contract is a leaf"},
	{pkg: "pkg/apitypes", allow: []string{}, why: "the API's bodies are a leaf: users of the SDK import them"},
	{pkg: "internal/hostlayout", allow: []string{}, why: "the host layout is a leaf"},
	{pkg: "internal/guest", allow: []string{}, why: "the guest contract is a leaf"},
	{pkg: "internal/keyed", allow: []string{}, why: "a leaf utility"},
	{pkg: "internal/netnsutil", allow: []string{}, why: "a leaf utility"},
	{pkg: "internal/lifecycle", allow: []string{}, why: "a leaf utility"},
	{pkg: "internal/version", allow: []string{}, why: "build information is a leaf: every binary may print it"},
	{pkg: "internal/pki", allow: []string{"internal/pki"},
		why: "the fleet's CA and TLS configs are a leaf: manager, agent and CLI share them"},
	{pkg: "internal/agent/jail", allow: []string{},
		why: "the jail helper starts once per VMM: it links nothing of Nexus (its own test keeps other modules out too)"},
	{pkg: "internal/manager", deny: []string{"internal/api", "internal/app", "internal/cli", "internal/agent/", "internal/fcsim", "internal/jsonhttp", "pkg/nexus"},
		why: "services reach agents only through their API client (agentapi) and know nothing of HTTP serving"},
	{pkg: "internal/api", deny: []string{"internal/agent/", "internal/app", "internal/cli", "internal/fcsim", "internal/firecracker", "internal/jsonhttp", "pkg/nexus"},
		why: "the HTTP layer talks to the services through interfaces, never to agents or firecracker"},
	{pkg: "internal/agent", deny: []string{"internal/manager", "internal/api", "internal/app", "internal/cli", "internal/store", "internal/auth"},
		why: "the agent is the manager's executor and knows nothing of the control plane's state"},
	{pkg: "internal/agentapi", deny: []string{"internal/agent/", "internal/manager", "internal/api", "internal/store"},
		why: "the agent API's types and client are shared by both sides and depend on neither"},
	{pkg: "pkg/nexus", deny: []string{"internal/manager", "internal/api", "internal/store", "internal/agent"},
		why: "the API client speaks the public contract only"},
	{pkg: "internal/auth", deny: []string{"internal/manager", "internal/api", "internal/agent"},
		why: "authentication depends on the store only"},
}

// onlyFrom: these packages may be imported only by the listed ones.
var onlyFrom = map[string][]string{
	"internal/cli": {"cmd/nexus"},
	"internal/app": {"internal/cli"},
}

func TestImportRules(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	pkgs := map[string][]string{} // package → product imports
	for _, top := range []string{"internal", "cmd", "pkg"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(path string, d os.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return err
			}
			p, err := build.ImportDir(path, 0)
			if err != nil {
				return nil // no Go files here
			}
			rel, _ := filepath.Rel(root, path)
			for _, imp := range p.Imports {
				if s, ok := strings.CutPrefix(imp, module); ok {
					pkgs[filepath.ToSlash(rel)] = append(pkgs[filepath.ToSlash(rel)], s)
				}
			}
			if _, seen := pkgs[filepath.ToSlash(rel)]; !seen {
				pkgs[filepath.ToSlash(rel)] = nil
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(pkgs) < 20 {
		t.Fatalf("found only %d packages under %s: the walk is broken", len(pkgs), root)
	}
	under := func(pkg, prefix string) bool {
		prefix = strings.TrimSuffix(prefix, "/")
		return pkg == prefix || strings.HasPrefix(pkg, prefix+"/")
	}
	for pkg, imps := range pkgs {
		for _, r := range rules {
			if !under(pkg, r.pkg) {
				continue
			}
			for _, imp := range imps {
				if r.allow != nil && !slices.ContainsFunc(r.allow, func(a string) bool { return under(imp, a) }) {
					t.Errorf("%s imports %s: %s", pkg, imp, r.why)
				}
				for _, d := range r.deny {
					// "x/" denies x's subpackages only; "x" denies x and them.
					if (strings.HasSuffix(d, "/") && strings.HasPrefix(imp, d)) || (!strings.HasSuffix(d, "/") && under(imp, d)) {
						t.Errorf("%s imports %s: %s", pkg, imp, r.why)
					}
				}
			}
		}
		for _, imp := range imps {
			for target, allowed := range onlyFrom {
				if under(imp, target) && !under(pkg, target) && !slices.Contains(allowed, pkg) {
					t.Errorf("%s imports %s, which only %v may import", pkg, imp, allowed)
				}
			}
		}
	}
}
