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

// guest is the simulated guest: a serial console and a clock of guest run
// time. It uses a single runtime timer and no goroutine, so an idle VM costs
// no CPU between ticks.
type guest struct {
	mu      sync.Mutex
	out     io.Writer
	wrote   func(n int) // counts console bytes (uart.write_count)
	counter int
	ran     time.Duration // run time before since
	since   time.Time     // zero while paused
	timer   *time.Timer
	stopped bool
	now     func() time.Time
}

func newGuest(out io.Writer, wrote func(int), counter int, ran time.Duration) *guest {
	return &guest{out: out, wrote: wrote, counter: counter, ran: ran, now: time.Now}
}

func (g *guest) println(s string) {
	n, _ := io.WriteString(g.out, ConsolePrefix+s+"\n")
	if g.wrote != nil {
		g.wrote(n)
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
	return g.counter, ran
}

// arm sets the timer to the next whole second of run time. g.mu is held.
func (g *guest) arm() {
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
