package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// DefaultTimeout bounds a call whose context has no deadline. Firecracker
// answers after the VMM finishes the action; only snapshot create/load of
// large guests takes long, and callers give those their own deadline.
const DefaultTimeout = 10 * time.Second

// APIError is a non-2xx answer from firecracker (or from a relay in front
// of it). FaultMessage is firecracker's text; Code is a relay's short error
// code when the answer came from Nexus rather than firecracker.
type APIError struct {
	Method       string
	Path         string
	StatusCode   int
	FaultMessage string
	Code         string
	Message      string // a relay's description of its own error
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = e.Message
	}
	if msg == "" {
		msg = e.Code
	}
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("firecracker %s %s: %d: %s", e.Method, e.Path, e.StatusCode, msg)
}

// IsAPIError returns the *APIError in err's chain, if any.
func IsAPIError(err error) (*APIError, bool) {
	var ae *APIError
	ok := errors.As(err, &ae)
	return ae, ok
}

// Client calls the Firecracker API. It is safe for concurrent use, but
// firecracker serves requests one at a time.
type Client struct {
	base    string // "http://localhost" for a socket, or a relay's URL prefix
	query   string // appended to every request (a relay's ?sock=…)
	hc      *http.Client
	header  http.Header
	timeout time.Duration
	hook    func(*http.Request)

	verMu sync.Mutex
	ver   *Version // the firecracker version, once known (compat.go)
}

// Option configures a Client.
type Option func(*Client)

// WithTimeout sets the deadline used when a call's context has none.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithHeader adds a header to every request (a relay's Authorization, say).
func WithHeader(k, v string) Option { return func(c *Client) { c.header.Set(k, v) } }

// WithRequestHook calls f on every request before it is sent (a relay
// client uses it to pass the caller's request id along).
func WithRequestHook(f func(*http.Request)) Option { return func(c *Client) { c.hook = f } }

// WithQuery appends a raw query string to every request.
func WithQuery(q url.Values) Option { return func(c *Client) { c.query = q.Encode() } }

// NewUnix returns a client that talks to the API socket at sockPath.
func NewUnix(sockPath string, opts ...Option) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sockPath)
		},
		// firecracker allows 10 API connections and serves one request at a time.
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     30 * time.Second,
	}
	return newClient("http://localhost", &http.Client{Transport: tr}, opts)
}

// NewHTTP returns a client that talks to a relay at baseURL (for example
// an agent's /agent/v1/vms/{id}/proxy) using hc.
func NewHTTP(baseURL string, hc *http.Client, opts ...Option) *Client {
	if hc == nil {
		hc = http.DefaultClient
	}
	return newClient(strings.TrimSuffix(baseURL, "/"), hc, opts)
}

func newClient(base string, hc *http.Client, opts []Option) *Client {
	c := &Client{base: base, hc: hc, header: http.Header{}, timeout: DefaultTimeout}
	for _, o := range opts {
		o(c)
	}
	return c
}

// CloseIdleConnections releases the client's idle connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// do sends one request. in is marshalled when non-nil; out is decoded when
// non-nil and the answer is 2xx.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if _, has := ctx.Deadline(); !has && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	u := c.base + path
	if c.query != "" {
		u += "?" + c.query
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	for k, vs := range c.header {
		req.Header[k] = vs
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.hook != nil {
		c.hook(req)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeError(method, path, resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// decodeError reads firecracker's {"fault_message"}, its HTTP-layer
// {"error"} and a Nexus relay's error contract alike.
func decodeError(method, path string, status int, raw []byte) error {
	ae := &APIError{Method: method, Path: path, StatusCode: status}
	var body struct {
		FaultMessage string          `json:"fault_message"`
		Error        json.RawMessage `json:"error"`
		Message      string          `json:"message"`
	}
	if json.Unmarshal(raw, &body) == nil {
		ae.FaultMessage = body.FaultMessage
		var s string
		if len(body.Error) > 0 && json.Unmarshal(body.Error, &s) == nil {
			if ae.FaultMessage == "" && strings.ContainsAny(s, " \n") {
				// firecracker's HTTP-layer parse error uses the "error" key.
				ae.FaultMessage = s
			} else {
				ae.Code = s
			}
		}
		if ae.FaultMessage == "" {
			// A relay's own error (agent unreachable, timeout): keep its words.
			ae.Message = body.Message
		}
	} else if msg, ok := microHTTPError(raw); ok {
		// firecracker's HTTP layer (micro_http) answered: bad request
		// line, header or size, in its unescaped format.
		ae.FaultMessage = msg
	} else if len(raw) > 0 {
		ae.FaultMessage = strings.TrimSpace(string(raw))
	}
	return ae
}

func (c *Client) get(ctx context.Context, path string, out any) error {
	return c.do(ctx, http.MethodGet, path, nil, out)
}
func (c *Client) put(ctx context.Context, path string, in any) error {
	return c.do(ctx, http.MethodPut, path, in, nil)
}
func (c *Client) patch(ctx context.Context, path string, in any) error {
	return c.do(ctx, http.MethodPatch, path, in, nil)
}

// DescribeInstance is GET /.
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var v InstanceInfo
	return v, c.get(ctx, "/", &v)
}

// Version is GET /version. The client remembers the answer for its
// feature checks.
func (c *Client) Version(ctx context.Context) (FirecrackerVersion, error) {
	var v FirecrackerVersion
	if err := c.get(ctx, "/version", &v); err != nil {
		return v, err
	}
	if parsed, ok := ParseVersion(v.FirecrackerVersion); ok {
		c.setVersion(parsed)
	}
	return v, nil
}

// GetVMConfig is GET /vm/config.
func (c *Client) GetVMConfig(ctx context.Context) (FullVMConfig, error) {
	var v FullVMConfig
	return v, c.get(ctx, "/vm/config", &v)
}

// GetMachineConfig is GET /machine-config.
func (c *Client) GetMachineConfig(ctx context.Context) (MachineConfig, error) {
	var v MachineConfig
	return v, c.get(ctx, "/machine-config", &v)
}

// PutMachineConfig is PUT /machine-config.
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfig) error {
	if err := c.require(ctx, hugePageNeeds(mc.HugePages)...); err != nil {
		return err
	}
	return c.put(ctx, "/machine-config", mc)
}

// PatchMachineConfig is PATCH /machine-config.
func (c *Client) PatchMachineConfig(ctx context.Context, p MachineConfigPatch) error {
	if p.HugePages != nil {
		if err := c.require(ctx, hugePageNeeds(*p.HugePages)...); err != nil {
			return err
		}
	}
	return c.patch(ctx, "/machine-config", p)
}

// PutBootSource is PUT /boot-source.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.put(ctx, "/boot-source", b)
}

// PutCPUConfig is PUT /cpu-config.
func (c *Client) PutCPUConfig(ctx context.Context, cc CPUConfig) error {
	return c.put(ctx, "/cpu-config", cc)
}

// PutDrive is PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	if d.Socket != "" {
		if err := c.require(ctx, needVhostUser); err != nil {
			return err
		}
	}
	return c.put(ctx, "/drives/"+url.PathEscape(d.DriveID), d)
}

// PatchDrive is PATCH /drives/{drive_id}.
func (c *Client) PatchDrive(ctx context.Context, d PartialDrive) error {
	return c.patch(ctx, "/drives/"+url.PathEscape(d.DriveID), d)
}

// DeleteDrive is DELETE /drives/{drive_id} (hot-unplug, v1.16+ with PCI).
func (c *Client) DeleteDrive(ctx context.Context, id string) error {
	if err := c.require(ctx, needUnplug); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/drives/"+url.PathEscape(id), nil, nil)
}

// PutNetworkInterface is PUT /network-interfaces/{iface_id}.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	if n.MTU != nil {
		if err := c.require(ctx, needMTU); err != nil {
			return err
		}
	}
	return c.put(ctx, "/network-interfaces/"+url.PathEscape(n.IfaceID), n)
}

// PatchNetworkInterface is PATCH /network-interfaces/{iface_id}.
func (c *Client) PatchNetworkInterface(ctx context.Context, n PartialNetworkInterface) error {
	return c.patch(ctx, "/network-interfaces/"+url.PathEscape(n.IfaceID), n)
}

// DeleteNetworkInterface is DELETE /network-interfaces/{iface_id}.
func (c *Client) DeleteNetworkInterface(ctx context.Context, id string) error {
	if err := c.require(ctx, needUnplug); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/network-interfaces/"+url.PathEscape(id), nil, nil)
}

// PutPmem is PUT /pmem/{id}.
func (c *Client) PutPmem(ctx context.Context, p Pmem) error {
	needs := []need{needPmem}
	if p.RateLimiter != nil {
		needs = append(needs, needPmemLimiter)
	}
	if err := c.require(ctx, needs...); err != nil {
		return err
	}
	return c.put(ctx, "/pmem/"+url.PathEscape(p.ID), p)
}

// PatchPmem is PATCH /pmem/{id}.
func (c *Client) PatchPmem(ctx context.Context, p PartialPmem) error {
	if err := c.require(ctx, needPmem, needPmemLimiter); err != nil {
		return err
	}
	return c.patch(ctx, "/pmem/"+url.PathEscape(p.ID), p)
}

// DeletePmem is DELETE /pmem/{id}.
func (c *Client) DeletePmem(ctx context.Context, id string) error {
	if err := c.require(ctx, needPmem, needUnplug); err != nil {
		return err
	}
	return c.do(ctx, http.MethodDelete, "/pmem/"+url.PathEscape(id), nil, nil)
}

// PutLogger is PUT /logger.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.put(ctx, "/logger", l)
}

// PutMetrics is PUT /metrics (once per process).
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	if m.EmitID != nil || len(m.Properties) > 0 {
		if err := c.require(ctx, needEmitID); err != nil {
			return err
		}
	}
	return c.put(ctx, "/metrics", m)
}

// Action is PUT /actions.
func (c *Client) Action(ctx context.Context, actionType string) error {
	return c.put(ctx, "/actions", InstanceActionInfo{ActionType: actionType})
}

// InstanceStart boots the configured microVM.
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.Action(ctx, ActionInstanceStart)
}

// FlushMetrics writes a metrics record now.
func (c *Client) FlushMetrics(ctx context.Context) error {
	return c.Action(ctx, ActionFlushMetrics)
}

// SendCtrlAltDel asks the guest to shut down (x86_64).
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.Action(ctx, ActionSendCtrlAltDel)
}

// PatchVM is PATCH /vm.
func (c *Client) PatchVM(ctx context.Context, state string) error {
	return c.patch(ctx, "/vm", VM{State: state})
}

// Pause pauses a running microVM.
func (c *Client) Pause(ctx context.Context) error { return c.PatchVM(ctx, VMStatePaused) }

// Resume resumes a paused microVM.
func (c *Client) Resume(ctx context.Context) error { return c.PatchVM(ctx, VMStateResumed) }

// CreateSnapshot is PUT /snapshot/create (the VM must be paused).
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.put(ctx, "/snapshot/create", p)
}

// LoadSnapshot is PUT /snapshot/load (fresh process only).
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	body, err := c.loadSnapshotBody(ctx, p)
	if err != nil {
		return err
	}
	return c.put(ctx, "/snapshot/load", body)
}

// GetBalloon is GET /balloon.
func (c *Client) GetBalloon(ctx context.Context) (Balloon, error) {
	var v Balloon
	return v, c.get(ctx, "/balloon", &v)
}

// PutBalloon is PUT /balloon.
func (c *Client) PutBalloon(ctx context.Context, b Balloon) error {
	if b.FreePageHinting != nil || b.FreePageReporting != nil {
		if err := c.require(ctx, needHinting); err != nil {
			return err
		}
	}
	return c.put(ctx, "/balloon", b)
}

// PatchBalloon is PATCH /balloon.
func (c *Client) PatchBalloon(ctx context.Context, b BalloonUpdate) error {
	return c.patch(ctx, "/balloon", b)
}

// GetBalloonStats is GET /balloon/statistics.
func (c *Client) GetBalloonStats(ctx context.Context) (BalloonStats, error) {
	var v BalloonStats
	return v, c.get(ctx, "/balloon/statistics", &v)
}

// PatchBalloonStats is PATCH /balloon/statistics.
func (c *Client) PatchBalloonStats(ctx context.Context, u BalloonStatsUpdate) error {
	return c.patch(ctx, "/balloon/statistics", u)
}

// StartBalloonHinting is PATCH /balloon/hinting/start.
func (c *Client) StartBalloonHinting(ctx context.Context, cmd BalloonStartCmd) error {
	if err := c.require(ctx, needHinting); err != nil {
		return err
	}
	return c.patch(ctx, "/balloon/hinting/start", cmd)
}

// GetBalloonHintingStatus is GET /balloon/hinting/status.
func (c *Client) GetBalloonHintingStatus(ctx context.Context) (BalloonHintingStatus, error) {
	var v BalloonHintingStatus
	if err := c.require(ctx, needHinting); err != nil {
		return v, err
	}
	return v, c.get(ctx, "/balloon/hinting/status", &v)
}

// StopBalloonHinting is PATCH /balloon/hinting/stop.
func (c *Client) StopBalloonHinting(ctx context.Context) error {
	if err := c.require(ctx, needHinting); err != nil {
		return err
	}
	return c.do(ctx, http.MethodPatch, "/balloon/hinting/stop", nil, nil)
}

// GetMMDS is GET /mmds; the data store is any JSON object.
func (c *Client) GetMMDS(ctx context.Context) (json.RawMessage, error) {
	var v json.RawMessage
	return v, c.get(ctx, "/mmds", &v)
}

// PutMMDS is PUT /mmds: replaces the data store.
func (c *Client) PutMMDS(ctx context.Context, data any) error {
	return c.put(ctx, "/mmds", data)
}

// PatchMMDS is PATCH /mmds: merges into the data store.
func (c *Client) PatchMMDS(ctx context.Context, data any) error {
	return c.patch(ctx, "/mmds", data)
}

// PutMMDSConfig is PUT /mmds/config.
func (c *Client) PutMMDSConfig(ctx context.Context, mc MmdsConfig) error {
	if mc.ImdsCompat != nil {
		if err := c.require(ctx, needImdsCompat); err != nil {
			return err
		}
	}
	return c.put(ctx, "/mmds/config", mc)
}

// PutVsock is PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.put(ctx, "/vsock", v)
}

// PutEntropy is PUT /entropy.
func (c *Client) PutEntropy(ctx context.Context, e EntropyDevice) error {
	return c.put(ctx, "/entropy", e)
}

// PutSerial is PUT /serial.
func (c *Client) PutSerial(ctx context.Context, s SerialDevice) error {
	needs := []need{needSerial}
	if s.RateLimiter != nil {
		needs = append(needs, needSerialLimiter)
	}
	if err := c.require(ctx, needs...); err != nil {
		return err
	}
	return c.put(ctx, "/serial", s)
}

// GetMemoryHotplug is GET /hotplug/memory.
func (c *Client) GetMemoryHotplug(ctx context.Context) (MemoryHotplugStatus, error) {
	var v MemoryHotplugStatus
	if err := c.require(ctx, needMemHotplug); err != nil {
		return v, err
	}
	return v, c.get(ctx, "/hotplug/memory", &v)
}

// PutMemoryHotplug is PUT /hotplug/memory.
func (c *Client) PutMemoryHotplug(ctx context.Context, m MemoryHotplugConfig) error {
	if err := c.require(ctx, needMemHotplug); err != nil {
		return err
	}
	return c.put(ctx, "/hotplug/memory", m)
}

// PatchMemoryHotplug is PATCH /hotplug/memory.
func (c *Client) PatchMemoryHotplug(ctx context.Context, u MemoryHotplugSizeUpdate) error {
	if err := c.require(ctx, needMemHotplug); err != nil {
		return err
	}
	return c.patch(ctx, "/hotplug/memory", u)
}

// Call is one API request, recorded to be sent later with others in one
// batch through a relay (the agent's proxy-batch).
type Call struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
}

// CallResult is how firecracker answered one call of a batch.
type CallResult struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body,omitempty"`
	// Ms is how long the call took on the host.
	Ms float64 `json:"ms"`
}

// Err is the error a client would have returned for the answer, nil for
// a 2xx.
func (r CallResult) Err(c Call) error {
	if r.Status >= 200 && r.Status <= 299 {
		return nil
	}
	return decodeError(c.Method, c.Path, r.Status, r.Body)
}

// Recorder collects the PUT and PATCH requests made through the client
// Record returns, instead of sending them: each answers 204 at once, so
// the typed methods (with their checks and encodings) build the calls.
// Other requests (the GET /version of a feature check) go through to the
// relay as usual.
type Recorder struct {
	mu    sync.Mutex
	calls []Call
}

// Record returns a client that records c's writes into a new Recorder.
func (c *Client) Record() (*Client, *Recorder) {
	rec := &Recorder{}
	base, _ := url.Parse(c.base)
	prefix := ""
	if base != nil {
		prefix = strings.TrimSuffix(base.Path, "/")
	}
	next := c.hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	cp := newClient(c.base, &http.Client{Transport: recordTransport{rec: rec, prefix: prefix, next: next}}, nil)
	cp.query, cp.header, cp.timeout, cp.hook = c.query, c.header, c.timeout, c.hook
	c.verMu.Lock()
	cp.ver = c.ver
	c.verMu.Unlock()
	return cp, rec
}

// Take returns the calls recorded since the last Take, in order.
func (r *Recorder) Take() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.calls
	r.calls = nil
	return out
}

type recordTransport struct {
	rec    *Recorder
	prefix string
	next   http.RoundTripper
}

func (t recordTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodPut && req.Method != http.MethodPatch {
		return t.next.RoundTrip(req)
	}
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	t.rec.mu.Lock()
	t.rec.calls = append(t.rec.calls, Call{Method: req.Method, Path: strings.TrimPrefix(req.URL.Path, t.prefix), Body: body})
	t.rec.mu.Unlock()
	return &http.Response{StatusCode: http.StatusNoContent, Status: "204 No Content", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: io.NopCloser(bytes.NewReader(nil)), Request: req}, nil
}
