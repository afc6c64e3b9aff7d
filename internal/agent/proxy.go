package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/hostlayout"
	"github.com/nexus-microvm/nexus/internal/httpmw"
)

// HeaderTimeout lets the manager give one relayed call (a large snapshot,
// say) a longer deadline than the default, up to maxProxyTimeout.
const HeaderTimeout = "X-Nexus-Timeout-Ms"

const maxProxyTimeout = 10 * time.Minute

// maxProxyBody bounds a relayed body; firecracker's own limit is 51200.
const maxProxyBody = 1 << 20

type ctxSockKey struct{}

// ctxAfterKey carries what to do once firecracker answered a relayed call
// with success (link a jailed VMM's new socket out).
type ctxAfterKey struct{}

// proxy relays allow-listed firecracker calls to a VM's API socket. One
// transport serves every VM: the URL host is a key for the socket path, so
// each socket gets its own small keep-alive pool.
type proxy struct {
	layout  hostlayout.Layout
	timeout time.Duration
	log     *slog.Logger
	rp      *httputil.ReverseProxy
	tr      *http.Transport

	// readRoots are where files firecracker reads (kernels, drives,
	// snapshot sources) may live outside the run dir; nil means anywhere
	// (dev mode: the manager lets only admins name raw paths).
	readRoots []string
	imagesDir string
	// jailOf returns how the VM's VMM is confined (nil: not jailed).
	jailOf func(vmID string) *vmm.JailInfo

	mu    sync.Mutex
	socks map[string]string // host key → socket path
}

func newProxy(layout hostlayout.Layout, timeout time.Duration, log *slog.Logger) *proxy {
	p := &proxy{layout: layout, timeout: timeout, log: log, socks: map[string]string{},
		jailOf: func(string) *vmm.JailInfo { return nil }}
	p.tr = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			host, _, _ := net.SplitHostPort(addr)
			p.mu.Lock()
			sock, ok := p.socks[host]
			p.mu.Unlock()
			if !ok {
				return nil, errors.New("unknown socket key")
			}
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		// firecracker allows 10 API connections and serves them one by one.
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      func(*httputil.ProxyRequest) {}, // done in serve
		Transport:    p.tr,
		ErrorHandler: p.errorHandler,
		ModifyResponse: func(resp *http.Response) error {
			httpmw.SetUpstreamStatus(resp.Request.Context(), resp.StatusCode)
			if after, _ := resp.Request.Context().Value(ctxAfterKey{}).([]func() error); resp.StatusCode/100 == 2 {
				for _, f := range after {
					if err := f(); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	return p
}

// forget drops a stopped VM's idle connections.
func (p *proxy) forget(vmID string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	prefix := p.layout.SockDir(vmID) + string(filepath.Separator)
	for k, s := range p.socks {
		if strings.HasPrefix(s, prefix) {
			delete(p.socks, k)
		}
	}
	p.tr.CloseIdleConnections()
}

func (p *proxy) key(sock string) string {
	sum := sha256.Sum256([]byte(sock))
	k := hex.EncodeToString(sum[:10])
	p.mu.Lock()
	if len(p.socks) >= 4096 {
		// Bound the map: forget every key (in-flight requests keep their
		// dialled connections; idle ones are closed and redialled).
		p.socks = map[string]string{}
		p.tr.CloseIdleConnections()
	}
	p.socks[k] = sock
	p.mu.Unlock()
	return k
}

func (p *proxy) serve(w http.ResponseWriter, r *http.Request, id string) { p.relay(w, r, id, nil) }

// relay answers one call for VM id: checked (prepare), then sent over vc,
// the connection a spawn found the VM's own socket up with, when there is
// one and the call is for that socket (relayOn), else through the
// transport.
func (p *proxy) relay(w http.ResponseWriter, r *http.Request, id string, vc *vmmConn) {
	out, cancel, err := p.prepare(r, id)
	if err != nil {
		e := apierr.Write(w, httpmw.RequestID(r.Context()), err)
		httpmw.SetErrorCode(r.Context(), e.Code)
		return
	}
	defer cancel()
	if sock, _ := out.Context().Value(ctxSockKey{}).(string); vc == nil || sock != p.layout.SockPath(id) || !p.relayOn(vc, w, out) {
		p.rp.ServeHTTP(w, out)
	}
}

// prepare checks a call for VM id (allow-list, canonical path, socket,
// body) and makes what a jailed VMM needs of it. It returns the request
// to send to firecracker, whose context carries the call's deadline (cancel
// releases it), or why the call is refused.
func (p *proxy) prepare(r *http.Request, id string) (*http.Request, context.CancelFunc, error) {
	fail := func(err error) (*http.Request, context.CancelFunc, error) { return nil, nil, err }
	fcPath := "/"
	if i := strings.Index(r.URL.Path, "/proxy/"); i >= 0 {
		fcPath = r.URL.Path[i+len("/proxy"):]
	}
	if path.Clean(fcPath) != fcPath && fcPath != "/" {
		return fail(apierr.Forbidden("firecracker path %q is not in canonical form", fcPath))
	}
	ep, pathID, ok := firecracker.Lookup(r.Method, fcPath)
	if !ok {
		return fail(apierr.Newf(http.StatusForbidden, "endpoint_not_allowed", "%s %s is not a firecracker endpoint the agent relays", r.Method, fcPath))
	}
	sock, err := p.socket(id, r.URL.Query().Get("sock"))
	if err != nil {
		return fail(err)
	}
	var body []byte
	if r.Body != nil && r.Body != http.NoBody {
		body, err = io.ReadAll(io.LimitReader(r.Body, maxProxyBody+1))
		if err != nil {
			return fail(apierr.BadRequest("read body: %v", err))
		}
		if len(body) > maxProxyBody {
			return fail(apierr.Newf(http.StatusRequestEntityTooLarge, "too_large", "body larger than %d bytes", maxProxyBody))
		}
	}
	files, err := p.checkBody(id, ep, pathID, body)
	if err != nil {
		return fail(err)
	}
	// A jailed VMM sees only its chroot: the files the body names are
	// linked in at the same paths, and sockets it makes are linked out
	// once firecracker has answered.
	var after []func() error
	if jl := p.jailOf(id); jl != nil && len(files) > 0 {
		if after, err = p.expose(r.Context(), id, jl, files); err != nil {
			return fail(err)
		}
	}

	timeout := p.timeout
	if ms, err := strconv.Atoi(r.Header.Get(HeaderTimeout)); err == nil && ms > 0 {
		timeout = min(time.Duration(ms)*time.Millisecond, maxProxyTimeout)
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	ctx = context.WithValue(ctx, ctxSockKey{}, sock)
	if len(after) > 0 {
		ctx = context.WithValue(ctx, ctxAfterKey{}, after)
	}

	out := r.Clone(ctx)
	out.URL.Scheme = "http"
	out.URL.Host = p.key(sock) + ":80"
	out.URL.Path = fcPath
	out.URL.RawPath = ""
	out.URL.RawQuery = "" // ?sock= is ours, not firecracker's
	out.Host = "localhost"
	out.RequestURI = ""
	out.GetBody = func() (io.ReadCloser, error) {
		if len(body) == 0 {
			return http.NoBody, nil
		}
		return io.NopCloser(bytes.NewReader(body)), nil
	}
	out.Body, _ = out.GetBody()
	out.ContentLength = int64(len(body))
	// Only what firecracker needs goes through; our credentials never do.
	hdr := http.Header{}
	for _, k := range []string{"Content-Type", "Accept"} {
		if v := r.Header.Get(k); v != "" {
			hdr.Set(k, v)
		}
	}
	out.Header = hdr
	return out, cancel, nil
}

// socket resolves the socket to relay to: the VM's own by default, or
// ?sock=, which must resolve (symlinks followed) inside the VM's sock dir.
func (p *proxy) socket(id, q string) (string, error) {
	dir := p.layout.SockDir(id)
	if q == "" {
		return p.layout.SockPath(id), nil
	}
	cand := q
	if !filepath.IsAbs(cand) {
		cand = filepath.Join(dir, cand)
	}
	cand = filepath.Clean(cand)
	denied := apierr.Forbidden("sock %q is outside this VM's socket directory", q).
		WithSuggestion("omit ?sock= to use the VM's own socket")
	resolved, err := filepath.EvalSymlinks(cand)
	if err != nil {
		// Missing: judge the lexical path; a dead socket is a 502 below.
		if !within(dir, cand) {
			return "", denied
		}
		return cand, nil
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		realDir = dir
	}
	if !within(realDir, resolved) {
		return "", denied
	}
	return resolved, nil
}

// within reports whether p lies strictly inside dir (both clean, absolute).
func within(dir, p string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

func (p *proxy) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	var e *apierr.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		e = apierr.Newf(http.StatusGatewayTimeout, "upstream_timeout", "firecracker did not answer %s %s in time", r.Method, r.URL.Path).
			WithSuggestion("the VMM may be hung or busy; retry with a longer " + HeaderTimeout + " or restart the VM")
	case errors.Is(err, context.Canceled):
		e = apierr.New(499, "canceled", "the caller went away")
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, os.ErrNotExist):
		e = apierr.Newf(http.StatusBadGateway, "vmm_unreachable", "no firecracker is listening on the VM's API socket").
			WithSuggestion("spawn the VM first (its VMM is not running)")
	default:
		e = apierr.Newf(http.StatusBadGateway, "vmm_unreachable", "relay to firecracker failed: %v", err)
	}
	sock, _ := r.Context().Value(ctxSockKey{}).(string)
	p.log.Warn("proxy to firecracker failed", "request_id", httpmw.RequestID(r.Context()), "sock", sock, "err", err)
	apierr.Write(w, httpmw.RequestID(r.Context()), e)
	httpmw.SetErrorCode(r.Context(), e.Code)
}

// pathRule says which JSON fields of a relayed body name host files, and
// whether firecracker writes them (must stay in the VM's run dir) or reads
// them (must lie under the read roots).
type pathRule struct {
	field []string // JSON path, e.g. {"mem_backend","backend_path"}
	write bool
	// kind says how a jailed VMM gets the file (jailfs.go).
	kind fileKind
}

// fileKind is how a file named in a body reaches a jailed VMM.
type fileKind int

const (
	fileRead      fileKind = iota // a file it opens: linked into the jail
	fileWrite                     // a file it writes: created if missing, its own, linked in
	fileSnapshot                  // a snapshot file it writes, that other VMs read to restore
	socketIn                      // a socket it connects to: linked in
	socketOut                     // a socket it creates: linked out to the host path
	fileReadWrite                 // a writable drive: must be its own file
)

var bodyPaths = map[string][]pathRule{
	"PUT /boot-source":             {{field: []string{"kernel_image_path"}}, {field: []string{"initrd_path"}}},
	"PUT /drives/{id}":             {{field: []string{"path_on_host"}}, {field: []string{"socket"}, write: true, kind: socketIn}},
	"PATCH /drives/{id}":           {{field: []string{"path_on_host"}}},
	"PUT /pmem/{id}":               {{field: []string{"path_on_host"}}},
	"PUT /logger":                  {{field: []string{"log_path"}, write: true, kind: fileWrite}},
	"PUT /metrics":                 {{field: []string{"metrics_path"}, write: true, kind: fileWrite}},
	"PUT /snapshot/create":         {{field: []string{"snapshot_path"}, write: true, kind: fileSnapshot}, {field: []string{"mem_file_path"}, write: true, kind: fileSnapshot}},
	"PUT /snapshot/load":           {{field: []string{"snapshot_path"}}, {field: []string{"mem_file_path"}}, {field: []string{"mem_backend", "backend_path"}}, {field: []string{"vsock_override", "uds_path"}, write: true, kind: socketOut}},
	"PUT /vsock":                   {{field: []string{"uds_path"}, write: true, kind: socketOut}},
	"PUT /serial":                  {{field: []string{"serial_out_path"}, write: true, kind: fileWrite}},
	"PUT /network-interfaces/{id}": nil,
}

// bodyFile is a host file a relayed body names, once checked.
type bodyFile struct {
	field string // JSON field, for errors
	given string // as the body says it
	host  string // canonical host path
	kind  fileKind
}

// checkBody enforces the host-path rules on a relayed body: no request may
// make a root-owned VMM write outside its VM's run dir, read outside the
// allowed roots, or take another VM's TAP. It fails closed: a body of
// these endpoints that is not exactly one JSON object (an array, trailing
// data, a duplicate key at any depth) or whose path and TAP fields have
// another type than firecracker's (strings, an object, an array of
// objects) is refused with 400 before firecracker sees it, so what the
// agent judged is what firecracker reads. It returns the files the body
// names.
func (p *proxy) checkBody(id string, ep firecracker.Endpoint, _ string, body []byte) ([]bodyFile, error) {
	key := ep.Method + " " + ep.Path
	rules, hasRules := bodyPaths[key]
	taps := key == "PUT /network-interfaces/{id}" || key == "PUT /snapshot/load"
	if (!hasRules && !taps) || len(body) == 0 {
		return nil, nil
	}
	doc, err := strictObject(body)
	if err != nil {
		return nil, apierr.BadRequest("body of %s: %v", key, err).
			WithSuggestion("send one JSON object, each key once, as firecracker's API describes")
	}
	if err := checkFieldTypes(doc, rules, taps); err != nil {
		return nil, apierr.BadRequest("body of %s: %v", key, err)
	}
	vmDir := p.layout.VMDir(id)
	var files []bodyFile
	for _, rule := range rules {
		v, ok := lookupString(doc, rule.field)
		if !ok || v == "" {
			continue
		}
		abs := v
		if !filepath.IsAbs(abs) {
			abs = filepath.Join(vmDir, abs) // firecracker runs in the VM dir
		}
		abs = canonical(filepath.Clean(abs))
		name := strings.Join(rule.field, ".")
		files = append(files, bodyFile{field: name, given: v, host: abs, kind: rule.kind})
		if rule.write {
			if err := p.checkWrite(id, name, v, abs); err != nil {
				return nil, err
			}
			continue
		}
		if err := p.checkRead(id, name, v, abs); err != nil {
			return nil, err
		}
	}
	if taps {
		want := hostlayout.TapName(id)
		devs := []string{}
		if s, ok := lookupString(doc, []string{"host_dev_name"}); ok {
			devs = append(devs, s)
		}
		if ovs, ok := doc["network_overrides"].([]any); ok {
			for _, o := range ovs {
				if m, ok := o.(map[string]any); ok {
					if s, ok := m["host_dev_name"].(string); ok {
						devs = append(devs, s)
					}
				}
			}
		}
		for _, d := range devs {
			if d != want {
				return nil, apierr.Forbidden("host_dev_name %q is not this VM's TAP (%s)", d, want).
					WithSuggestion("create the VM's TAP with POST " + agentapi.Prefix + "/vms/" + id + "/tap and use its name")
			}
		}
	}
	// A drive is writable unless it says otherwise (firecracker's default).
	if ro, _ := doc["is_read_only"].(bool); !ro && key == "PUT /drives/{id}" {
		for i := range files {
			if files[i].field == "path_on_host" {
				files[i].kind = fileReadWrite
			}
		}
	}
	return files, nil
}

// writeDirs are the only places in a VM's run dir firecracker may write
// files into (logs, snapshots, vsock sockets); metrics.json is the one
// file beside them. The socket, the saved handle and the disks are not
// writable through the API.
var writeDirs = []string{"logs", "snapshots", "vsock"}

func (p *proxy) checkWrite(id, name, given, abs string) error {
	vmDir := canonical(p.layout.VMDir(id))
	if abs == canonical(p.layout.MetricsPath(id)) {
		return nil
	}
	for _, d := range writeDirs {
		if within(filepath.Join(vmDir, d), abs) {
			return nil
		}
	}
	return apierr.Forbidden("%s %q: firecracker may write only under logs/, snapshots/ or vsock/ of the VM's run dir %s (or its metrics.json)", name, given, p.layout.VMDir(id))
}

// checkRead judges a file firecracker will open for reading (and, for a
// writable drive, writing): it must be a regular file, never a device;
// inside the run dir only the VM's own files and snapshots qualify (not
// the agent's token, not another VM's disks or sockets); in prod mode it
// must also lie under the images dir or the run dir.
func (p *proxy) checkRead(id, name, given, abs string) error {
	if fi, err := os.Stat(abs); err == nil && !fi.Mode().IsRegular() {
		return apierr.Forbidden("%s %q is not a regular file (devices, directories and sockets are never attached)", name, given)
	}
	runDir := canonical(p.layout.RunDir)
	if within(runDir, abs) {
		if within(canonical(p.layout.VMDir(id)), abs) || isSnapshotFile(canonical(p.layout.VMsDir()), abs) {
			return nil
		}
		if p.imagesDir != "" && within(canonical(p.imagesDir), abs) {
			return nil
		}
		return apierr.Forbidden("%s %q belongs to the agent or another VM", name, given)
	}
	if p.readRoots == nil {
		return nil
	}
	for _, root := range p.readRoots {
		if within(canonical(root), abs) {
			return nil
		}
	}
	return apierr.Forbidden("%s %q is outside the allowed image and run directories", name, given).
		WithSuggestion("register the file as an image under FC_IMAGES_DIR")
}

// isSnapshotFile reports whether abs lies in some VM's snapshots dir:
// vms/<vm-id>/snapshots/… (a restore reads another VM's snapshot).
func isSnapshotFile(vmsDir, abs string) bool {
	rel, err := filepath.Rel(vmsDir, abs)
	if err != nil {
		return false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	return len(parts) >= 4 && hostlayout.ValidVMID(parts[0]) && parts[1] == "snapshots"
}

// maxBodyDepth bounds the nesting of a relayed body (firecracker's are
// three deep at most).
const maxBodyDepth = 32

// strictObject decodes body as exactly one JSON object: no trailing data,
// no key twice in any object (after unescaping, as firecracker's parser
// sees it), at most maxBodyDepth deep.
func strictObject(body []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	v, err := strictValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	doc, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("a JSON object is expected, not %s", jsonKind(v))
	}
	return doc, nil
}

func strictValue(dec *json.Decoder, depth int) (any, error) {
	if depth > maxBodyDepth {
		return nil, fmt.Errorf("nested deeper than %d", maxBodyDepth)
	}
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	switch tok {
	case json.Delim('{'):
		m := map[string]any{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("not valid JSON: %w", err)
			}
			k, _ := kt.(string)
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("key %q appears twice", k)
			}
			if m[k], err = strictValue(dec, depth+1); err != nil {
				return nil, err
			}
		}
		_, err := dec.Token() // '}'
		return m, err
	case json.Delim('['):
		a := []any{}
		for dec.More() {
			v, err := strictValue(dec, depth+1)
			if err != nil {
				return nil, err
			}
			a = append(a, v)
		}
		_, err := dec.Token() // ']'
		return a, err
	}
	return tok, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}

// checkFieldTypes refuses a body whose path or TAP fields are there with
// another type than firecracker's: the agent would not see them, and a
// parser that reads them differently must not get the chance.
func checkFieldTypes(doc map[string]any, rules []pathRule, taps bool) error {
	for _, r := range rules {
		var cur any = doc
		for i, f := range r.field {
			m, ok := cur.(map[string]any)
			if !ok {
				return fmt.Errorf("%s must be an object, not %s", strings.Join(r.field[:i], "."), jsonKind(cur))
			}
			if cur, ok = m[f]; !ok || cur == nil {
				break
			}
			if i == len(r.field)-1 {
				if _, ok := cur.(string); !ok {
					return fmt.Errorf("%s must be a string, not %s", strings.Join(r.field, "."), jsonKind(cur))
				}
			}
		}
	}
	if !taps {
		return nil
	}
	if v, ok := doc["host_dev_name"]; ok && v != nil {
		if _, ok := v.(string); !ok {
			return fmt.Errorf("host_dev_name must be a string, not %s", jsonKind(v))
		}
	}
	if v, ok := doc["network_overrides"]; ok && v != nil {
		ovs, ok := v.([]any)
		if !ok {
			return fmt.Errorf("network_overrides must be an array, not %s", jsonKind(v))
		}
		for i, o := range ovs {
			m, ok := o.(map[string]any)
			if !ok {
				return fmt.Errorf("network_overrides[%d] must be an object, not %s", i, jsonKind(o))
			}
			if d, ok := m["host_dev_name"]; ok && d != nil {
				if _, ok := d.(string); !ok {
					return fmt.Errorf("network_overrides[%d].host_dev_name must be a string, not %s", i, jsonKind(d))
				}
			}
		}
	}
	return nil
}

func lookupString(doc map[string]any, field []string) (string, bool) {
	var cur any = doc
	for _, f := range field {
		m, ok := cur.(map[string]any)
		if !ok {
			return "", false
		}
		cur = m[f]
	}
	s, ok := cur.(string)
	return s, ok
}

// canonical resolves symlinks in the longest existing prefix of p, so a
// file that does not exist yet is judged by where its directory really is.
func canonical(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	dir, base := filepath.Split(p)
	dir = filepath.Clean(dir)
	if dir == p || dir == "" {
		return p
	}
	return filepath.Join(canonical(dir), base)
}
