package agent

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestCapabilitiesDocumented: the table of docs/security.md lists exactly
// the capabilities the agent checks for, so an operator who copies it
// gets an agent that starts.
func TestCapabilitiesDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(CAP_[A-Z_]+)` \\| (always|jail) \\|")
	var doc []string
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		doc = append(doc, m[1])
	}
	var code []string
	for _, c := range Capabilities(true) {
		code = append(code, c.Name)
	}
	if !slices.Equal(doc, code) {
		t.Fatalf("docs/security.md lists %v; the agent needs %v", doc, code)
	}
	unit := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.*)$`).FindStringSubmatch(string(b))
	if want := strings.Join(code, " "); unit == nil || unit[1] != want {
		t.Fatalf("the systemd example's bounding set %q; want %q", unit, want)
	}
}
