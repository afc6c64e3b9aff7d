package manager

import (
	"errors"
	"fmt"
)

// Kind classifies a service error; the HTTP layer maps each kind to a
// status in one place.
type Kind int

// The kinds of service errors.
const (
	KindInternal    Kind = iota
	KindInvalid          // bad input: 400
	KindNotFound         // 404
	KindConflict         // wrong state, name taken: 409
	KindForbidden        // policy: 403
	KindRejected         // firecracker refused (its 4xx): 400, with fault_message
	KindNoCapacity       // nowhere to place: 503
	KindUnavailable      // an agent or VMM could not be reached: 502
	KindTimeout          // an agent or VMM did not answer in time: 504
)

// Error is a service error with what the caller needs to act on it.
type Error struct {
	Kind       Kind
	Code       string // short code for the API, e.g. "vm_not_running"
	Message    string
	Fault      string // firecracker's fault_message
	Suggestion string
	// LogTail holds the last lines of firecracker's log when a VMM took
	// part in the failure, for the caller to see why without a second call.
	LogTail []string
	Err     error
}

func (e *Error) Error() string {
	s := e.Message
	if e.Fault != "" {
		s += ": " + e.Fault
	}
	if e.Err != nil && e.Fault == "" {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

func newErr(k Kind, code, format string, args ...any) *Error {
	return &Error{Kind: k, Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) suggest(s string) *Error { e.Suggestion = s; return e }

func (e *Error) wrap(err error) *Error { e.Err = err; return e }

// AsError returns the *Error in err's chain.
func AsError(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}

func invalid(format string, args ...any) *Error {
	return newErr(KindInvalid, "invalid_request", format, args...)
}

func notFound(what, id string) *Error {
	return newErr(KindNotFound, "not_found", "%s %q not found", what, id)
}

func conflict(code, format string, args ...any) *Error {
	return newErr(KindConflict, code, format, args...)
}

// PublicMessage is what a caller may see of err: the service error's
// words (with firecracker's), never internal causes.
func PublicMessage(err error) string {
	e, ok := AsError(err)
	if !ok || e.Kind == KindInternal {
		return "internal error; the manager's log has details"
	}
	msg := e.Message
	if e.Fault != "" {
		msg += ": " + e.Fault
	}
	return msg
}
