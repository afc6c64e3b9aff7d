package api

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// TestDocumentIsTheContract walks the document: every operation declares
// its error statuses with the contract's one body, its security, and a
// create its Location; nothing huma would guess (422, problem+json) is
// left.
func TestDocumentIsTheContract(t *testing.T) {
	doc := Document("test")
	if _, ok := doc.Components.Schemas.Map()["ErrorModel"]; ok {
		t.Error("huma's ErrorModel is in the document; errors must use Error")
	}
	ops := map[string]bool{}
	for path, pi := range doc.Paths {
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			op := operationOf(pi, m)
			if op == nil {
				continue
			}
			ops[op.OperationID] = true
			name := m + " " + path
			if op.Security == nil {
				t.Errorf("%s declares no security", name)
			}
			if _, ok := op.Responses["422"]; ok {
				t.Errorf("%s declares 422; bad input is 400", name)
			}
			errs := 0
			for code, r := range op.Responses {
				st, _ := strconv.Atoi(code)
				if code != "default" && st < 400 {
					continue
				}
				errs++
				mt := r.Content["application/json"]
				if mt == nil || mt.Schema == nil || mt.Schema.Ref != "#/components/schemas/Error" || len(r.Content) != 1 {
					t.Errorf("%s %s: not the contract's Error body: %+v", name, code, r.Content)
				}
			}
			if errs < 2 {
				t.Errorf("%s declares %d error responses", name, errs)
			}
			if strings.Contains(path, "{") && op.Responses["404"] == nil {
				t.Errorf("%s takes a path parameter but declares no 404", name)
			}
			if r := op.Responses["201"]; r != nil && r.Headers["Location"] == nil {
				t.Errorf("%s answers 201 without Location", name)
			}
		}
	}
	for id := range serviceErrs {
		if !ops[id] {
			t.Errorf("serviceErrs names %q, which is no operation", id)
		}
	}
	if len(ops) < 40 {
		t.Fatalf("only %d operations", len(ops))
	}
}
