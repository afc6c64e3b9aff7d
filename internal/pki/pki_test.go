package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCAIssue(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, err := CreateCA(dir, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := CreateCA(dir, now); !errors.Is(err, ErrExists) {
		t.Fatalf("second CreateCA: %v; want ErrExists (a CA is never overwritten)", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, CAKeyFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("CA key mode: %v %v; want 0600", fi.Mode(), err)
	}
	loaded, err := LoadCA(dir)
	if err != nil || !loaded.Cert.Equal(ca.Cert) {
		t.Fatalf("LoadCA: %v", err)
	}
	certPEM, keyPEM, err := loaded.Issue("host-1", []string{"10.0.0.5", "host-1.internal"}, now, 0)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "host-1" || strings.Join(leaf.DNSNames, ",") != "host-1,host-1.internal" ||
		len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != "10.0.0.5" {
		t.Fatalf("issued %v %v %v", leaf.Subject, leaf.DNSNames, leaf.IPAddresses)
	}
	if leaf.NotAfter.Sub(now) < CertValidity-2*time.Hour || len(leaf.ExtKeyUsage) != 2 {
		t.Fatalf("validity %s, usages %v", leaf.NotAfter.Sub(now), leaf.ExtKeyUsage)
	}
	if _, _, err := loaded.Issue("x", []string{"not a host!"}, now, 0); err == nil {
		t.Fatal("a SAN that is neither a host name nor an IP was accepted")
	}
}

type pkiEnv struct {
	dir     string
	ca, ca2 *CA
}

func newPKI(t *testing.T) *pkiEnv {
	t.Helper()
	dir := t.TempDir()
	ca, err := CreateCA(filepath.Join(dir, "ca"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := CreateCA(filepath.Join(dir, "other"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &pkiEnv{dir: dir, ca: ca, ca2: ca2}
}

func (e *pkiEnv) issue(t *testing.T, ca *CA, name string) Files {
	t.Helper()
	c, k, err := ca.Issue(name, []string{"127.0.0.1"}, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	cp, kp, err := WritePair(e.dir, name, c, k)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(e.dir, "ca", CACertFile)
	if ca == e.ca2 {
		caFile = filepath.Join(e.dir, "other", CACertFile)
	}
	return Files{Cert: cp, Key: kp, CA: caFile}
}

// TestMutualTLS: a server requiring client certificates of its CA takes a
// client of that CA and refuses one of another CA, one without a
// certificate, and plain HTTP; the client refuses a server of another CA.
func TestMutualTLS(t *testing.T) {
	e := newPKI(t)
	srvR, err := NewReloader(e.issue(t, e.ca, "server"), nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, strings.Join(PeerNames(r.TLS), ","))
	}))
	srv.TLS = srvR.ServerConfig(true)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are the point
	srv.StartTLS()
	defer srv.Close()

	get := func(f Files) (string, error) {
		r, err := NewReloader(f, nil)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{}
		r.ConfigureTransport(tr)
		hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := hc.Get(srv.URL)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), nil
	}
	if got, err := get(e.issue(t, e.ca, "client")); err != nil || got != "client,client" {
		t.Fatalf("client of the CA: %q, %v", got, err)
	}
	foreign := e.issue(t, e.ca2, "intruder")
	foreign.CA = filepath.Join(e.dir, "ca", CACertFile) // it trusts the server, but the server does not trust it
	if _, err := get(foreign); err == nil {
		t.Fatal("a client certificate of another CA was accepted")
	}
	if _, err := get(Files{CA: filepath.Join(e.dir, "ca", CACertFile)}); err == nil {
		t.Fatal("a client without a certificate was accepted")
	}
	mitm := e.issue(t, e.ca, "client2")
	mitm.CA = filepath.Join(e.dir, "other", CACertFile) // the server is not of the CA this client trusts
	if _, err := get(mitm); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a server of another CA: %v; want a certificate error", err)
	}
	// The right CA, but a certificate for another address.
	if c, k, err := e.ca.Issue("server", []string{"10.9.9.9"}, time.Now(), 0); err != nil {
		t.Fatal(err)
	} else if _, _, err := WritePair(e.dir, "server", c, k); err != nil {
		t.Fatal(err)
	}
	srvR.every = 0
	if _, err := get(e.issue(t, e.ca, "client3")); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Fatalf("a server whose certificate names another address: %v; want refused", err)
	}
	resp, err := http.Get("http://" + srv.Listener.Addr().String())
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "HTTPS") {
			t.Fatalf("plain HTTP: %d %q", resp.StatusCode, b)
		}
	}
}

// TestReloadRotation: new files moved into place are served from the next
// handshake on; files that do not load keep the previous pair.
func TestReloadRotation(t *testing.T) {
	e := newPKI(t)
	f := e.issue(t, e.ca, "server")
	r, err := NewReloader(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	r.every = 0
	first := r.Certificate().Leaf.SerialNumber
	c, k, err := e.ca.Issue("server", []string{"127.0.0.1"}, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := WritePair(e.dir, "server", c, k); err != nil {
		t.Fatal(err)
	}
	second := r.Certificate().Leaf.SerialNumber
	if second.Cmp(first) == 0 {
		t.Fatal("rotated certificate not picked up")
	}
	// A certificate whose key has not arrived yet: the previous pair stays.
	c3, _, _ := e.ca.Issue("server", nil, time.Now(), 0)
	if err := os.WriteFile(f.Cert, c3, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := r.Certificate().Leaf.SerialNumber; got.Cmp(second) != 0 {
		t.Fatalf("a mismatched pair replaced the working one")
	}
	// The CA bundle grows (CA rotation): the new CA is trusted at once.
	b1, _ := os.ReadFile(filepath.Join(e.dir, "ca", CACertFile))
	b2, _ := os.ReadFile(filepath.Join(e.dir, "other", CACertFile))
	if err := os.WriteFile(f.CA, append(b1, b2...), 0o644); err != nil {
		t.Fatal(err)
	}
	peer := e.issue(t, e.ca2, "peer")
	pr, _ := NewReloader(peer, nil)
	cs := tls.ConnectionState{PeerCertificates: []*x509.Certificate{pr.Certificate().Leaf}}
	if err := VerifyPeer(cs, r.Pool(), "", x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("a certificate of the CA added to the bundle: %v", err)
	}
}
