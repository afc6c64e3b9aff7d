package network

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The iptables fallback against the fake iptables of main_test.go: the
// test binary plays iptables, so what is checked is our use of -S/-C/-A/-D
// (idempotence, stale rules, leaving foreign rules alone), not iptables.
func TestIptablesFallback(t *testing.T) {
	ctx := context.Background()
	tns := newTestNS(t)
	tns.addUplink(t, "uplink0", "10.99.0.2/24", true)

	state := filepath.Join(t.TempDir(), "iptables.json")
	// A foreign rule; one of ours, written by a version before ownership
	// marks, for an uplink that is gone; another agent's (bridge fcbr9),
	// marked and legacy.
	foreignPost := []string{
		"-A POSTROUTING -s 10.0.0.0/8 -o eth9 -j MASQUERADE",
		"-A POSTROUTING -s 10.9.0.0/16 -o uplink0 -m comment --comment nexus:fcbr9 -j MASQUERADE",
		"-A POSTROUTING -s 10.8.0.0/16 -o uplink0 -m comment --comment nexus -j MASQUERADE",
	}
	foreignFwd := []string{
		"-A FORWARD -i fcbr9 -o uplink0 -m comment --comment nexus:fcbr9 -j ACCEPT",
		"-A FORWARD -i fcbr8 -o uplink0 -m comment --comment nexus -j ACCEPT",
	}
	seed := map[string][]string{
		"nat/POSTROUTING": append(slices.Clone(foreignPost),
			"-A POSTROUTING -s 172.20.0.0/16 -o olduplink -m comment --comment nexus -j MASQUERADE"),
		"filter/FORWARD": slices.Clone(foreignFwd),
	}
	writeJSON(t, state, seed)
	t.Setenv(fakeIptablesEnv, state)

	nw := newNet(t, tns, Config{NAT: NATIptables, IptablesPath: os.Args[0]})
	if got := nw.Backend(); got != NATIptables {
		t.Fatalf("Backend() = %q; want iptables", got)
	}
	want := map[string][]string{
		"nat/POSTROUTING": append(slices.Clone(foreignPost),
			"-A POSTROUTING -s 172.20.0.0/16 -o uplink0 -m comment --comment nexus:fcbr0 -j MASQUERADE"),
		"filter/FORWARD": append(slices.Clone(foreignFwd),
			"-A FORWARD -i fcbr0 -o uplink0 -m comment --comment nexus:fcbr0 -j ACCEPT",
			"-A FORWARD -i uplink0 -o fcbr0 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment nexus:fcbr0 -j ACCEPT"),
	}
	for i := range 2 {
		br, err := nw.EnsureBridge(ctx)
		if err != nil {
			t.Fatalf("EnsureBridge #%d: %v", i+1, err)
		}
		if br.NAT != NATIptables || br.Uplink != "uplink0" {
			t.Errorf("EnsureBridge #%d = %+v; want iptables via uplink0", i+1, br)
		}
		if got := readJSON(t, state); !reflect.DeepEqual(got, want) {
			t.Errorf("rules after EnsureBridge #%d =\n%v\nwant\n%v", i+1, got, want)
		}
	}
	if n := strings.Count(readFile(t, state+".log"), " -A "); n != 3 {
		t.Errorf("iptables -A calls over two runs = %d; want 3 (second run adds nothing)", n)
	}
	if c := tns.nexusTableCount(t); c != 0 {
		t.Errorf("nft tables with the iptables backend = %d; want 0", c)
	}

	if err := nw.RemoveNAT(ctx); err != nil {
		t.Fatalf("RemoveNAT: %v", err)
	}
	got := readJSON(t, state)
	if !reflect.DeepEqual(got["nat/POSTROUTING"], foreignPost) || !reflect.DeepEqual(got["filter/FORWARD"], foreignFwd) {
		t.Errorf("rules after RemoveNAT = %v; want only the foreign ones and the other agent's", got)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readJSON(t *testing.T, path string) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	if err := json.Unmarshal([]byte(readFile(t, path)), &m); err != nil {
		t.Fatalf("state %s: %v", path, err)
	}
	for k, v := range m {
		if len(v) == 0 {
			delete(m, k)
		}
	}
	return m
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
