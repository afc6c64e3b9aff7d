// Package apicontract checks API answers against the OpenAPI document the
// manager serves: an error answer must have a status its operation
// declares and a body its schema accepts. Tests record the answers they
// get (Recorder) and check them at the end, so every error response a
// suite sees is held to the document.
package apicontract

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
)

// Checker holds a loaded document.
type Checker struct {
	doc   *openapi3.T
	paths [][]string // each path template, split on "/"
	keys  []string
}

// Load parses and validates an OpenAPI 3.0 document (what the manager
// serves at /openapi-3.0.json).
func Load(doc []byte) (*Checker, error) {
	l := openapi3.NewLoader()
	d, err := l.LoadFromData(doc)
	if err != nil {
		return nil, fmt.Errorf("load document: %w", err)
	}
	if err := d.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("the document is not valid OpenAPI: %w", err)
	}
	c := &Checker{doc: d}
	for _, k := range d.Paths.InMatchingOrder() {
		c.keys = append(c.keys, k)
		c.paths = append(c.paths, strings.Split(k, "/"))
	}
	return c, nil
}

// operation finds the document's operation for a request path, or nil.
// Literal segments win over parameters (/v1/vms/bulk over /v1/vms/{id}).
func (c *Checker) operation(method, path string) (*openapi3.Operation, string) {
	segs := strings.Split(path, "/")
	best, bestLit := -1, -1
	for i, tmpl := range c.paths {
		if len(tmpl) != len(segs) {
			continue
		}
		lit, ok := 0, true
		for j, s := range tmpl {
			if strings.HasPrefix(s, "{") {
				continue
			}
			if s != segs[j] {
				ok = false
				break
			}
			lit++
		}
		if ok && lit > bestLit && c.doc.Paths.Value(c.keys[i]).GetOperation(method) != nil {
			best, bestLit = i, lit
		}
	}
	if best < 0 {
		return nil, ""
	}
	return c.doc.Paths.Value(c.keys[best]).GetOperation(method), c.keys[best]
}

// CheckError checks one error answer. Paths that are no operation of the
// document (an agent's API, a route that does not exist) are not its
// business: nil.
func (c *Checker) CheckError(method, path string, status int, contentType string, body []byte) error {
	op, tmpl := c.operation(method, path)
	if op == nil {
		return nil
	}
	name := fmt.Sprintf("%s %s (%s) answered %d", method, path, tmpl, status)
	r := op.Responses.Status(status)
	if r == nil || r.Value == nil {
		return fmt.Errorf("%s, which the document does not declare for it: %s", name, body)
	}
	mt := r.Value.Content.Get("application/json")
	if mt == nil || mt.Schema == nil {
		return fmt.Errorf("%s: the document gives that status no JSON body", name)
	}
	if !strings.HasPrefix(contentType, "application/json") {
		return fmt.Errorf("%s with Content-Type %q, not application/json", name, contentType)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("%s with a body that is not JSON: %q", name, body)
	}
	if err := mt.Schema.Value.VisitJSON(v); err != nil {
		return fmt.Errorf("%s with a body its schema refuses: %v\n%s", name, err, body)
	}
	if m, ok := v.(map[string]any); !ok || m["status"] != float64(status) {
		return fmt.Errorf("%s but its body says status %v", name, v)
	}
	return nil
}

// Answer is one recorded error answer.
type Answer struct {
	Method, Path, ContentType string
	Status                    int
	Body                      []byte
}

// Recorder is an http.RoundTripper that keeps every error answer (status
// 400 and up) passing through it, up to a bound.
type Recorder struct {
	Base http.RoundTripper
	mu   sync.Mutex
	seen []Answer
}

// maxAnswers bounds what a recorder keeps; a suite sees far fewer.
const maxAnswers = 20000

func (r *Recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.Base.RoundTrip(req)
	if err != nil || resp.StatusCode < 400 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		return resp, err
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr != nil {
		return resp, nil
	}
	r.mu.Lock()
	if len(r.seen) < maxAnswers {
		r.seen = append(r.seen, Answer{Method: req.Method, Path: req.URL.Path, ContentType: resp.Header.Get("Content-Type"), Status: resp.StatusCode, Body: body})
	}
	r.mu.Unlock()
	return resp, nil
}

// Answers returns what was recorded.
func (r *Recorder) Answers() []Answer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Answer(nil), r.seen...)
}

// Check checks every recorded answer and returns the failures, one per
// distinct problem, and how many answers were checked.
func (r *Recorder) Check(c *Checker) (problems []string, checked int) {
	seen := map[string]bool{}
	for _, a := range r.Answers() {
		if op, _ := c.operation(a.Method, a.Path); op == nil {
			continue
		}
		checked++
		_, tmpl := c.operation(a.Method, a.Path)
		key := fmt.Sprint(a.Method, tmpl, a.Status)
		if err := c.CheckError(a.Method, a.Path, a.Status, a.ContentType, a.Body); err != nil && !seen[key] {
			seen[key] = true // one report per operation and status
			problems = append(problems, err.Error())
		}
	}
	return problems, checked
}
