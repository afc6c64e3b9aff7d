package agent

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// maxBatchCalls bounds one proxy batch: a boot is about ten calls.
const maxBatchCalls = 32

// proxyBatch runs a list of firecracker calls for one VM, in order, each
// through the proxy exactly as if it had come on its own (allow-list,
// canonical paths, body checks, timeouts), and stops at the first that is
// not answered with a 2xx. It saves the manager a round trip per call: a
// boot's configuration and start go in one request. The answer is always
// 200 with each call's result; a refusal is in its result, not the status.
func (a *Agent) proxyBatch(w http.ResponseWriter, r *http.Request, id string) {
	var req agentapi.BatchRequest
	if err := decode(r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if len(req.Calls) == 0 {
		a.fail(w, r, apierr.BadRequest("a batch has 1 to %d calls, not 0", maxBatchCalls))
		return
	}
	if err := checkCalls(req.Calls); err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, agentapi.BatchResponse{Results: a.proxy.runCalls(r, id, req.Calls, nil)})
}

// checkCalls refuses a list of calls that cannot be run (too many, a path
// that is not absolute) before anything is done.
func checkCalls(calls []firecracker.Call) error {
	if len(calls) > maxBatchCalls {
		return apierr.BadRequest("%d calls: one request carries at most %d", len(calls), maxBatchCalls)
	}
	for _, c := range calls {
		if c.Path == "" || c.Path[0] != '/' {
			return apierr.BadRequest("call path %q must start with /", c.Path)
		}
		if _, err := http.NewRequest(c.Method, "http://agent"+c.Path, nil); err != nil {
			return apierr.BadRequest("call %s %s: %v", c.Method, c.Path, err)
		}
	}
	return nil
}

// runCalls relays checked calls for VM id, in order, each through the
// proxy as if it had come on its own, and stops after the first that is
// not answered with a 2xx. With vc they go over that connection while it
// lasts (relayOn; a run of configuration calls in one write, pipeline),
// otherwise through the proxy's transport.
func (p *proxy) runCalls(r *http.Request, id string, calls []firecracker.Call, vc *vmmConn) []firecracker.CallResult {
	out := make([]firecracker.CallResult, 0, len(calls))
	for i := 0; i < len(calls); {
		res := p.pipeline(r, id, calls[i:], vc)
		if len(res) == 0 {
			res = []firecracker.CallResult{p.runCall(r, id, calls[i], vc)}
		}
		out = append(out, res...)
		if last := res[len(res)-1]; last.Status < 200 || last.Status > 299 {
			break
		}
		i += len(res)
	}
	return out
}

// runCall relays one call of runCalls.
func (p *proxy) runCall(r *http.Request, id string, c firecracker.Call, vc *vmmConn) firecracker.CallResult {
	sub, err := callRequest(r, id, c)
	if err != nil { // checkCalls made the same request
		return firecracker.CallResult{Status: http.StatusBadRequest}
	}
	rec := httptest.NewRecorder()
	start := time.Now()
	p.relay(rec, sub, id, vc)
	return callResult(rec, time.Since(start))
}

// callRequest is call c of a batch as a proxy request of its own, with
// the batch's headers.
func callRequest(r *http.Request, id string, c firecracker.Call) (*http.Request, error) {
	sub, err := http.NewRequestWithContext(r.Context(), c.Method, agentapi.Prefix+"/vms/"+id+"/proxy"+c.Path, bytes.NewReader(c.Body))
	if err != nil {
		return nil, err
	}
	sub.Header = r.Header.Clone()
	if len(c.Body) > 0 {
		sub.Header.Set("Content-Type", "application/json")
	}
	return sub, nil
}

// callResult is a call's answer, as the proxy wrote it to rec, taking d.
func callResult(rec *httptest.ResponseRecorder, d time.Duration) firecracker.CallResult {
	res := firecracker.CallResult{Status: rec.Code, Ms: float64(d.Microseconds()) / 1000}
	if b := bytes.TrimSpace(rec.Body.Bytes()); len(b) > 0 && json.Valid(b) {
		res.Body = b
	}
	return res
}
