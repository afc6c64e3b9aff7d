package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Files names a certificate, its key and the CA bundle peers are checked
// against (--tls-cert, --tls-key, --tls-ca). Any may be empty: no
// certificate means no TLS served (and none presented), no CA means peers
// are checked against the system's roots (servers) or not at all (clients).
type Files struct {
	Cert, Key, CA string
}

// Enabled reports whether a certificate is configured (TLS is served).
func (f Files) Enabled() bool { return f.Cert != "" || f.Key != "" }

// Validate refuses half a pair.
func (f Files) Validate() error {
	if (f.Cert == "") != (f.Key == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	return nil
}

// checkEvery bounds how often the files are looked at: a handshake costs
// at most one stat of each per second.
const checkEvery = time.Second

// Reloader holds the certificate and CA pool of Files, re-reading them
// when they change on disk (a rotation: new files moved into place), at
// the next handshake after the change. The pair and the CA bundle reload
// independently; a change that does not load (a certificate without its
// matching key yet) keeps the previous one, and the next check tries
// again.
type Reloader struct {
	files Files
	log   *slog.Logger
	every time.Duration

	mu      sync.Mutex
	checked time.Time
	pair    part[*tls.Certificate]
	ca      part[*x509.CertPool]
}

// part is one reloadable piece: what is in use, the stamp of the files it
// came from, and the stamp of files that failed to load (logged once).
type part[T any] struct {
	v      T
	stamp  []fileStamp
	failed []fileStamp
}

type fileStamp struct {
	dev, ino uint64
	size     int64
	mtime    time.Time
}

// NewReloader loads files; it fails when they do not load now.
func NewReloader(files Files, log *slog.Logger) (*Reloader, error) {
	if err := files.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Reloader{files: files, log: log, every: checkEvery, checked: time.Now()}
	var err error
	r.pair.stamp = stamps(files.Cert, files.Key)
	if r.pair.v, err = r.loadPair(); err != nil {
		return nil, err
	}
	r.ca.stamp = stamps(files.CA)
	if r.ca.v, err = r.loadCA(); err != nil {
		return nil, err
	}
	return r, nil
}

// Files is what the reloader reads.
func (r *Reloader) Files() Files { return r.files }

func stamps(paths ...string) []fileStamp {
	out := make([]fileStamp, len(paths))
	for i, p := range paths {
		if p == "" {
			continue
		}
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		out[i] = fileStamp{size: fi.Size(), mtime: fi.ModTime()}
		if s, ok := fi.Sys().(*syscall.Stat_t); ok {
			out[i].dev, out[i].ino = uint64(s.Dev), s.Ino
		}
	}
	return out
}

func (r *Reloader) loadPair() (*tls.Certificate, error) {
	if r.files.Cert == "" {
		return nil, nil
	}
	c, err := tls.LoadX509KeyPair(r.files.Cert, r.files.Key)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s / key %s: %w", r.files.Cert, r.files.Key, err)
	}
	return &c, nil
}

func (r *Reloader) loadCA() (*x509.CertPool, error) {
	if r.files.CA == "" {
		return nil, nil
	}
	certs, err := readCerts(r.files.CA)
	if err != nil {
		return nil, fmt.Errorf("tls CA: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// refresh reloads p from its files when their stamps changed.
func refresh[T any](r *Reloader, p *part[T], st []fileStamp, load func() (T, error), what string) bool {
	if slices.Equal(st, p.stamp) || slices.Equal(st, p.failed) {
		return false
	}
	v, err := load()
	if err != nil {
		p.failed = st
		r.log.Warn("rotated TLS files do not load; keeping the previous ones", "what", what, "err", err)
		return false
	}
	p.v, p.stamp, p.failed = v, st, nil
	return true
}

// current returns the pair and pool in use, reloading them first when
// their files changed.
func (r *Reloader) current() (*tls.Certificate, *x509.CertPool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.checked) < r.every {
		return r.pair.v, r.ca.v
	}
	r.checked = time.Now()
	if refresh(r, &r.pair, stamps(r.files.Cert, r.files.Key), r.loadPair, "certificate") {
		attrs := []any{"cert", r.files.Cert}
		if c := r.pair.v; c != nil && c.Leaf != nil {
			attrs = append(attrs, "serial", c.Leaf.SerialNumber.Text(16), "not_after", c.Leaf.NotAfter)
		}
		r.log.Info("TLS certificate reloaded", attrs...)
	}
	if refresh(r, &r.ca, stamps(r.files.CA), r.loadCA, "CA") {
		r.log.Info("TLS CA bundle reloaded", "ca", r.files.CA)
	}
	return r.pair.v, r.ca.v
}

// Certificate is the current certificate (nil when none is configured).
func (r *Reloader) Certificate() *tls.Certificate { c, _ := r.current(); return c }

// Pool is the current CA pool (nil when no CA is configured).
func (r *Reloader) Pool() *x509.CertPool { _, p := r.current(); return p }

// ServerConfig serves the reloader's certificate. With a CA, client
// certificates are checked against it: required by requireClient (an
// agent: only the manager may call it), otherwise checked when presented
// (a manager: agents present theirs, API users need none).
func (r *Reloader) ServerConfig(requireClient bool) *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS13}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := r.current()
		if cert == nil {
			return nil, errors.New("no TLS certificate configured")
		}
		c := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*cert}}
		if pool != nil {
			c.ClientCAs = pool
			c.ClientAuth = tls.VerifyClientCertIfGiven
			if requireClient {
				c.ClientAuth = tls.RequireAndVerifyClientCert
			}
		}
		return c, nil
	}
	return base
}

// ClientConfigFor is the TLS config of a client dialling host (a name or
// an IP address): it presents the reloader's certificate to servers that
// ask for one and, with a CA, accepts only a server whose certificate the
// CA signed for host. The CA pool is the current one at each handshake, so
// a rotated CA bundle takes effect without a restart.
func (r *Reloader) ClientConfigFor(host string) *tls.Config {
	c := &tls.Config{MinVersion: tls.VersionTLS13, ServerName: host}
	c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if cert := r.Certificate(); cert != nil {
			return cert, nil
		}
		return &tls.Certificate{}, nil // none: the server decides
	}
	if r.files.CA == "" {
		return c // the system's roots, the standard checks
	}
	// The standard verification runs against a fixed RootCAs; ours takes
	// the pool of the moment. VerifyConnection runs on every connection,
	// resumed ones included. The host is the one dialled, not the SNI name
	// (which is empty for an IP address).
	c.InsecureSkipVerify = true
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		return VerifyPeer(cs, r.Pool(), host, x509.ExtKeyUsageServerAuth)
	}
	return c
}

// ConfigureTransport makes tr dial https with ClientConfigFor the host of
// each connection.
func (r *Reloader) ConfigureTransport(tr *http.Transport) {
	tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		d := &tls.Dialer{Config: r.ClientConfigFor(host)}
		return d.DialContext(ctx, network, addr)
	}
}

// VerifyPeer checks a peer's certificate chain against pool for usage and,
// when name is not empty, for that host name or IP address.
func VerifyPeer(cs tls.ConnectionState, pool *x509.CertPool, name string, usage x509.ExtKeyUsage) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the peer presented no certificate")
	}
	if pool == nil {
		return errors.New("tls: no CA to check the peer against")
	}
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, DNSName: name, KeyUsages: []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return fmt.Errorf("tls: peer certificate: %w", err)
	}
	return nil
}

// PeerNames are the names a verified client certificate vouches for: its
// common name and its DNS names. Nil when the peer presented no verified
// certificate.
func PeerNames(cs *tls.ConnectionState) []string {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return nil
	}
	leaf := cs.VerifiedChains[0][0]
	return append([]string{leaf.Subject.CommonName}, leaf.DNSNames...)
}

// MinJoinTokenBytes is the shortest join token prod mode accepts: the
// token alone guards an API that starts processes as root.
const MinJoinTokenBytes = 32

// LoopbackOnly reports whether a listen address (host:port) accepts
// connections from this host only: the one place prod mode serves plain
// HTTP. An empty host (all interfaces) is not.
func LoopbackOnly(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
