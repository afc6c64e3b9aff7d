package fcsim

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// A quiet guest (QuietEnv) says it is ready and then nothing, and keeps
// no timer; its count still follows its run time, paused time left out,
// so a snapshot of it saves the same count a chatty guest's would.
func TestQuietGuest(t *testing.T) {
	var out bytes.Buffer
	now := time.Unix(1000, 0)
	g := newGuest(&out, nil, nil, 0, 0)
	g.now = func() time.Time { return now }
	g.quiet = true
	g.resume()
	now = now.Add(2500 * time.Millisecond)
	g.pause()
	now = now.Add(time.Hour) // paused: does not count
	g.resume()
	now = now.Add(time.Second)
	counter, ran := g.state()
	g.stop()
	if counter != 3 || ran != 3500*time.Millisecond {
		t.Errorf("state = %d, %s; want 3, 3.5s", counter, ran)
	}
	if got := out.String(); got != ReadyLine+"\n" || strings.Contains(got, CounterPrefix) {
		t.Errorf("console = %q; want the ready line alone", got)
	}
	if g.timer != nil {
		t.Error("a quiet guest armed a timer")
	}
}
