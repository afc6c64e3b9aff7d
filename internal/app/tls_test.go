package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent"
	"github.com/nexus-microvm/nexus/internal/agent/agenttest"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/fcsim/simtest"
	"github.com/nexus-microvm/nexus/internal/pki"
	"github.com/nexus-microvm/nexus/internal/pki/pkitest"
	"github.com/nexus-microvm/nexus/pkg/apitypes"
	"github.com/nexus-microvm/nexus/pkg/nexus"
)

const longJoin = "join-token-of-at-least-32-bytes-0123456789"

func startTestManager(t *testing.T, o ManagerOptions) (*Manager, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if o.DatabaseURL == "" {
		o.DatabaseURL = "sqlite://" + filepath.Join(t.TempDir(), "nexus.db")
	}
	if o.Mode == "" {
		o.Mode = "dev"
	}
	m, err := StartManager(ctx, o, slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		return nil, err
	}
	t.Cleanup(func() {
		cancel()
		m.Wait()
	})
	return m, nil
}

// TestProdRefuses: prod mode refuses to serve plain HTTP off loopback and
// join tokens under 32 bytes, on the manager and on the agent, and says
// what to do; with TLS, any address is fine.
func TestProdRefuses(t *testing.T) {
	ca := pkitest.NewCA(t, t.TempDir(), "ca")
	tlsFiles := ca.Issue("manager", "127.0.0.1")
	for _, tc := range []struct {
		name   string
		o      ManagerOptions
		errHas string
	}{
		{"plain HTTP on all interfaces", ManagerOptions{Listen: "0.0.0.0:0", Mode: "prod", JoinToken: longJoin}, "plain HTTP only on loopback"},
		{"plain HTTP on no host", ManagerOptions{Listen: ":0", Mode: "prod", JoinToken: longJoin}, "--tls-cert"},
		{"short join token", ManagerOptions{Listen: "127.0.0.1:0", Mode: "prod", JoinToken: "0123456789abcdef0123456789abcde"}, "at least 32 bytes"},
		{"certificate without key", ManagerOptions{Listen: "127.0.0.1:0", Mode: "dev", JoinToken: longJoin, TLS: pki.Files{Cert: tlsFiles.Cert}}, "--tls-key"},
		{"TLS on all interfaces", ManagerOptions{Listen: "0.0.0.0:0", Mode: "prod", JoinToken: longJoin, TLS: tlsFiles}, ""},
		{"plain HTTP on loopback", ManagerOptions{Listen: "127.0.0.1:0", Mode: "prod", JoinToken: longJoin}, ""},
	} {
		t.Run("manager/"+tc.name, func(t *testing.T) {
			_, err := startTestManager(t, tc.o)
			if tc.errHas == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("StartManager = %v; want an error naming %q", err, tc.errHas)
			}
		})
	}
	for _, tc := range []struct {
		name   string
		o      agent.Options
		errHas string
	}{
		{"plain HTTP on all interfaces", agent.Options{Bind: "0.0.0.0:0", Mode: "prod", Token: longJoin}, "plain HTTP on loopback only"},
		{"short join token", agent.Options{Bind: "127.0.0.1:0", Mode: "prod", Token: "short"}, "at least 32 bytes"},
		{"bad jail setting", agent.Options{Bind: "127.0.0.1:0", Mode: "dev", Token: longJoin, Jail: "maybe"}, "FC_JAIL must be on or off"},
	} {
		t.Run("agent/"+tc.name, func(t *testing.T) {
			o := tc.o
			dir, err := os.MkdirTemp("", "nxa") // short: VM sockets live below it
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(dir)
			o.Hollow, o.RunDir = true, filepath.Join(dir, "run")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r, err := agent.Start(ctx, o, slog.New(slog.DiscardHandler))
			if err == nil {
				cancel()
				r.Wait()
			}
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("agent.Start = %v; want an error naming %q", err, tc.errHas)
			}
		})
	}
}

// fleet is a TLS manager and a hollow agent with certificates of one CA.
type fleet struct {
	m        *Manager
	ca       *pkitest.CA
	mgrTLS   pki.Files
	agentTLS pki.Files
	ag       *agenttest.Agent
	client   *nexus.Client
	admin    string
}

func newTLSFleet(t *testing.T) *fleet {
	t.Helper()
	dir := t.TempDir()
	f := &fleet{ca: pkitest.NewCA(t, dir, "ca")}
	f.mgrTLS = f.ca.Issue("manager", "127.0.0.1")
	f.agentTLS = f.ca.Issue("hollow-1", "127.0.0.1")
	var err error
	f.m, err = startTestManager(t, ManagerOptions{Listen: "127.0.0.1:0", JoinToken: longJoin, TLS: f.mgrTLS,
		ReconcileInterval: time.Hour, HeartbeatTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(f.m.URL(), "https://") {
		t.Fatalf("manager URL %s; want https", f.m.URL())
	}
	if f.admin, _, err = Bootstrap(context.Background(), f.m.Store, "tls-test"); err != nil {
		t.Fatal(err)
	}
	f.ag = agenttest.Start(t, agenttest.Options{Manager: f.m.URL(), Name: "hollow-1", Token: longJoin, TLS: f.agentTLS})
	f.client = nexus.New(f.m.URL(), f.admin, nexus.WithHTTPClient(&http.Client{Transport: pkitest.Transport(t, pki.Files{CA: f.ca.CAFile()})}))
	f.waitReady(t)
	return f
}

func (f *fleet) waitReady(t *testing.T) apitypes.Host {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := f.client.Hosts(context.Background())
		if err == nil && len(l.Items) == 1 && l.Items[0].State == "ready" {
			return l.Items[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("the TLS agent did not become ready: %v %+v", err, l)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// register posts a registration to the manager over a transport of tlsf.
func (f *fleet) register(t *testing.T, tlsf pki.Files, name, addr string) (int, string, error) {
	t.Helper()
	b, _ := json.Marshal(apitypes.RegisterHostRequest{Name: name, Addr: addr, Version: "test"})
	req, _ := http.NewRequest(http.MethodPost, f.m.URL()+"/v1/hosts/register", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+longJoin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: pkitest.Transport(t, tlsf), Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var e apierr.Error
	_ = json.Unmarshal(raw, &e)
	return resp.StatusCode, e.Code, nil
}

// TestMutualTLS: manager and agent speak TLS with certificates of one CA
// and a VM runs through them. The manager refuses an agent without a
// certificate, with one of another CA, with one for another name, or at
// an http address; the agent refuses plain HTTP, clients without a
// certificate and certificates of another CA.
func TestMutualTLS(t *testing.T) {
	f := newTLSFleet(t)
	ctx := context.Background()
	if h := f.waitReady(t); !strings.HasPrefix(h.Addr, "https://") {
		t.Fatalf("host registered at %s; want https", h.Addr)
	}
	kernel := simtest.WriteKernel(t, t.TempDir())
	vm, err := f.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "tls-vm", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil || vm.State != "running" {
		t.Fatalf("create through TLS: %v %+v", err, vm)
	}

	other := pkitest.NewCA(t, t.TempDir(), "other")
	intruder := other.Issue("hollow-1", "127.0.0.1")
	intruder.CA = f.ca.CAFile() // it trusts the manager; the manager must not trust it
	good := f.agentTLS
	for _, tc := range []struct {
		name       string
		tlsf       pki.Files
		host, addr string
		status     int
		code       string
	}{
		{"no certificate", pki.Files{CA: f.ca.CAFile()}, "hollow-9", "https://127.0.0.1:1", 403, "agent_cert_required"},
		{"certificate of another CA", intruder, "hollow-1", "https://127.0.0.1:1", 0, ""},
		{"certificate for another name", good, "someone-else", "https://127.0.0.1:1", 403, "agent_cert_mismatch"},
		{"http address", good, "hollow-1", "http://127.0.0.1:1", 400, "invalid_request"},
	} {
		t.Run("manager refuses/"+tc.name, func(t *testing.T) {
			status, code, err := f.register(t, tc.tlsf, tc.host, tc.addr)
			if tc.status == 0 {
				if err == nil {
					t.Fatalf("registration with %s answered %d %s; want the handshake refused", tc.name, status, code)
				}
				return
			}
			if err != nil || status != tc.status || code != tc.code {
				t.Fatalf("registration: %d %s %v; want %d %s", status, code, err, tc.status, tc.code)
			}
		})
	}
	if l, _ := f.client.Hosts(ctx); len(l.Items) != 1 {
		t.Fatalf("hosts after the refused registrations: %+v", l.Items)
	}

	agentURL := "https://" + f.ag.Addr + "/agent/v1/health"
	health := func(tlsf pki.Files) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, agentURL, nil)
		req.Header.Set("Authorization", "Bearer "+longJoin)
		resp, err := (&http.Client{Transport: pkitest.Transport(t, tlsf), Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var h struct{ TLS, MutualTLS bool }
		_ = json.NewDecoder(resp.Body).Decode(&struct {
			TLS       *bool `json:"tls"`
			MutualTLS *bool `json:"mutual_tls"`
		}{&h.TLS, &h.MutualTLS})
		if resp.StatusCode == 200 && (!h.TLS || !h.MutualTLS) {
			t.Errorf("agent health says tls=%v mutual_tls=%v", h.TLS, h.MutualTLS)
		}
		return resp.StatusCode, nil
	}
	if code, err := health(f.mgrTLS); err != nil || code != 200 {
		t.Fatalf("the manager's certificate at the agent: %d %v", code, err)
	}
	if _, err := health(intruder); err == nil {
		t.Error("the agent accepted a client certificate of another CA")
	}
	if _, err := health(pki.Files{CA: f.ca.CAFile()}); err == nil {
		t.Error("the agent accepted a client without a certificate")
	}
	resp, err := http.Get("http://" + f.ag.Addr + "/agent/v1/health")
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "HTTPS") {
			t.Errorf("plain HTTP to the agent: %d %q; want refused", resp.StatusCode, b)
		}
	}
}

// TestCertificateRotation: certificates and then the CA itself rotate
// while a VM runs; manager and agent serve the new certificates from the
// next connection on, without a restart, and the fleet keeps working.
func TestCertificateRotation(t *testing.T) {
	f := newTLSFleet(t)
	ctx := context.Background()
	kernel := simtest.WriteKernel(t, t.TempDir())
	vm, err := f.client.CreateVM(ctx, apitypes.CreateVMRequest{Name: "rot-vm", VMConfig: apitypes.VMConfig{KernelPath: kernel}}, true)
	if err != nil {
		t.Fatal(err)
	}
	mgrAddr := strings.TrimPrefix(f.m.URL(), "https://")
	trust := pki.Files{CA: f.ca.CAFile()}
	serials := func() (string, string) {
		return pkitest.ServedSerial(t, mgrAddr, trust), pkitest.ServedSerial(t, f.ag.Addr, f.mgrTLS)
	}
	m0, a0 := serials()
	stillWorks := func(step string) {
		t.Helper()
		for _, action := range []string{"stop", "start"} {
			if err := f.client.VMAction(ctx, vm.ID, action); err != nil {
				t.Fatalf("%s: %s the VM: %v", step, action, err)
			}
		}
		got, err := f.client.GetVM(ctx, vm.ID)
		if err != nil || got.State != "running" {
			t.Fatalf("%s: vm %+v %v", step, got, err)
		}
	}
	waitServed := func(step string, want func(m, a string) bool) (string, string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			m, a := serials()
			if want(m, a) {
				return m, a
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: served serials %s / %s", step, m, a)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// 1. New certificates of the same CA, moved over the old files.
	f.ca.IssueIn(f.ca.Dir, "manager", "127.0.0.1")
	f.ca.IssueIn(f.ca.Dir, "hollow-1", "127.0.0.1")
	m1, a1 := waitServed("leaf rotation", func(m, a string) bool { return m != m0 && a != a0 })
	if m1 != pkitest.Serial(t, f.mgrTLS) || a1 != pkitest.Serial(t, f.agentTLS) {
		t.Fatalf("served %s / %s; the files hold %s / %s", m1, a1, pkitest.Serial(t, f.mgrTLS), pkitest.Serial(t, f.agentTLS))
	}
	stillWorks("after the leaf rotation")

	// 2. A new CA: both trusted during the change, then certificates of
	// the new one, then the old CA dropped.
	ca2 := pkitest.NewCA(t, t.TempDir(), "ca2")
	bundle := f.ca.CAFile() // what every side reads as its CA
	pkitest.Bundle(t, bundle, f.ca, ca2)
	time.Sleep(1100 * time.Millisecond) // the next look at the files
	ca2.IssueIn(f.ca.Dir, "manager", "127.0.0.1")
	ca2.IssueIn(f.ca.Dir, "hollow-1", "127.0.0.1")
	waitServed("CA rotation", func(m, a string) bool { return m != m1 && a != a1 })
	stillWorks("with certificates of the new CA")
	pkitest.Bundle(t, bundle, ca2)
	time.Sleep(1100 * time.Millisecond)
	stillWorks("with the old CA dropped")
	if h := f.waitReady(t); h.State != "ready" {
		t.Fatalf("host after rotation: %+v", h)
	}
	// A certificate of the dropped CA no longer gets in.
	old := f.ca.IssueIn(t.TempDir(), "hollow-1", "127.0.0.1")
	old.CA = bundle
	if _, _, err := f.register(t, old, "hollow-1", "https://127.0.0.1:1"); err == nil {
		t.Fatal("a certificate of the dropped CA was accepted")
	}
}
