package agent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/firecracker"
	"github.com/nexus-microvm/nexus/internal/httpmw"
)

// vmmConn is one connection to a VMM's API socket, used by one goroutine
// at a time: the one that found a new VMM's socket up carries the calls
// its spawn brought (SpawnRequest.calls). Sent on it, in the caller's
// goroutine, a call needs no dial and none of the transport's hand-offs
// between goroutines: 0.64 against 1.04 ms for six calls, measured on a
// 2-core paravirtualised host, where each hand-off is a futex wake.
type vmmConn struct {
	c  net.Conn
	br *bufio.Reader
}

func newVMMConn(c net.Conn) *vmmConn {
	return &vmmConn{c: c, br: bufio.NewReaderSize(c, 4096)}
}

func (vc *vmmConn) close() {
	if vc != nil && vc.c != nil {
		vc.c.Close()
		vc.c = nil
	}
}

// hopHeaders are not relayed back from firecracker (RFC 9110, 7.6.1), as
// httputil.ReverseProxy leaves them out.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// relayOn sends out, a call prepare checked, over vc and writes
// firecracker's answer to w as the proxy's transport path would: the same
// status, body and headers, the same errors, and what the call must do
// after a success (ModifyResponse). It returns false, having written
// nothing to w, when the call could not be sent: the caller then sends it
// through the transport. vc is closed after any failure.
func (p *proxy) relayOn(vc *vmmConn, w http.ResponseWriter, out *http.Request) bool {
	if vc == nil || vc.c == nil {
		return false
	}
	ctx := out.Context()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(p.timeout)
	}
	_ = vc.c.SetDeadline(deadline)
	// A caller that goes away ends the wait at once, as it would the
	// transport's.
	defer hookCancel(ctx, vc)()
	if err := out.Write(vc.c); err != nil {
		// Not sent whole: firecracker acts on no partial request.
		vc.close()
		if out.Body, err = out.GetBody(); err != nil {
			p.errorHandler(w, out, err)
			return true
		}
		return false
	}
	resp, err := http.ReadResponse(vc.br, out)
	if err != nil {
		vc.close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		p.errorHandler(w, out, err)
		return true
	}
	p.answer(w, out, resp, vc)
	return true
}

// answer writes firecracker's answer resp to out, read from vc, to w as
// the transport path would, and closes vc when the answer leaves it
// unusable (unread bytes, Connection: close, a failure).
func (p *proxy) answer(w http.ResponseWriter, out *http.Request, resp *http.Response, vc *vmmConn) {
	defer resp.Body.Close()
	if err := p.rp.ModifyResponse(resp); err != nil {
		vc.close()
		p.errorHandler(w, out, err)
		return
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	for _, k := range hopHeaders {
		w.Header().Del(k)
	}
	w.WriteHeader(resp.StatusCode)
	_, err := io.Copy(w, io.LimitReader(resp.Body, maxProxyBody))
	// An answer past the bound (firecracker's are small) leaves the rest
	// unread, where the next answer would start: the connection goes.
	var more [1]byte
	if n, _ := resp.Body.Read(more[:]); err != nil || resp.Close || n > 0 {
		vc.close()
	}
}

// hookCancel makes a caller's leaving end a wait on vc at once (a read
// or write past its deadline). The hook holds its own copy of the
// connection (close clears vc's), and once it has started, the returned
// release waits for it: a deadline it set late must not land on the next
// call.
func hookCancel(ctx context.Context, vc *vmmConn) (release func()) {
	c, hooked := vc.c, make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.SetDeadline(time.Now())
		close(hooked)
	})
	return func() {
		if !stop() {
			<-hooked
		}
	}
}

// pipelined reports whether a carried call may go out before the answer
// to the one before it: the configuration of a VMM that has not started.
// Only a new VMM's calls are carried on its spawn's connection, and a boot
// that fails anywhere discards its VMM, so a call that still ran after an
// earlier one failed changes nothing that stays.
func pipelined(c firecracker.Call) bool {
	// A body past firecracker's limit (51,200 bytes) is a parse error, on
	// which micro_http drops the requests it holds unanswered and answers
	// once: that answer would be read as an earlier call's.
	if c.Method != http.MethodPut || len(c.Body) > maxPipelinedBody {
		return false
	}
	switch c.Path {
	case "/logger", "/metrics", "/machine-config", "/boot-source":
		return true
	}
	return strings.HasPrefix(c.Path, "/drives/") || strings.HasPrefix(c.Path, "/network-interfaces/")
}

// maxPipelinedBody bounds the body of a call pipeline sends: firecracker's
// configuration bodies are a few hundred bytes.
const maxPipelinedBody = 16 << 10

// pipeline sends the run of configuration calls (pipelined) that calls
// starts with over vc in one write, each checked as relayOn's are, and
// reads their answers in order: one wait for the VMM instead of one per
// call. Firecracker (micro_http) parses the requests that follow one
// another on a connection and answers them in turn. It returns the
// results of the calls it handled: up to and including the first refused
// or failed one, or every one of the run; none, having done nothing, when
// fewer than two calls qualify (the caller sends them one by one), or the
// VM is jailed (the checks link files into its chroot). A call's time is
// from the answer before it (the write, for the first) to its own.
func (p *proxy) pipeline(r *http.Request, id string, calls []firecracker.Call, vc *vmmConn) []firecracker.CallResult {
	if vc == nil || vc.c == nil || p.jailOf(id) != nil {
		return nil
	}
	if len(calls) < 2 || !pipelined(calls[0]) || !pipelined(calls[1]) {
		return nil // nothing checked yet: runCall checks it once
	}
	var outs []*http.Request
	var refusal error // of the call after the run
	for _, c := range calls {
		if !pipelined(c) {
			break
		}
		sub, err := callRequest(r, id, c)
		if err != nil {
			break // runCall answers it
		}
		out, cancel, err := p.prepare(sub, id)
		if err != nil {
			refusal = err
			break
		}
		defer cancel()
		if sock, _ := out.Context().Value(ctxSockKey{}).(string); sock != p.layout.SockPath(id) {
			break // another socket: runCall sends it through the transport
		}
		outs = append(outs, out)
	}
	if len(outs) < 2 {
		return nil
	}
	// One deadline for the run (its calls were prepared together, each
	// with one), set before the hook that ends it when the caller leaves.
	var deadline time.Time
	for _, out := range outs {
		if d, _ := out.Context().Deadline(); d.After(deadline) { // prepare set one
			deadline = d
		}
	}
	_ = vc.c.SetDeadline(deadline)
	ctx := r.Context()
	defer hookCancel(ctx, vc)()
	results := make([]firecracker.CallResult, 0, len(outs)+1)
	fail := func(out *http.Request, err error, d time.Duration) []firecracker.CallResult {
		vc.close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		rec := httptest.NewRecorder()
		p.errorHandler(rec, out, err)
		return append(results, callResult(rec, d))
	}
	start := time.Now()
	bw := bufio.NewWriterSize(vc.c, 4096)
	for _, out := range outs {
		if err := out.Write(bw); err != nil {
			return fail(outs[0], err, time.Since(start))
		}
	}
	if err := bw.Flush(); err != nil {
		// Maybe partly sent: the first call fails, and with it the boot.
		return fail(outs[0], err, time.Since(start))
	}
	prev := start
	for i, out := range outs {
		if vc.c == nil {
			// The connection ended after an answer (Connection: close):
			// whether firecracker read the rest is unknown.
			return fail(out, errors.New("firecracker closed the connection before answering"), 0)
		}
		resp, err := http.ReadResponse(vc.br, out)
		if err != nil {
			return fail(out, err, time.Since(prev))
		}
		rec := httptest.NewRecorder()
		p.answer(rec, out, resp, vc)
		results = append(results, callResult(rec, time.Since(prev)))
		prev = time.Now()
		if rec.Code < 200 || rec.Code > 299 {
			if i < len(outs)-1 {
				vc.close() // the later answers are not read
			}
			return results
		}
	}
	if refusal != nil {
		rec := httptest.NewRecorder()
		e := apierr.Write(rec, httpmw.RequestID(ctx), refusal)
		httpmw.SetErrorCode(ctx, e.Code)
		results = append(results, callResult(rec, 0))
	}
	return results
}
