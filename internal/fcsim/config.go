package fcsim

import (
	"errors"
	"os"

	"github.com/nexus-microvm/nexus/internal/firecracker"
)

// bootFromConfig is --config-file: configure from firecracker's VmmConfig
// JSON (kebab-case keys, unknown keys ignored) and boot, in the order
// VmResources::from_json applies it.
func (s *sim) bootFromConfig(data []byte) error {
	root, err := parseJSON(data)
	if err != nil {
		return errors.New("Invalid JSON: " + err.Error())
	}
	if root.kind != jObject {
		return errors.New("Invalid JSON: " + typeErr(root, "struct VmmConfig").Error())
	}
	for _, k := range []string{"boot-source", "drives"} {
		if root.get(k) == nil {
			return errors.New("Invalid JSON: " + (&serdeError{"missing field `" + k + "`", root.end}).Error())
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	steps := []struct {
		key   string
		t     *ty
		apply func(*jnode) *vmmError
	}{
		{"logger", tyLogger, each(s.putLogger)},
		{"metrics", tyMetrics, each(s.putMetrics)},
		{"machine-config", tyMachineConfig, func(n *jnode) *vmmError {
			var mc firecracker.MachineConfig
			unmarshalNode(n, &mc)
			return s.updateMachineConfig(firecracker.MachineConfigPatch{
				VcpuCount: &mc.VcpuCount, MemSizeMib: &mc.MemSizeMib, Smt: orFalse(mc.Smt),
				TrackDirtyPages: orFalse(mc.TrackDirtyPages), HugePages: strOr(mc.HugePages, "None"),
				CPUTemplate: strOr(mc.CPUTemplate, "None"),
			})
		}},
		{"cpu-config", nil, func(n *jnode) *vmmError { return s.configCPU(n) }},
		{"boot-source", tyBootSource, each(s.putBootSource)},
		{"drives", seqOf(tyDrive), eachOf(s.putDrive)},
		{"network-interfaces", seqOf(tyNet), eachOf(s.putNet)},
		{"vsock", tyVsock, each(s.putVsock)},
		{"balloon", tyBalloon, each(s.putBalloon)},
		{"mmds-config", tyMmdsConfig, each(s.putMMDSConfig)},
		{"entropy", tyEntropy, each(s.putEntropy)},
		{"pmem", seqOf(tyPmem), eachOf(s.putPmem)},
		{"memory-hotplug", tyHotplug, each(s.putHotplug)},
	}
	for _, st := range steps {
		n := root.get(st.key)
		if n == nil || n.kind == jNull && st.key != "boot-source" && st.key != "drives" {
			continue
		}
		if st.t != nil {
			if err := validate(n, st.t, false); err != nil {
				return errors.New("Invalid JSON: " + err.Error())
			}
		}
		if e := st.apply(n); e != nil {
			return errors.New(e.msg)
		}
	}
	if e := s.instanceStart(); e != nil {
		return errors.New(e.msg)
	}
	s.log.log(LevelInfo, threadMain, originMain, "Successfully started microvm that was configured from one single json")
	return nil
}

// configCPU accepts cpu-config as an object or as the path of a JSON file.
func (s *sim) configCPU(n *jnode) *vmmError {
	var body []byte
	if n.kind == jString {
		b, err := os.ReadFile(n.str)
		if err != nil {
			return fault("Unable to load custom CPU template: %s", ioErrText(err))
		}
		body = b
	} else {
		body = nodeBytes(n)
	}
	var c firecracker.CPUConfig
	if err := decodeBody(body, tyCPUConfig, &c); err != nil {
		return fault("Invalid JSON: %s", err)
	}
	return s.putCPUConfig(c)
}

func each[T any](apply func(T) *vmmError) func(*jnode) *vmmError {
	return func(n *jnode) *vmmError {
		var v T
		unmarshalNode(n, &v)
		return apply(v)
	}
}

func eachOf[T any](apply func(T) *vmmError) func(*jnode) *vmmError {
	return func(n *jnode) *vmmError {
		var vs []T
		unmarshalNode(n, &vs)
		for _, v := range vs {
			if e := apply(v); e != nil {
				return e
			}
		}
		return nil
	}
}
