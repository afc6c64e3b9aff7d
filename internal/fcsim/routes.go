package fcsim

import (
	"strings"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
)

// Routing and body parsing: parsed_request.rs's match on method, first
// path segment and body, and the request/*.rs parsers, in the same order
// and with the same metrics. Everything here runs before the VMM sees the
// request.

// pathTokens splits like Rust's trim_start_matches('/').split_terminator('/').
// The path is the request URI's absolute path as micro_http gives it:
// a query string is not removed, so "/version?x" is not "/version".
func pathTokens(p string) []string {
	p = strings.TrimLeft(p, "/")
	if p == "" {
		return nil
	}
	t := strings.Split(p, "/")
	if t[len(t)-1] == "" {
		t = t[:len(t)-1]
	}
	return t
}

// tokens is the rest of a path after its first segment, read one at a
// time like Rust's Split iterator.
type tokens []string

func (t *tokens) next() (string, bool) {
	if len(*t) == 0 {
		return "", false
	}
	s := (*t)[0]
	*t = (*t)[1:]
	return s, true
}

// route is parsed_request.rs's ParsedRequest::try_from.
func (s *sim) route(r *httpRequest) (*apiCall, *reqError) {
	all := pathTokens(r.path)
	first := ""
	if len(all) > 0 {
		first = all[0]
	}
	rest := tokens(nil)
	if len(all) > 1 {
		rest = all[1:]
	}
	body := r.body
	next := func(want string) bool { tok, _ := rest.next(); return tok == want }
	switch r.method {
	case "GET":
		if body != nil {
			return nil, emptyBody("GET")
		}
		switch {
		case first == "":
			s.met.inc("get_api_requests.instance_info_count")
			return &apiCall{run: s.getInstanceInfo}, nil
		case first == "balloon":
			return s.parseGetBalloon(&rest)
		case first == "version":
			s.met.inc("get_api_requests.vmm_version_count")
			return &apiCall{run: s.getVersion}, nil
		case first == "vm" && next("config"):
			return &apiCall{run: s.getFullConfig}, nil
		case first == "machine-config":
			s.met.inc("get_api_requests.machine_cfg_count")
			return &apiCall{run: s.getMachineConfig}, nil
		case first == "mmds":
			s.met.inc("get_api_requests.mmds_count")
			return &apiCall{run: s.getMMDS}, nil
		case first == "hotplug" && next("memory"):
			s.met.inc("get_api_requests.hotplug_memory_count")
			return &apiCall{run: s.getHotplug}, nil
		}
	case "PUT":
		if body == nil {
			return nil, emptyBody("PUT")
		}
		switch first {
		case "actions":
			return s.parsePutActions(body)
		case "balloon":
			return parseBody(s.met, body, "", tyBalloon, s.putBalloon)
		case "boot-source":
			return parseBody(s.met, body, "put_api_requests.boot_source", tyBootSource, s.putBootSource)
		case "cpu-config":
			return parseBody(s.met, body, "put_api_requests.cpu_cfg", tyCPUConfig, s.putCPUConfig)
		case "drives":
			return s.parsePutDrive(body, &rest)
		case "pmem":
			return s.parsePutPmem(body, &rest)
		case "logger":
			return s.parsePutLogger(body)
		case "serial":
			return parseBody(s.met, body, "put_api_requests.serial", tySerial, s.putSerial)
		case "machine-config":
			return s.parsePutMachineConfig(body)
		case "metrics":
			return parseBody(s.met, body, "put_api_requests.metrics", tyMetrics, s.putMetrics)
		case "mmds":
			return s.parsePutMMDS(body, &rest)
		case "network-interfaces":
			return s.parsePutNet(body, &rest)
		case "snapshot":
			return s.parsePutSnapshot(body, &rest)
		case "vsock":
			return s.parsePutVsock(body)
		case "entropy":
			return parseBody(s.met, body, "", tyEntropy, s.putEntropy)
		case "hotplug":
			if next("memory") {
				return parseBody(s.met, body, "put_api_requests.hotplug_memory", tyHotplug, s.putHotplug)
			}
		}
	case "PATCH":
		if first == "balloon" {
			return s.parsePatchBalloon(body, &rest)
		}
		if body == nil {
			return nil, emptyBody("PATCH")
		}
		switch first {
		case "drives":
			return s.parsePatchDrive(body, &rest)
		case "machine-config":
			return s.parsePatchMachineConfig(body)
		case "mmds":
			return s.parseMMDS(body, s.patchMMDS, "patch_api_requests.mmds")
		case "network-interfaces":
			return s.parsePatchNet(body, &rest)
		case "pmem":
			return s.parsePatchPmem(body, &rest)
		case "vm":
			var vm model.VM
			if _, err := decodeBody(body, tyVM, &vm); err != nil {
				return nil, serdeReqError(err)
			}
			return &apiCall{run: func() (any, *vmmError) { return nil, s.patchVM(vm.State) }}, nil
		case "hotplug":
			if next("memory") {
				return parseBody(s.met, body, "patch_api_requests.hotplug_memory", tyHotplugUpdate, s.patchHotplug)
			}
		}
	case "DELETE":
		switch first {
		case "drives", "network-interfaces", "pmem":
			if body != nil {
				// A body makes the DELETE arms not match; the catch-all
				// for DELETE with a body answers.
				return nil, emptyBody("DELETE")
			}
			id, ok := rest.next()
			if e := checkedID(id, ok); e != nil {
				return nil, e
			}
			kind := first
			return &apiCall{run: func() (any, *vmmError) { return nil, s.deleteDevice(kind, id) }}, nil
		}
		if body != nil {
			return nil, emptyBody("DELETE")
		}
	}
	return nil, invalidPath(r.method, first)
}

// parseBody decodes a body of type T and returns a call that applies it;
// key names the request's metric pair ("" for none).
func parseBody[T any](met *metrics, body []byte, key string, t *ty, apply func(T) *vmmError) (*apiCall, *reqError) {
	if key != "" {
		met.inc(key + "_count")
	}
	var v T
	if _, err := decodeBody(body, t, &v); err != nil {
		if key != "" {
			met.inc(key + "_fails")
		}
		return nil, serdeReqError(err)
	}
	call := &apiCall{run: func() (any, *vmmError) { return nil, apply(v) }}
	if key != "" {
		call.failKey = key + "_fails"
	}
	return call, nil
}

func (s *sim) parsePutActions(body []byte) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.actions_count")
	var a model.InstanceActionInfo
	if _, err := decodeBody(body, tyAction, &a); err != nil {
		s.met.inc("put_api_requests.actions_fails")
		return nil, serdeReqError(err)
	}
	var run func() *vmmError
	switch a.ActionType {
	case model.ActionInstanceStart:
		run = s.instanceStart
	case model.ActionFlushMetrics:
		run = s.flushMetricsAction
	default:
		run = s.sendCtrlAltDel
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, run() }, failKey: "put_api_requests.actions_fails"}, nil
}

func (s *sim) parsePutMachineConfig(body []byte) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.machine_cfg_count")
	var mc model.MachineConfig
	if _, err := decodeBody(body, tyMachineConfig, &mc); err != nil {
		s.met.inc("put_api_requests.machine_cfg_fails")
		return nil, serdeReqError(err)
	}
	// A PUT resets omitted optional fields to their defaults, except
	// cpu_template: MachineConfigUpdate::from keeps the current one when
	// the field is absent.
	up := machineUpdateFromPut(mc)
	call := &apiCall{run: func() (any, *vmmError) { return nil, s.updateMachineConfig(up) }, failKey: "put_api_requests.machine_cfg_fails"}
	if mc.CPUTemplate != "" {
		s.met.inc("deprecated_api.deprecated_http_api_calls")
		call.deprecate("PUT /machine-config: cpu_template field is deprecated.")
	}
	return call, nil
}

func machineUpdateFromPut(mc model.MachineConfig) model.MachineConfigPatch {
	up := model.MachineConfigPatch{
		VcpuCount: &mc.VcpuCount, MemSizeMib: &mc.MemSizeMib,
		Smt: orFalse(mc.Smt), TrackDirtyPages: orFalse(mc.TrackDirtyPages),
		HugePages: strOr(mc.HugePages, "None"),
	}
	if mc.CPUTemplate != "" {
		up.CPUTemplate = &mc.CPUTemplate
	}
	return up
}

func (s *sim) parsePatchMachineConfig(body []byte) (*apiCall, *reqError) {
	s.met.inc("patch_api_requests.machine_cfg_count")
	var up model.MachineConfigPatch
	if _, err := decodeBody(body, tyMachineConfigUpdate, &up); err != nil {
		s.met.inc("patch_api_requests.machine_cfg_fails")
		return nil, serdeReqError(err)
	}
	if up == (model.MachineConfigPatch{}) {
		return nil, emptyBody("PATCH")
	}
	call := &apiCall{run: func() (any, *vmmError) { return nil, s.updateMachineConfig(up) }, failKey: "patch_api_requests.machine_cfg_fails"}
	if up.CPUTemplate != nil {
		s.met.inc("deprecated_api.deprecated_http_api_calls")
		call.deprecate("PATCH /machine-config: cpu_template field is deprecated.")
	}
	return call, nil
}

func orFalse(b *bool) *bool {
	if b == nil {
		return model.Bool(false)
	}
	return b
}

func strOr(s, def string) *string {
	if s == "" {
		s = def
	}
	return &s
}

// pathID is the "if let Some(id) = id_from_path { checked_id(id)? } else
// { EmptyID }" every device parser starts with.
// It reports whether the id was absent, which alone counts as a failure.
func pathID(rest *tokens) (string, *reqError, bool) {
	id, ok := rest.next()
	if !ok {
		return "", errEmptyID, true
	}
	if e := checkedID(id, true); e != nil {
		return "", e, false
	}
	return id, nil, false
}

func (s *sim) parsePutDrive(body []byte, rest *tokens) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.drive_count")
	id, rerr, absent := pathID(rest)
	if rerr != nil {
		if absent {
			s.met.inc("put_api_requests.drive_fails")
		}
		return nil, rerr
	}
	var d model.Drive
	if _, err := decodeBody(body, tyDrive, &d); err != nil {
		s.met.inc("put_api_requests.drive_fails")
		return nil, serdeReqError(err)
	}
	if d.DriveID != id {
		s.met.inc("put_api_requests.drive_fails")
		return nil, genericError("The id from the path does not match the id from the body!")
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putDrive(d) }, failKey: "put_api_requests.drive_fails"}, nil
}

func (s *sim) parsePatchDrive(body []byte, rest *tokens) (*apiCall, *reqError) {
	s.met.inc("patch_api_requests.drive_count")
	id, rerr, absent := pathID(rest)
	if rerr != nil {
		if absent {
			s.met.inc("patch_api_requests.drive_fails")
		}
		return nil, rerr
	}
	var d model.PartialDrive
	if _, err := decodeBody(body, tyDriveUpdate, &d); err != nil {
		s.met.inc("patch_api_requests.drive_fails")
		return nil, serdeReqError(err)
	}
	if d.DriveID != id {
		s.met.inc("patch_api_requests.drive_fails")
		return nil, genericError("The id from the path does not match the id from the body!")
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.patchDrive(d) }, failKey: "patch_api_requests.drive_fails"}, nil
}

func idMismatch(path, body string) *reqError {
	return genericError("The id from the path [" + path + "] does not match the id from the body [" + body + "]!")
}

func (s *sim) parsePutNet(body []byte, rest *tokens) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.network_count")
	id, rerr, absent := pathID(rest)
	if rerr != nil {
		if absent {
			s.met.inc("put_api_requests.network_fails")
		}
		return nil, rerr
	}
	var n model.NetworkInterface
	if _, err := decodeBody(body, tyNet, &n); err != nil {
		s.met.inc("put_api_requests.network_fails")
		return nil, serdeReqError(err)
	}
	if n.IfaceID != id {
		s.met.inc("put_api_requests.network_fails")
		return nil, idMismatch(id, n.IfaceID)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putNet(n) }, failKey: "put_api_requests.network_fails"}, nil
}

// parsePatchNet counts like firecracker's parse_patch_net, which bumps
// network_count (not network_fails) for a missing or mismatched id.
func (s *sim) parsePatchNet(body []byte, rest *tokens) (*apiCall, *reqError) {
	s.met.inc("patch_api_requests.network_count")
	id, rerr, absent := pathID(rest)
	if rerr != nil {
		if absent {
			s.met.inc("patch_api_requests.network_count")
		}
		return nil, rerr
	}
	var n model.PartialNetworkInterface
	if _, err := decodeBody(body, tyNetUpdate, &n); err != nil {
		s.met.inc("patch_api_requests.network_fails")
		return nil, serdeReqError(err)
	}
	if n.IfaceID != id {
		s.met.inc("patch_api_requests.network_count")
		return nil, idMismatch(id, n.IfaceID)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.patchNet(n) }, failKey: "patch_api_requests.network_fails"}, nil
}

func (s *sim) parsePutPmem(body []byte, rest *tokens) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.pmem_count")
	id, rerr, absent := pathID(rest)
	if rerr != nil {
		if absent {
			s.met.inc("put_api_requests.pmem_fails")
		}
		return nil, rerr
	}
	var p model.Pmem
	if _, err := decodeBody(body, tyPmem, &p); err != nil {
		s.met.inc("put_api_requests.pmem_fails")
		return nil, serdeReqError(err)
	}
	if p.ID != id {
		s.met.inc("put_api_requests.pmem_fails")
		return nil, genericError("The id from the path does not match the id from the body!")
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putPmem(p) }, failKey: "put_api_requests.pmem_fails"}, nil
}

func (s *sim) parsePatchPmem(body []byte, rest *tokens) (*apiCall, *reqError) {
	s.met.inc("patch_api_requests.pmem_count")
	id, rerr, absent := pathID(rest)
	if rerr != nil {
		if absent {
			s.met.inc("patch_api_requests.pmem_fails")
		}
		return nil, rerr
	}
	var p model.PartialPmem
	if _, err := decodeBody(body, tyPmemUpdate, &p); err != nil {
		s.met.inc("patch_api_requests.pmem_fails")
		return nil, serdeReqError(err)
	}
	if p.ID != id {
		s.met.inc("patch_api_requests.pmem_fails")
		return nil, genericError("The id from the path does not match the id from the body!")
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.patchPmem(p) }}, nil
}

func (s *sim) parsePutLogger(body []byte) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.logger_count")
	var l model.Logger
	if _, err := decodeBody(body, tyLogger, &l); err != nil {
		s.met.inc("put_api_requests.logger_fails")
		return nil, serdeReqError(err)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putLogger(l) }, failKey: "put_api_requests.logger_fails"}, nil
}

func (s *sim) parsePutVsock(body []byte) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.vsock_count")
	var v model.Vsock
	raw, err := decodeBody(body, tyVsock, &v)
	if err != nil {
		s.met.inc("put_api_requests.vsock_fails")
		return nil, serdeReqError(err)
	}
	call := &apiCall{run: func() (any, *vmmError) { return nil, s.putVsock(v) }, failKey: "put_api_requests.vsock_fails"}
	if has(raw, "vsock_id") {
		s.met.inc("deprecated_api.deprecated_http_api_calls")
		call.deprecate("PUT /vsock: vsock_id field is deprecated.")
	}
	return call, nil
}

func (s *sim) parsePutMMDS(body []byte, rest *tokens) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.mmds_count")
	switch sub, ok := rest.next(); {
	case !ok:
		v, err := decodeValue(body, tyAny)
		if err != nil {
			s.met.inc("put_api_requests.mmds_fails")
			return nil, serdeReqError(err)
		}
		return &apiCall{run: func() (any, *vmmError) { return nil, s.putMMDS(v) }, failKey: "put_api_requests.mmds_fails"}, nil
	case sub == "config":
		var c model.MmdsConfig
		if _, err := decodeBody(body, tyMmdsConfig, &c); err != nil {
			s.met.inc("put_api_requests.mmds_fails")
			return nil, serdeReqError(err)
		}
		call := &apiCall{run: func() (any, *vmmError) { return nil, s.putMMDSConfig(c) }, failKey: "put_api_requests.mmds_fails"}
		if c.Version == "" || c.Version == "V1" {
			// V1 is the default and is deprecated, whether or not the
			// body names it.
			s.met.inc("deprecated_api.deprecated_http_api_calls")
			call.deprecate("PUT /mmds/config: V1 is deprecated. Use V2 instead.")
		}
		return call, nil
	default:
		s.met.inc("put_api_requests.mmds_fails")
		return nil, genericError("Unrecognized PUT request path `" + sub + "`.")
	}
}

func (s *sim) parseMMDS(body []byte, apply func(any) *vmmError, key string) (*apiCall, *reqError) {
	s.met.inc(key + "_count")
	v, err := decodeValue(body, tyAny)
	if err != nil {
		s.met.inc(key + "_fails")
		return nil, serdeReqError(err)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, apply(v) }, failKey: key + "_fails"}, nil
}

func (s *sim) parsePutSnapshot(body []byte, rest *tokens) (*apiCall, *reqError) {
	op, ok := rest.next()
	if !ok {
		return nil, genericError("Missing snapshot operation type.")
	}
	switch op {
	case "create":
		var p model.SnapshotCreateParams
		if _, err := decodeBody(body, tySnapshotCreate, &p); err != nil {
			return nil, serdeReqError(err)
		}
		return &apiCall{run: func() (any, *vmmError) { return nil, s.createSnapshot(p) }}, nil
	case "load":
		var p model.SnapshotLoadParams
		if _, err := decodeBody(body, tySnapshotLoad, &p); err != nil {
			return nil, serdeReqError(err)
		}
		switch {
		case p.MemBackend != nil && p.MemFilePath != "":
			return nil, serdeReqError(&serdeError{msg: "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"})
		case p.MemBackend == nil && p.MemFilePath == "":
			return nil, serdeReqError(&serdeError{msg: "missing field: either `mem_backend` or `mem_file_path` is required"})
		}
		var depr string
		if p.MemFilePath != "" || p.EnableDiffSnapshots != nil && *p.EnableDiffSnapshots {
			s.met.inc("deprecated_api.deprecated_http_api_calls")
			depr = "PUT /snapshot/load: mem_file_path and enable_diff_snapshots fields are deprecated."
		}
		if p.MemFilePath != "" {
			p.MemBackend = &model.MemoryBackend{BackendType: "File", BackendPath: p.MemFilePath}
		}
		call := &apiCall{run: func() (any, *vmmError) { return nil, s.loadSnapshot(p) }}
		call.deprecate(depr)
		return call, nil
	}
	return nil, invalidPath("PUT", "/snapshot/"+op)
}

func (s *sim) parseGetBalloon(rest *tokens) (*apiCall, *reqError) {
	sub, ok := rest.next()
	switch {
	case !ok:
		return &apiCall{run: s.getBalloon}, nil
	case sub == "statistics":
		return &apiCall{run: s.getBalloonStats}, nil
	case sub == "hinting":
		switch st, ok := rest.next(); {
		case !ok:
			return nil, genericError("Unrecognized GET request path `/hinting/`.")
		case st == "status":
			return &apiCall{run: s.getHintingStatus}, nil
		default:
			return nil, genericError("Unrecognized GET request path `/hinting/" + st + "`.")
		}
	}
	return nil, genericError("Unrecognized GET request path `" + sub + "`.")
}

// parsePatchBalloon is parse_patch_balloon: any sub-path other than
// statistics and hinting is the balloon itself.
func (s *sim) parsePatchBalloon(body []byte, rest *tokens) (*apiCall, *reqError) {
	sub, _ := rest.next()
	switch {
	case sub == "statistics" && body != nil:
		return parseBody(s.met, body, "", tyBalloonStatsUpdate, s.patchBalloonStats)
	case sub == "hinting":
		switch op, ok := rest.next(); {
		case !ok:
			return nil, genericError("Unrecognized PATCH request path `/hinting/`.")
		case op == "start":
			cmd := model.BalloonStartCmd{AcknowledgeOnStop: model.Bool(true)}
			if body != nil {
				if _, err := decodeBody(body, tyHintingStart, &cmd); err != nil {
					return nil, serdeReqError(err)
				}
			}
			return &apiCall{run: func() (any, *vmmError) { return nil, s.startHinting(cmd) }}, nil
		case op == "stop":
			return &apiCall{run: func() (any, *vmmError) { return nil, s.stopHinting() }}, nil
		default:
			return nil, genericError("Unrecognized PATCH request path `/hinting/" + op + "`.")
		}
	case body != nil:
		return parseBody(s.met, body, "", tyBalloonUpdate, s.patchBalloon)
	}
	return nil, emptyBody("PATCH")
}
