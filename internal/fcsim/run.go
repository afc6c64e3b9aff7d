package fcsim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/firecracker/model"
)

// ExitAbort is what Run returns where firecracker panics and aborts (a bad
// --id, an unreadable --config-file): Exit turns it into SIGABRT.
const ExitAbort = -1

// WorkDirEnv, for a simulator run inside another process (a hollow
// agent), is the directory relative paths resolve against: what the
// working directory is for a firecracker process.
const WorkDirEnv = "FC_SIM_WORKDIR"

// NoHostTapEnv set to "1" makes the simulator accept any valid TAP name
// without opening /dev/net/tun (hollow agents keep TAPs in memory; a real
// open would create host links, as root, or fail, as anyone else).
const NoHostTapEnv = "FC_SIM_NO_HOST_TAP"

// QuietEnv set to "1" keeps the simulated guest from printing its counter
// line every second (it still prints its ready line, and a snapshot still
// saves the count): thousands of simulated VMs on one small host, in the
// scale benchmark, would otherwise spend it on console lines nobody reads.
const QuietEnv = "FC_SIM_QUIET"

// MetricsIntervalEnv shortens the 60 s periodic metrics flush for tests: a
// Go duration ("200ms") or a number of milliseconds.
const MetricsIntervalEnv = "FC_SIM_METRICS_INTERVAL"

// Exit ends the process with code, as firecracker would: ExitAbort dies of
// SIGABRT (firecracker is built with panic = "abort"), anything else is a
// normal exit.
func Exit(code int) {
	if code == ExitAbort {
		// A crash-level traceback makes the Go runtime end a panic by
		// raising SIGABRT with the default action.
		debug.SetTraceback("crash")
		panic("firecracker-sim: aborting")
	}
	os.Exit(code)
}

// Run is firecracker's main. argv excludes the program name. It returns
// the exit code once the guest has shut down or a fatal error occurred; when
// ctx ends first it releases everything and returns 0 without the exit log
// line, like a killed process (the API socket stays, as it would).
func Run(ctx context.Context, argv []string, stdout, stderr io.Writer, getenv func(string) string) int {
	started := time.Now()
	var dir hostDir
	if getenv != nil {
		dir = hostDir(getenv(WorkDirEnv))
	}
	log := newLogger("anonymous-instance", stdout)
	log.dir = dir
	fail := func(code int, msg, dbg string) int {
		log.log(LevelError, threadMain, originMain, "%s", msg)
		fmt.Fprintf(stderr, "Error: %s\n", dbg)
		log.log(LevelError, threadMain, originMain, "Firecracker exiting with error. exit_code=%d", code)
		return code
	}
	panicAbort := func(msg string) int {
		log.log(LevelError, threadMain, originMain, "Firecracker panicked at src/firecracker/src/main.rs:%d:%d:\n%s", 356, 41, msg)
		fmt.Fprintf(stderr, "thread 'main' panicked at src/firecracker/src/main.rs:356:41:\n%s\n", msg)
		return ExitAbort
	}

	args, err := parseArgs(argv)
	if err != nil {
		return fail(model.ExitBadArgs, "Arguments parsing error: "+err.Error()+" \n\nFor more information try --help.",
			"ParseArguments("+argErrorDebug(err.Error())+")")
	}
	switch {
	case args.help:
		fmt.Fprintf(stdout, "Firecracker v%s\n\n%s\n", Version, helpText())
		return 0
	case args.flag("version"):
		fmt.Fprintf(stdout, "Firecracker v%s\n\n", Version)
		return 0
	case args.flag("snapshot-version"):
		fmt.Fprintf(stdout, "v%s\n", versionString(snapshotVersion()))
		return 0
	case args.flag("describe-snapshot"):
		p, _ := args.value("describe-snapshot")
		v, err := describeSnapshot(p)
		if err != nil {
			return fail(model.ExitError, "When printing Snapshot Data format: "+err.Error(), "PrintSnapshotDataFormat")
		}
		fmt.Fprintln(stdout, v)
		return 0
	}

	id, _ := args.value("id")
	if !model.ValidInstanceID(id) {
		return panicAbort("Invalid instance ID: " + id)
	}
	log.id = id
	var lu loggerUpdate
	lu.path, _ = args.value("log-path")
	if v, ok := args.value("level"); ok {
		lv, ok := parseLevel(v)
		if !ok {
			return fail(model.ExitBadLevel,
				"Invalid value for logger level: Failed to parse string to level filter: "+v+".Possible values: [Error, Warning, Info, Debug]",
				"InvalidLogLevel(LevelFilterFromStr("+rustDebugString(v)+"))")
		}
		lu.level = &lv
	}
	if args.flag("show-level") {
		lu.showLevel = model.Bool(true)
	}
	if args.flag("show-log-origin") {
		lu.showOrigin = model.Bool(true)
	}
	if v, ok := args.value("module"); ok {
		lu.module = &v
	}
	if err := log.update(lu); err != nil {
		return fail(model.ExitError, "Could not initialize logger: Failed to open target file: "+ioErrText(err), "LoggerInitialization")
	}
	defer log.close()
	log.log(LevelInfo, threadMain, originMain, "Running Firecracker v%s", Version)

	met := newMetrics()
	defer met.close()
	if p, ok := args.value("metrics-path"); ok {
		if err := met.init(dir.at(p)); err != nil {
			return fail(model.ExitError, "Could not initialize metrics: Cannot initialize the metrics system due to bad user input: "+ioErrText(err), "MetricsInitialization")
		}
	}
	if p, ok := args.value("seccomp-filter"); ok {
		if _, err := os.Stat(dir.at(p)); err != nil {
			return fail(model.ExitError, "Seccomp error: Filter load error: "+ioErrText(err), "SeccompFilter")
		}
	}
	var configJSON, metadata []byte
	if p, ok := args.value("config-file"); ok {
		if configJSON, err = os.ReadFile(dir.at(p)); err != nil {
			return panicAbort("Unable to open or read from the configuration file: " + ioErrText(err))
		}
	}
	if p, ok := args.value("metadata"); ok {
		if metadata, err = os.ReadFile(dir.at(p)); err != nil {
			return panicAbort("Unable to open or read from the mmds content file: " + ioErrText(err))
		}
	}
	opts := options{id: id, bootTimer: args.flag("boot-timer"), enablePCI: args.flag("enable-pci"),
		metricsPeriod: metricsPeriod(getenv), startTime: started, startDelay: envDuration(getenv, StartDelayEnv),
		noHostTap: getenv != nil && getenv(NoHostTapEnv) == "1", quiet: getenv != nil && getenv(QuietEnv) == "1", dir: dir}
	v, _ := args.value("http-api-max-payload-size")
	var ok bool
	if opts.maxPayload, ok = parseSizeFlag(v); !ok {
		return panicAbort("'http-api-max-payload-size' parameter expected to be of 'usize' type.")
	}
	opts.mmdsLimit = opts.maxPayload
	if v, set := args.value("mmds-size-limit"); set {
		if opts.mmdsLimit, ok = parseSizeFlag(v); !ok {
			return panicAbort("'mmds-size-limit' parameter expected to be of 'usize' type.")
		}
	}

	s := newSim(opts, log, met, stdout)
	defer s.close()
	if metadata != nil {
		var v any
		if err := json.Unmarshal(metadata, &v); err != nil {
			return panicAbort("MMDS error: metadata provided not valid json")
		}
		if e := s.mmds.put(v); e != nil {
			return fail(model.ExitError, "RunWithApiError error: Failed to build MicroVM: Populating MMDS from file failed: The MMDS patch request doesn't fit..",
				"RunWithApi(BuildMicroVmError(PopulateMmds(DataStoreLimitExceeded)))")
		}
		log.log(LevelInfo, threadMain, originVMM, "Successfully added metadata to mmds from file")
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !args.flag("no-api") {
		sock, _ := args.value("api-sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if errors.Is(err, syscall.EADDRINUSE) {
			return fail(model.ExitError, "RunWithApiError error: Failed to open the API socket at: "+sock+". Check that it is not already used.",
				"RunWithApi(FailedToBindSocket("+rustDebugString(sock)+"))")
		}
		if err != nil {
			text := ioErrText(err)
			return fail(model.ExitError, "RunWithApiError error: Failed to bind and run the HTTP server: IO error: "+text,
				"RunWithApi(FailedToBindAndRunHttpServer(IOError(Os { code: "+errnoCode(err)+" })))")
		}
		log.log(LevelInfo, threadMain, originAPIAdapter, "Listening on API socket (%s).", rustDebugString(sock))
		// Firecracker never removes its socket; neither do we.
		ln.SetUnlinkOnClose(false)
		srv := &apiServer{ln: ln, maxPayload: opts.maxPayload, handle: s.handleHTTP, after: s.afterResponse}
		// As in firecracker, the socket is bound first but requests are
		// answered only once a --config-file boot is done: a client never
		// sees the VM half-built.
		if err := s.bootConfig(configJSON, fail, "RunWithApiError error: ", "RunWithApi"); err != nil {
			ln.Close()
			return *err
		}
		configJSON = nil
		done := make(chan struct{})
		go func() {
			srv.serve(runCtx)
			close(done)
		}()
		defer func() {
			cancel()
			<-done
		}()
		log.log(LevelInfo, threadAPI, originAPI, "API server started.")
		reportStartup(met, args, started)
	}
	if err := s.bootConfig(configJSON, fail, "RunWithoutApiError error: ", "RunWithoutApiError"); err != nil {
		return *err
	}
	select {
	case <-ctx.Done():
		return 0
	case code := <-s.exitCh:
		if code != 0 {
			// The only non-zero exit of a running simulator is a failed
			// snapshot load, which firecracker reports as a failed build.
			return fail(code, "RunWithApiError error: Failed to build MicroVM: Loading snapshot failed..", "RunWithApi(BuildMicroVmError(Restore))")
		}
		log.log(LevelInfo, threadMain, originMain, "Firecracker exiting successfully. exit_code=0")
		return 0
	}
}

// reportStartup stores the api_server metrics: wall and CPU time from
// process start (or the jailer's --start-time-us) to a listening socket.
func reportStartup(met *metrics, args *arguments, started time.Time) {
	us := uint64(time.Since(started).Microseconds())
	if v, ok := args.value("start-time-us"); ok {
		if t0, err := strconv.ParseUint(v, 10, 64); err == nil {
			var ts unix.Timespec
			if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil && uint64(ts.Nano()/1000) > t0 {
				us = uint64(ts.Nano()/1000) - t0
			}
		}
	}
	met.set("api_server.process_startup_time_us", us)
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts) == nil {
		cpu := uint64(ts.Nano() / 1000)
		if v, ok := args.value("start-time-cpu-us"); ok {
			if t0, err := strconv.ParseUint(v, 10, 64); err == nil && cpu > t0 {
				cpu -= t0
			}
		}
		met.set("api_server.process_startup_time_cpu_us", cpu)
	}
}

// StartDelayEnv makes InstanceStart answer only after this long (e.g.
// "2s"), standing for a slow boot in tests of interrupted operations.
const StartDelayEnv = "FC_SIM_START_DELAY"

func envDuration(getenv func(string) string, key string) time.Duration {
	if getenv == nil {
		return 0
	}
	d, err := time.ParseDuration(strings.TrimSpace(getenv(key)))
	if err != nil || d < 0 {
		return 0
	}
	return d
}

func metricsPeriod(getenv func(string) string) time.Duration {
	const def = 60 * time.Second
	if getenv == nil {
		return def
	}
	v := strings.TrimSpace(getenv(MetricsIntervalEnv))
	if v == "" {
		return def
	}
	if ms, err := strconv.Atoi(v); err == nil && ms > 0 {
		return time.Duration(ms) * time.Millisecond
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return d
	}
	return def
}

// argErrorDebug renders an arg_parser error's Debug form for stderr.
func argErrorDebug(msg string) string {
	quoted := func() string {
		i := strings.IndexByte(msg, '\'')
		j := strings.IndexByte(msg[i+1:], '\'')
		if i < 0 || j < 0 {
			return `""`
		}
		return rustDebugString(msg[i+1 : i+1+j])
	}
	switch {
	case strings.HasPrefix(msg, "Found argument"):
		return "UnexpectedArgument(" + quoted() + ")"
	case strings.Contains(msg, "more than once"):
		return "DuplicateArgument(" + quoted() + ")"
	case strings.Contains(msg, "requires a value"):
		return "MissingValue(" + quoted() + ")"
	case strings.Contains(msg, "cannot be used together"):
		return "ForbiddenArgument(" + quoted() + ")"
	}
	return "MissingArgument(" + quoted() + ")"
}

// bootConfig boots from a --config-file document, if there is one; on
// failure it returns the exit code fail chose. prefix and variant are the
// MainError's Display prefix and Debug name for the way the process runs.
func (s *sim) bootConfig(configJSON []byte, fail func(int, string, string) int, prefix, variant string) *int {
	if configJSON == nil {
		return nil
	}
	if err := s.bootFromConfig(configJSON); err != nil {
		msg, dbg := "Configuration for VMM from one single json failed: "+err.Error(), "ParseFromJson"
		var start *errStartFromConfig
		if errors.As(err, &start) {
			msg, dbg = "Could not Start MicroVM from one single json: "+err.Error(), "StartMicroVM"
		}
		code := fail(model.ExitError, prefix+"Failed to build MicroVM from Json: "+msg,
			variant+"(BuildFromJson("+dbg+"("+rustDebugString(err.Error())+")))")
		return &code
	}
	return nil
}

// errnoCode is the errno of err, for a Debug rendering.
func errnoCode(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return strconv.Itoa(int(errno))
	}
	return "0"
}
