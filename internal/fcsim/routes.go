package fcsim

import (
	"bytes"
	"encoding/json"
	"strings"

	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// Routing and body parsing: parsed_request.rs's match on method, first
// path segment and body, and the request/*.rs parsers. Everything here
// runs before the VMM sees the request.

// pathTokens splits like Rust's trim_start_matches('/').split_terminator('/').
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

func at(t []string, i int) (string, bool) {
	if i < len(t) {
		return t[i], true
	}
	return "", false
}

// route is parsed_request.rs's match on method, first path segment and body.
func (s *sim) route(r *httpRequest) (*apiCall, *reqError) {
	t := pathTokens(r.path)
	first, _ := at(t, 0)
	second, hasSecond := at(t, 1)
	body := r.body
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
			return s.routeGetBalloon(t)
		case first == "version":
			s.met.inc("get_api_requests.vmm_version_count")
			return &apiCall{run: s.getVersion}, nil
		case first == "vm" && second == "config":
			return &apiCall{run: s.getFullConfig}, nil
		case first == "machine-config":
			s.met.inc("get_api_requests.machine_cfg_count")
			return &apiCall{run: s.getMachineConfig}, nil
		case first == "mmds":
			s.met.inc("get_api_requests.mmds_count")
			return &apiCall{run: s.getMMDS}, nil
		case first == "hotplug" && second == "memory":
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
			return parseBody(s.met, body, "put_api_requests.balloon", tyBalloon, s.putBalloon)
		case "boot-source":
			return parseBody(s.met, body, "put_api_requests.boot_source", tyBootSource, s.putBootSource)
		case "cpu-config":
			return parseBody(s.met, body, "put_api_requests.cpu_cfg", tyCPUConfig, s.putCPUConfig)
		case "drives":
			return s.parsePutDrive(body, t)
		case "pmem":
			return s.parsePutPmem(body, t)
		case "logger":
			return s.parsePutLogger(body)
		case "serial":
			return parseBody(s.met, body, "put_api_requests.serial", tySerial, s.putSerial)
		case "machine-config":
			return s.parsePutMachineConfig(body)
		case "metrics":
			return parseBody(s.met, body, "put_api_requests.metrics", tyMetrics, s.putMetrics)
		case "mmds":
			switch {
			case !hasSecond:
				return s.parseMMDS(body, s.putMMDS, "put_api_requests.mmds")
			case second == "config":
				return parseBody(s.met, body, "put_api_requests.mmds", tyMmdsConfig, s.putMMDSConfig)
			}
			return nil, invalidPath("PUT", "/mmds/"+second)
		case "network-interfaces":
			return s.parsePutNet(body, t)
		case "snapshot":
			return s.parsePutSnapshot(body, t)
		case "vsock":
			call, err := parseBody(s.met, body, "put_api_requests.vsock", tyVsock, s.putVsock)
			if err == nil && parseJSONField(body, "vsock_id") {
				call.deprecation = "PUT /vsock: vsock_id field is deprecated."
			}
			return call, err
		case "entropy":
			return parseBody(s.met, body, "", tyEntropy, s.putEntropy)
		case "hotplug":
			if second == "memory" {
				return parseBody(s.met, body, "put_api_requests.hotplug_memory", tyHotplug, s.putHotplug)
			}
		}
	case "PATCH":
		if first == "balloon" {
			return s.routePatchBalloon(body, t)
		}
		if body == nil {
			return nil, emptyBody("PATCH")
		}
		switch first {
		case "drives":
			return s.parsePatchDrive(body, t)
		case "machine-config":
			return s.parsePatchMachineConfig(body)
		case "mmds":
			return s.parseMMDS(body, s.patchMMDS, "patch_api_requests.mmds")
		case "network-interfaces":
			return s.parsePatchNet(body, t)
		case "pmem":
			return s.parsePatchPmem(body, t)
		case "vm":
			var vm firecracker.VM
			if err := decodeBody(body, tyVM, &vm); err != nil {
				return nil, serdeReqError(err)
			}
			return &apiCall{run: func() (any, *vmmError) { return nil, s.patchVM(vm.State) }}, nil
		case "hotplug":
			if second == "memory" {
				return parseBody(s.met, body, "patch_api_requests.hotplug_memory", tyHotplugUpdate, s.patchHotplug)
			}
		}
	case "DELETE":
		switch first {
		case "drives", "network-interfaces", "pmem":
			if e := checkedID(second, hasSecond); e != nil {
				return nil, e
			}
			kind := first
			return &apiCall{run: func() (any, *vmmError) { return nil, s.deleteDevice(kind, second) }}, nil
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
	if err := decodeBody(body, t, &v); err != nil {
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
	var a firecracker.InstanceActionInfo
	if err := decodeBody(body, tyAction, &a); err != nil {
		s.met.inc("put_api_requests.actions_fails")
		return nil, serdeReqError(err)
	}
	var run func() *vmmError
	switch a.ActionType {
	case firecracker.ActionInstanceStart:
		run = s.instanceStart
	case firecracker.ActionFlushMetrics:
		run = s.flushMetricsAction
	default:
		run = s.sendCtrlAltDel
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, run() }, failKey: "put_api_requests.actions_fails"}, nil
}

func (s *sim) parsePutMachineConfig(body []byte) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.machine_cfg_count")
	var mc firecracker.MachineConfig
	if err := decodeBody(body, tyMachineConfig, &mc); err != nil {
		s.met.inc("put_api_requests.machine_cfg_fails")
		return nil, serdeReqError(err)
	}
	// A PUT resets omitted optional fields to their defaults.
	up := firecracker.MachineConfigPatch{
		VcpuCount: &mc.VcpuCount, MemSizeMib: &mc.MemSizeMib,
		Smt: orFalse(mc.Smt), TrackDirtyPages: orFalse(mc.TrackDirtyPages),
		HugePages: strOr(mc.HugePages, "None"), CPUTemplate: strOr(mc.CPUTemplate, "None"),
	}
	call := &apiCall{run: func() (any, *vmmError) { return nil, s.updateMachineConfig(up) }, failKey: "put_api_requests.machine_cfg_fails"}
	if mc.CPUTemplate != "" {
		call.deprecation = "PUT /machine-config: cpu_template field is deprecated."
	}
	return call, nil
}

func (s *sim) parsePatchMachineConfig(body []byte) (*apiCall, *reqError) {
	s.met.inc("patch_api_requests.machine_cfg_count")
	var up firecracker.MachineConfigPatch
	if err := decodeBody(body, tyMachineConfigUpdate, &up); err != nil {
		s.met.inc("patch_api_requests.machine_cfg_fails")
		return nil, serdeReqError(err)
	}
	if up == (firecracker.MachineConfigPatch{}) {
		s.met.inc("patch_api_requests.machine_cfg_fails")
		return nil, emptyBody("PATCH")
	}
	call := &apiCall{run: func() (any, *vmmError) { return nil, s.updateMachineConfig(up) }, failKey: "patch_api_requests.machine_cfg_fails"}
	if up.CPUTemplate != nil {
		call.deprecation = "PATCH /machine-config: cpu_template field is deprecated."
	}
	return call, nil
}

func orFalse(b *bool) *bool {
	if b == nil {
		return firecracker.Bool(false)
	}
	return b
}

func strOr(s, def string) *string {
	if s == "" {
		s = def
	}
	return &s
}

func (s *sim) parsePutDrive(body []byte, t []string) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.drive_count")
	id, ok := at(t, 1)
	if e := checkedID(id, ok); e != nil {
		s.met.inc("put_api_requests.drive_fails")
		return nil, e
	}
	var d firecracker.Drive
	if err := decodeBody(body, tyDrive, &d); err != nil {
		s.met.inc("put_api_requests.drive_fails")
		return nil, serdeReqError(err)
	}
	if d.DriveID != id {
		s.met.inc("put_api_requests.drive_fails")
		return nil, genericError("The id from the path does not match the id from the body!")
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putDrive(d) }, failKey: "put_api_requests.drive_fails"}, nil
}

func (s *sim) parsePatchDrive(body []byte, t []string) (*apiCall, *reqError) {
	s.met.inc("patch_api_requests.drive_count")
	id, ok := at(t, 1)
	if e := checkedID(id, ok); e != nil {
		s.met.inc("patch_api_requests.drive_fails")
		return nil, e
	}
	var d firecracker.PartialDrive
	if err := decodeBody(body, tyDriveUpdate, &d); err != nil {
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

func (s *sim) parsePutNet(body []byte, t []string) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.network_count")
	id, ok := at(t, 1)
	if e := checkedID(id, ok); e != nil {
		s.met.inc("put_api_requests.network_fails")
		return nil, e
	}
	var n firecracker.NetworkInterface
	if err := decodeBody(body, tyNet, &n); err != nil {
		s.met.inc("put_api_requests.network_fails")
		return nil, serdeReqError(err)
	}
	if n.IfaceID != id {
		s.met.inc("put_api_requests.network_fails")
		return nil, idMismatch(id, n.IfaceID)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putNet(n) }, failKey: "put_api_requests.network_fails"}, nil
}

func (s *sim) parsePatchNet(body []byte, t []string) (*apiCall, *reqError) {
	s.met.inc("patch_api_requests.network_count")
	id, ok := at(t, 1)
	if e := checkedID(id, ok); e != nil {
		s.met.inc("patch_api_requests.network_fails")
		return nil, e
	}
	var n firecracker.PartialNetworkInterface
	if err := decodeBody(body, tyNetUpdate, &n); err != nil {
		s.met.inc("patch_api_requests.network_fails")
		return nil, serdeReqError(err)
	}
	if n.IfaceID != id {
		s.met.inc("patch_api_requests.network_fails")
		return nil, idMismatch(id, n.IfaceID)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.patchNet(n) }, failKey: "patch_api_requests.network_fails"}, nil
}

func (s *sim) parsePutPmem(body []byte, t []string) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.pmem_count")
	id, ok := at(t, 1)
	if e := checkedID(id, ok); e != nil {
		s.met.inc("put_api_requests.pmem_fails")
		return nil, e
	}
	var p firecracker.Pmem
	if err := decodeBody(body, tyPmem, &p); err != nil {
		s.met.inc("put_api_requests.pmem_fails")
		return nil, serdeReqError(err)
	}
	if p.ID != id {
		s.met.inc("put_api_requests.pmem_fails")
		return nil, idMismatch(id, p.ID)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putPmem(p) }, failKey: "put_api_requests.pmem_fails"}, nil
}

func (s *sim) parsePatchPmem(body []byte, t []string) (*apiCall, *reqError) {
	id, ok := at(t, 1)
	if e := checkedID(id, ok); e != nil {
		return nil, e
	}
	var p firecracker.PartialPmem
	if err := decodeBody(body, tyPmemUpdate, &p); err != nil {
		return nil, serdeReqError(err)
	}
	if p.ID != id {
		return nil, idMismatch(id, p.ID)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.patchPmem(p) }}, nil
}

func (s *sim) parsePutLogger(body []byte) (*apiCall, *reqError) {
	s.met.inc("put_api_requests.logger_count")
	var l firecracker.Logger
	if err := decodeBody(body, tyLogger, &l); err != nil {
		s.met.inc("put_api_requests.logger_fails")
		return nil, serdeReqError(err)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, s.putLogger(l) }, failKey: "put_api_requests.logger_fails"}, nil
}

func (s *sim) parseMMDS(body []byte, apply func(any) *vmmError, key string) (*apiCall, *reqError) {
	s.met.inc(key + "_count")
	if _, err := parseJSON(body); err != nil {
		s.met.inc(key + "_fails")
		return nil, serdeReqError(err)
	}
	// UseNumber keeps integers exact, as serde_json's Value does.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		s.met.inc(key + "_fails")
		return nil, serdeReqError(err)
	}
	return &apiCall{run: func() (any, *vmmError) { return nil, apply(v) }, failKey: key + "_fails"}, nil
}

func (s *sim) parsePutSnapshot(body []byte, t []string) (*apiCall, *reqError) {
	op, ok := at(t, 1)
	if !ok {
		return nil, genericError("Missing snapshot operation type.")
	}
	switch op {
	case "create":
		var p firecracker.SnapshotCreateParams
		if err := decodeBody(body, tySnapshotCreate, &p); err != nil {
			return nil, serdeReqError(err)
		}
		return &apiCall{run: func() (any, *vmmError) { return nil, s.createSnapshot(p) }}, nil
	case "load":
		var p firecracker.SnapshotLoadParams
		if err := decodeBody(body, tySnapshotLoad, &p); err != nil {
			return nil, serdeReqError(err)
		}
		switch {
		case p.MemBackend != nil && p.MemFilePath != "":
			return nil, serdeReqError(&serdeError{msg: "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"})
		case p.MemBackend == nil && p.MemFilePath == "":
			return nil, serdeReqError(&serdeError{msg: "missing field: either `mem_backend` or `mem_file_path` is required"})
		}
		call := &apiCall{run: func() (any, *vmmError) { return nil, s.loadSnapshot(p) }}
		if p.MemFilePath != "" {
			call.deprecation = "PUT /snapshot/load: mem_file_path field is deprecated."
			p.MemBackend = &firecracker.MemoryBackend{BackendType: "File", BackendPath: p.MemFilePath}
		}
		return call, nil
	}
	return nil, invalidPath("PUT", "/snapshot/"+op)
}

func (s *sim) routeGetBalloon(t []string) (*apiCall, *reqError) {
	sub, ok := at(t, 1)
	switch {
	case !ok:
		return &apiCall{run: s.getBalloon}, nil
	case sub == "statistics":
		return &apiCall{run: s.getBalloonStats}, nil
	case sub == "hinting":
		if st, _ := at(t, 2); st == "status" {
			return &apiCall{run: s.getHintingStatus}, nil
		}
	}
	return nil, invalidPath("GET", "/balloon/"+strings.Join(t[1:], "/"))
}

func (s *sim) routePatchBalloon(body []byte, t []string) (*apiCall, *reqError) {
	sub, ok := at(t, 1)
	switch {
	case !ok:
		if body == nil {
			return nil, emptyBody("PATCH")
		}
		return parseBody(s.met, body, "", tyBalloonUpdate, s.patchBalloon)
	case sub == "statistics":
		if body == nil {
			return nil, emptyBody("PATCH")
		}
		return parseBody(s.met, body, "", tyBalloonStatsUpdate, s.patchBalloonStats)
	case sub == "hinting":
		switch op, _ := at(t, 2); op {
		case "start":
			if body == nil {
				return &apiCall{run: func() (any, *vmmError) { return nil, s.startHinting(firecracker.BalloonStartCmd{}) }}, nil
			}
			return parseBody(s.met, body, "", tyHintingStart, s.startHinting)
		case "stop":
			return &apiCall{run: func() (any, *vmmError) { return nil, s.stopHinting() }}, nil
		}
	}
	return nil, invalidPath("PATCH", "/balloon/"+strings.Join(t[1:], "/"))
}
