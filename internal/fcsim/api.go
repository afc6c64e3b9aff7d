package fcsim

import (
	"encoding/json"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// This file is firecracker's API thread: it logs a request, hands it to the
// router (routes.go), and turns the VMM's answer into a response. Parse
// errors never reach the VMM.

// vmmError is a failed VMM action: 400 for almost everything, 413 for an
// MMDS overflow.
type vmmError struct {
	status int
	msg    string
}

func fault(format string, args ...any) *vmmError {
	if len(args) == 0 {
		return &vmmError{400, format}
	}
	return &vmmError{400, fmt.Sprintf(format, args...)}
}

// Phase errors, verbatim.
var (
	errPostBoot = fault("The requested operation is not supported after starting the microVM.")
	errPreBoot  = fault("The requested operation is not supported before starting the microVM.")
)

// apiCall is a parsed request ready for the VMM. run returns nil for 204,
// json.RawMessage or a value marshalJSON encodes for 200.
type apiCall struct {
	run         func() (any, *vmmError)
	deprecation string // ParsingInfo's deprecation message
	failKey     string // metric counted when run fails
}

// deprecate appends a deprecation message, as ParsingInfo does.
func (c *apiCall) deprecate(msg string) { c.deprecation += msg }

// reqError is firecracker's RequestError: its Display is the fault
// message, its Debug form is what the API thread logs.
type reqError struct{ msg, debug string }

func serdeReqError(err error) *reqError {
	msg := err.Error()
	debug := fmt.Sprintf("SerdeJson(Error(%s, line: 0, column: 0))", rustDebugString(msg))
	if se, ok := err.(*serdeError); ok {
		debug = fmt.Sprintf("SerdeJson(Error(%s, line: %d, column: %d))", rustDebugString(se.msg), se.at.line, se.at.col)
	}
	return &reqError{"An error occurred when deserializing the json body of a request: " + msg + ".", debug}
}

func genericError(msg string) *reqError {
	return &reqError{msg, "Generic(BadRequest, " + rustDebugString(msg) + ")"}
}

func invalidPath(method, path string) *reqError {
	return &reqError{
		"Invalid request method and/or path: " + method + " " + path + ".",
		"InvalidPathMethod(" + rustDebugString(path) + ", " + methodDebug(method) + ")",
	}
}

var (
	errEmptyID   = &reqError{"The ID cannot be empty.", "EmptyID"}
	errInvalidID = &reqError{"API Resource IDs can only contain alphanumeric characters and underscores.", "InvalidID"}
)

func methodDebug(m string) string { return m[:1] + strings.ToLower(m[1:]) }

// checkedID is firecracker's checked_id.
func checkedID(id string, present bool) *reqError {
	if !present || id == "" {
		return errEmptyID
	}
	for _, r := range id {
		if r != '_' && !unicode.IsLetter(r) && !unicode.IsNumber(r) {
			return errInvalidID
		}
	}
	return nil
}

func emptyBody(method string) *reqError {
	switch method {
	case "GET":
		return genericError("GET request cannot have a body.")
	case "PUT":
		return genericError("Empty PUT request.")
	case "DELETE":
		return genericError("Empty Delete request.")
	}
	return genericError("Empty PATCH request.")
}

// handleHTTP serves one API request end to end (ApiServer::handle_request).
func (s *sim) handleHTTP(r *httpRequest) httpResponse {
	s.log.log(LevelInfo, threadAPI, originRequest, "The API server received a %s.", s.describe(r))
	call, rerr := s.route(r)
	if rerr != nil {
		s.log.log(LevelError, threadAPI, originAPI, "%s", rerr.debug)
		return faultResponse(400, rerr.msg)
	}
	s.mu.Lock()
	data, verr := call.run()
	s.mu.Unlock()
	var resp httpResponse
	switch {
	case verr != nil:
		if call.failKey != "" {
			s.met.inc(call.failKey)
		}
		text := "400 Bad Request"
		if verr.status == 413 {
			text = "413 Payload too large"
		}
		s.log.log(LevelError, threadAPI, originRequest, "Received Error. Status code: %s. Message: %s", text, verr.msg)
		resp = faultResponse(verr.status, verr.msg)
	case data == nil:
		s.log.log(LevelInfo, threadAPI, originRequest, "The request was executed successfully. Status code: 204 No Content.")
		resp = httpResponse{status: 204}
	default:
		s.log.log(LevelInfo, threadAPI, originRequest, "The request was executed successfully. Status code: 200 OK.")
		b, ok := data.(json.RawMessage)
		if !ok {
			b = marshalJSON(data)
		}
		resp = httpResponse{status: 200, body: b}
	}
	// The deprecation warning and header come with the answer whether
	// the action succeeded or not.
	if call.deprecation != "" {
		s.log.log(LevelWarn, threadAPI, originAPI, "%s", call.deprecation)
		resp.deprecation = true
	}
	return resp
}

// faultResponse is json!({"fault_message": msg}).to_string().
func faultResponse(status int, msg string) httpResponse {
	return httpResponse{status: status, body: marshalJSON(object{{"fault_message", msg}})}
}

// describe is firecracker's request description for the log line.
func (s *sim) describe(r *httpRequest) string {
	d := methodDebug(r.method) + " request on " + rustDebugString(r.path)
	switch {
	case r.body == nil || r.path == "/mmds":
		return d
	case r.path == "/cpu-config" && !s.log.enabled(LevelDebug):
		return d + ". To view the CPU template received by the API, configure log-level to DEBUG"
	}
	body := "inconvertible to UTF-8"
	if utf8.Valid(r.body) {
		body = string(r.body)
	}
	return d + " with body " + rustDebugString(body)
}
