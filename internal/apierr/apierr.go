// Package apierr is Nexus's error contract, decided in one place: every
// non-2xx answer of the manager and the agent has the body
//
//	{"error":"short_code","status":400,"message":"…","fault_message":"…",
//	 "suggestion":"…","request_id":"…","log_tail":["…"]}
//
// Handlers return errors; Write turns them into that body. An error that is
// not an *Error becomes a 500 whose text never reaches the caller.
package apierr

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Error is an API error. Code is a stable short code; Message says what
// went wrong in words; FaultMessage is firecracker's own text when it was
// firecracker that refused; Suggestion says what the caller can do.
//
// The struct tags describe the body in the OpenAPI document (huma reads
// doc and example).
type Error struct {
	Code         string `json:"error" doc:"stable short code to branch on (invalid_request, not_found, conflict, no_capacity …)" example:"not_found"`
	Status       int    `json:"status" doc:"the HTTP status, repeated" example:"404"`
	Message      string `json:"message,omitempty" doc:"what went wrong, in words" example:"vm \"web\" not found"`
	FaultMessage string `json:"fault_message,omitempty" doc:"firecracker's own words, when firecracker refused"`
	Suggestion   string `json:"suggestion,omitempty" doc:"what the caller can do about it" example:"list the VMs: nexus vm ls"`
	RequestID    string `json:"request_id" doc:"the request's id (X-Request-Id): quote it when asking for help; the server log has it"`
	// LogTail is the last lines of firecracker's log, when firecracker
	// took part in the failure.
	LogTail []string `json:"log_tail,omitempty" doc:"the last lines of firecracker's log, when firecracker took part in the failure"`
	// RetryAfter is the answer's Retry-After header, read by clients
	// (never part of the body).
	RetryAfter time.Duration `json:"-"`

	cause error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%d %s", e.Status, e.Code)
	if e.Message != "" {
		s += ": " + e.Message
	}
	if e.FaultMessage != "" {
		s += ": " + e.FaultMessage
	}
	return s
}

// Unwrap returns the underlying cause, if any.
func (e *Error) Unwrap() error { return e.cause }

// New returns an error with a status, a code and a message.
func New(status int, code, message string) *Error {
	return &Error{Status: status, Code: code, Message: message}
}

// Newf is New with a format.
func Newf(status int, code, format string, args ...any) *Error {
	return New(status, code, fmt.Sprintf(format, args...))
}

// WithSuggestion returns a copy of e with a suggestion.
func (e *Error) WithSuggestion(s string) *Error {
	c := *e
	c.Suggestion = s
	return &c
}

// WithFault returns a copy of e carrying firecracker's fault message.
func (e *Error) WithFault(f string) *Error {
	c := *e
	c.FaultMessage = f
	return &c
}

// WithCause returns a copy of e that wraps cause (kept out of the body).
func (e *Error) WithCause(cause error) *Error {
	c := *e
	c.cause = cause
	return &c
}

// Common errors.
func BadRequest(format string, args ...any) *Error {
	return Newf(http.StatusBadRequest, "invalid_request", format, args...)
}

func NotFound(what, id string) *Error {
	return Newf(http.StatusNotFound, "not_found", "%s %q not found", what, id)
}

func Conflict(format string, args ...any) *Error {
	return Newf(http.StatusConflict, "conflict", format, args...)
}

func Forbidden(format string, args ...any) *Error {
	return Newf(http.StatusForbidden, "forbidden", format, args...)
}

func Unauthorized(message string) *Error {
	return New(http.StatusUnauthorized, "unauthorized", message)
}

// Internal is the answer for errors the caller cannot act on; the cause is
// logged, never sent.
func Internal(cause error) *Error {
	return New(http.StatusInternalServerError, "internal", "internal error; the server log has details under this request id").WithCause(cause)
}

// From returns err as an *Error, wrapping unknown errors as Internal.
func From(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Internal(err)
}

// Write sends err in the contract's shape with the given request id.
func Write(w http.ResponseWriter, requestID string, err error) *Error {
	e := *From(err)
	e.RequestID = requestID
	if e.Status < 400 || e.Status > 599 {
		e.Status = http.StatusInternalServerError
	}
	if e.Code == "" {
		e.Code = CodeFor(e.Status)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(&e)
	return &e
}

// CodeFor is the default short code of a status.
func CodeFor(status int) string {
	switch status {
	case 400:
		return "invalid_request"
	case 401:
		return "unauthorized"
	case 403:
		return "forbidden"
	case 404:
		return "not_found"
	case 405:
		return "method_not_allowed"
	case 409:
		return "conflict"
	case 413:
		return "too_large"
	case 415:
		return "unsupported_media_type"
	case 422:
		return "invalid_request"
	case 429:
		return "rate_limited"
	case 502:
		return "bad_gateway"
	case 503:
		return "unavailable"
	case 504:
		return "upstream_timeout"
	}
	if status >= 500 {
		return "internal"
	}
	return "error"
}

// GetStatus lets HTTP frameworks (huma) take the status from the error.
func (e *Error) GetStatus() int { return e.Status }

// ContentType keeps error bodies plain JSON (huma would say problem+json).
func (e *Error) ContentType(string) string { return "application/json" }
