package fcsim

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Level is a firecracker log level; higher is more verbose.
type Level int

// Firecracker's levels.
const (
	LevelOff Level = iota
	LevelError
	LevelWarn
	LevelInfo
	LevelDebug
	LevelTrace
)

var levelNames = [...]string{"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"}

// parseLevel accepts firecracker's level names, case-insensitively.
func parseLevel(s string) (Level, bool) {
	switch strings.ToLower(s) {
	case "off":
		return LevelOff, true
	case "error":
		return LevelError, true
	case "warning", "warn":
		return LevelWarn, true
	case "info":
		return LevelInfo, true
	case "debug":
		return LevelDebug, true
	case "trace":
		return LevelTrace, true
	}
	return 0, false
}

// origin is where firecracker would have logged a line from: its module
// path (for the module filter) and source file (for show_log_origin).
type origin struct {
	module string
	file   string
	line   int
}

var (
	originMain       = origin{"firecracker", "src/firecracker/src/main.rs", 256}
	originAPI        = origin{"firecracker::api_server", "src/firecracker/src/api_server/mod.rs", 95}
	originAPIAdapter = origin{"firecracker::api_server_adapter", "src/firecracker/src/api_server_adapter.rs", 184}
	originRequest    = origin{"firecracker::api_server::parsed_request", "src/firecracker/src/api_server/parsed_request.rs", 61}
	originVMM        = origin{"vmm::rpc_interface", "src/vmm/src/rpc_interface.rs", 412}
	originBuilder    = origin{"vmm::builder", "src/vmm/src/builder.rs", 280}
	originPersist    = origin{"vmm::persist", "src/vmm/src/persist.rs", 390}
	originVcpu       = origin{"vmm::vstate::vcpu", "src/vmm/src/vstate/vcpu.rs", 310}
	originDevices    = origin{"vmm::devices::pseudo::boot_timer", "src/vmm/src/devices/pseudo/boot_timer.rs", 34}
	originSerial     = origin{"vmm::devices::legacy::serial", "src/vmm/src/devices/legacy/serial.rs", 428}
)

// Thread names that appear in firecracker's log lines.
const (
	threadMain = "main"
	threadAPI  = "fc_api"
	threadVcpu = "fc_vcpu 0"
)

// logger writes firecracker's log lines. It is safe for concurrent use.
type logger struct {
	dir        hostDir // relative paths resolve here
	mu         sync.Mutex
	id         string
	level      Level
	showLevel  bool
	showOrigin bool
	module     string
	out        io.Writer
	file       *sink // when out is a file we opened
	now        func() time.Time
	missed     func() // counts a failed write (logger.missed_log_count)
}

func newLogger(id string, stdout io.Writer) *logger {
	return &logger{id: id, level: LevelInfo, out: stdout, now: time.Now}
}

// loggerUpdate is one PUT /logger or the logging flags; nil keeps a value,
// except level: Logger::update sets the level on every call, to Info when
// none is given.
type loggerUpdate struct {
	path       string
	level      *Level
	showLevel  *bool
	showOrigin *bool
	module     *string
}

// update applies u like firecracker's Logger::update: the target file is
// opened first, and nothing changes when it cannot be.
func (l *logger) update(u loggerUpdate) error {
	var f *sink
	if u.path != "" {
		var err error
		if f, err = openSink(l.dir.at(u.path)); err != nil {
			return err
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if f != nil {
		if l.file != nil {
			l.file.Close()
		}
		l.file, l.out = f, f
	}
	l.level = LevelInfo
	if u.level != nil {
		l.level = *u.level
	}
	if u.showLevel != nil {
		l.showLevel = *u.showLevel
	}
	if u.showOrigin != nil {
		l.showOrigin = *u.showOrigin
	}
	if u.module != nil {
		l.module = *u.module
	}
	return nil
}

func (l *logger) enabled(lv Level) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return lv <= l.level
}

func (l *logger) log(lv Level, thread string, o origin, format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lv > l.level || lv == LevelOff {
		return
	}
	if l.module != "" && !strings.HasPrefix(o.module, l.module) {
		return
	}
	var sb strings.Builder
	sb.WriteString(l.now().Format("2006-01-02T15:04:05.000000000"))
	sb.WriteString(" [")
	sb.WriteString(l.id)
	sb.WriteByte(':')
	sb.WriteString(thread)
	if l.showLevel {
		sb.WriteByte(':')
		sb.WriteString(levelNames[lv])
	}
	if l.showOrigin {
		fmt.Fprintf(&sb, ":%s:%d", o.file, o.line)
	}
	sb.WriteString("] ")
	if len(args) == 0 {
		sb.WriteString(format)
	} else {
		fmt.Fprintf(&sb, format, args...)
	}
	sb.WriteByte('\n')
	if _, err := io.WriteString(l.out, sb.String()); err != nil && l.missed != nil {
		l.missed()
	}
}

func (l *logger) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
}
