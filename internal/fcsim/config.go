package fcsim

import (
	"encoding/json"
	"errors"
	"os"
	"strings"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
)

// vmmConfig is firecracker's VmmConfig, the --config-file document, as
// the models of internal/firecracker hold it.
type vmmConfig struct {
	Balloon           *model.Balloon             `json:"balloon"`
	Drives            []model.Drive              `json:"drives"`
	BootSource        model.BootSource           `json:"boot-source"`
	CPUConfig         json.RawMessage            `json:"cpu-config"`
	Logger            *model.Logger              `json:"logger"`
	MachineConfig     *model.MachineConfig       `json:"machine-config"`
	Metrics           *model.Metrics             `json:"metrics"`
	MmdsConfig        *model.MmdsConfig          `json:"mmds-config"`
	NetworkInterfaces []model.NetworkInterface   `json:"network-interfaces"`
	Vsock             *model.Vsock               `json:"vsock"`
	Entropy           *model.EntropyDevice       `json:"entropy"`
	Pmem              []model.Pmem               `json:"pmem"`
	MemoryHotplug     *model.MemoryHotplugConfig `json:"memory-hotplug"`
}

// configPrefixes maps the API's fault prefixes to the ones of
// ResourcesError, which --config-file errors carry instead.
var configPrefixes = [][2]string{
	{"Balloon config error: ", "Balloon device error: "},
	{"Drive config error: ", "Block device error: "},
	{"MMMDS config error: ", "MMDS config error: "},
	{"Network config error: ", "Network device error: "},
	{"Machine config error: ", "VM config error: "},
	{"Vsock config error: ", "Vsock device error: "},
	{"Entropy config error: ", "Entropy device error: "},
	{"Pmem config error: ", "Pmem device error: "},
}

// configError rewords a VMM fault the way VmResources::from_json reports it.
func configError(e *vmmError) error {
	for _, p := range configPrefixes {
		if rest, ok := strings.CutPrefix(e.msg, p[0]); ok {
			return errors.New(p[1] + rest)
		}
	}
	return errors.New(e.msg)
}

// errStartFromConfig marks a failed boot of a well-formed configuration
// (BuildFromJsonError::StartMicroVM rather than ParseFromJson).
type errStartFromConfig struct{ msg string }

func (e *errStartFromConfig) Error() string { return e.msg }

// bootFromConfig is --config-file: configure from firecracker's VmmConfig
// JSON (kebab-case keys, unknown keys ignored) and boot, in the order
// VmResources::from_json applies it.
func (s *sim) bootFromConfig(data []byte) error {
	var cfg vmmConfig
	if _, err := decodeBody(data, tyVmmConfig, &cfg); err != nil {
		return errors.New("Invalid JSON: " + err.Error())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var steps []func() *vmmError
	add := func(f func() *vmmError) { steps = append(steps, f) }
	if cfg.Logger != nil {
		l := *cfg.Logger
		add(func() *vmmError { return s.putLogger(l) })
	}
	if cfg.Metrics != nil {
		m := *cfg.Metrics
		add(func() *vmmError { return s.putMetrics(m) })
	}
	if cfg.MachineConfig != nil {
		up := machineUpdateFromPut(*cfg.MachineConfig)
		add(func() *vmmError { return s.updateMachineConfig(up) })
	}
	if len(cfg.CPUConfig) > 0 && string(cfg.CPUConfig) != "null" {
		add(func() *vmmError { return s.configCPU(cfg.CPUConfig) })
	}
	add(func() *vmmError { return s.putBootSource(cfg.BootSource) })
	for _, d := range cfg.Drives {
		add(func() *vmmError { return s.putDrive(d) })
	}
	for _, n := range cfg.NetworkInterfaces {
		add(func() *vmmError { return s.putNet(n) })
	}
	if cfg.Vsock != nil {
		v := *cfg.Vsock
		add(func() *vmmError { return s.putVsock(v) })
	}
	if cfg.Balloon != nil {
		b := *cfg.Balloon
		add(func() *vmmError { return s.putBalloon(b) })
	}
	if cfg.MmdsConfig != nil {
		c := *cfg.MmdsConfig
		add(func() *vmmError { return s.putMMDSConfig(c) })
	}
	if cfg.Entropy != nil {
		e := *cfg.Entropy
		add(func() *vmmError { return s.putEntropy(e) })
	}
	for _, p := range cfg.Pmem {
		add(func() *vmmError { return s.putPmem(p) })
	}
	if cfg.MemoryHotplug != nil {
		h := *cfg.MemoryHotplug
		add(func() *vmmError { return s.putHotplug(h) })
	}
	for _, step := range steps {
		if e := step(); e != nil {
			return configError(e)
		}
	}
	if e := s.instanceStart(); e != nil {
		return &errStartFromConfig{strings.TrimPrefix(e.msg, "Start microvm error: ")}
	}
	s.log.log(LevelInfo, threadMain, originMain, "Successfully started microvm that was configured from one single json")
	return nil
}

// configCPU accepts cpu-config as an object or as the path of a JSON file.
func (s *sim) configCPU(raw json.RawMessage) *vmmError {
	body := []byte(raw)
	var path string
	if json.Unmarshal(raw, &path) == nil {
		b, err := os.ReadFile(s.opts.dir.at(path))
		if err != nil {
			return fault("File operation error: %s", ioErrText(err))
		}
		body = b
	}
	var c model.CPUConfig
	if _, err := decodeBody(body, tyCPUConfig, &c); err != nil {
		return fault("Invalid JSON: %s", err)
	}
	return s.putCPUConfig(c)
}
