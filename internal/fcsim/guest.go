package fcsim

import (
	"io"
	"strconv"
	"sync"
	"time"
)

// ConsolePrefix starts every line the simulated guest prints.
const ConsolePrefix = "sim-guest: "

// CounterPrefix starts the once-a-second line: "sim-guest: counter=<N>".
const CounterPrefix = ConsolePrefix + "counter="

// ReadyLine is what the simulated guest prints once per boot when it
// first runs (after InstanceStart, or after a snapshot load when the VM is
// first resumed), before any counter line. It is the line a Nexus guest
// image prints when its init is up, so the control plane detects
// readiness the same way for simulated and real guests.
const ReadyLine = "nexus-guest: ready"

// guest is the simulated guest: a serial console and a clock of guest run
// time. It uses a single runtime timer and no goroutine, so an idle VM costs
// no CPU between ticks.
type guest struct {
	mu      sync.Mutex
	out     io.Writer
	wrote   func(attempted, written int) // counts console bytes (uart, vcpu exits)
	failed  func(lost int, err error)    // a write the output refused (full pipe)
	ready   bool                         // ReadyLine was printed
	counter int
	// quiet: no counter lines (QuietEnv); the count goes on all the same.
	quiet   bool
	ran     time.Duration // run time before since
	since   time.Time     // zero while paused
	timer   *time.Timer
	stopped bool
	now     func() time.Time
}

func newGuest(out io.Writer, wrote func(int, int), failed func(int, error), counter int, ran time.Duration) *guest {
	return &guest{out: out, wrote: wrote, failed: failed, counter: counter, ran: ran, now: time.Now}
}

func (g *guest) println(s string) { g.write(ConsolePrefix + s + "\n") }

// write sends one line to the serial output, which never blocks (a sink
// or a non-blocking stdout): what does not fit is lost, as on the UART.
func (g *guest) write(line string) {
	n, err := io.WriteString(g.out, line)
	if g.wrote != nil {
		g.wrote(len(line), n)
	}
	if err != nil && g.failed != nil {
		g.failed(len(line)-n, err)
	}
}

// print writes console lines now, whatever the clock does.
func (g *guest) print(lines ...string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range lines {
		g.println(l)
	}
}

// resume starts (or restarts) the clock.
func (g *guest) resume() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped || !g.since.IsZero() {
		return
	}
	if !g.ready {
		g.ready = true
		g.write(ReadyLine + "\n")
	}
	g.since = g.now()
	g.arm()
}

// pause freezes the clock; paused time does not count.
func (g *guest) pause() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.since.IsZero() {
		return
	}
	g.ran += g.now().Sub(g.since)
	g.since = time.Time{}
	if g.timer != nil {
		g.timer.Stop()
	}
}

// stop ends the guest for good.
func (g *guest) stop() {
	g.pause()
	g.mu.Lock()
	g.stopped = true
	g.mu.Unlock()
}

// state returns the counter and the run time, for a snapshot.
func (g *guest) state() (int, time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	ran := g.ran
	if !g.since.IsZero() {
		ran += g.now().Sub(g.since)
	}
	if g.quiet {
		return max(g.counter, int(ran/time.Second)), ran
	}
	return g.counter, ran
}

// arm sets the timer to the next whole second of run time. g.mu is held.
func (g *guest) arm() {
	if g.quiet {
		return // the count is taken from the run time when asked (state)
	}
	elapsed := g.ran + g.now().Sub(g.since)
	wait := time.Duration(g.counter+1)*time.Second - elapsed
	if wait < 0 {
		wait = 0
	}
	if g.timer == nil {
		g.timer = time.AfterFunc(wait, g.tick)
	} else {
		g.timer.Reset(wait)
	}
}

func (g *guest) tick() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.since.IsZero() || g.stopped {
		return
	}
	elapsed := g.ran + g.now().Sub(g.since)
	for time.Duration(g.counter+1)*time.Second <= elapsed {
		g.counter++
		g.println("counter=" + strconv.Itoa(g.counter))
	}
	g.arm()
}
