package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/testutil"
)

// TestMetricsEndpointAccess: /healthz is open; /metrics takes the join
// token or the metrics token; the metrics token opens nothing else.
func TestMetricsEndpointAccess(t *testing.T) {
	e := newEnv(t)
	e.agent.cfg.MetricsToken = "metrics-only"
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/healthz", "", 200},
		{"/metrics", "", 401},
		{"/metrics", "nope", 401},
		{"/metrics", testToken, 200},
		{"/metrics", "metrics-only", 200},
		{"/agent/v1/health", "metrics-only", 401},
		{"/agent/v1/inventory", "metrics-only", 401},
		{"/no/such/path", "", 401},
	} {
		resp, raw := e.do(http.MethodGet, tc.path, tc.token, nil)
		if resp.StatusCode != tc.want {
			t.Errorf("GET %s with token %q = %d; want %d: %s", tc.path, tc.token, resp.StatusCode, tc.want, raw)
		}
	}
}

// scrapeSeries returns the value of each series of name (by vm_id) in the
// agent's /metrics text, and the whole text.
func (e *env) scrapeSeries(t *testing.T, name string) (map[string]float64, []byte) {
	t.Helper()
	resp, raw := e.do(http.MethodGet, "/metrics", testToken, nil)
	if resp.StatusCode != 200 {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, raw)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(raw), "\n") {
		rest, ok := strings.CutPrefix(line, name+`{vm_id="`)
		if !ok {
			continue
		}
		id, val, _ := strings.Cut(rest, `"} `)
		v, err := strconv.ParseFloat(val, 64)
		if err != nil {
			t.Fatalf("series line %q: %v", line, err)
		}
		out[id] = v
	}
	return out, raw
}

// TestFirecrackerCountersMonotonic: firecracker writes each counter as the
// delta since its previous flush; /metrics shows the running total, equal
// to the sum of every record in the file, growing across flushes. The
// stats route (what the console charts) says the same.
func TestFCCountersMonotonic(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id, kernel, rootfs := e.newVM()
	e.boot(ctx, id, kernel, rootfs)
	fc := e.client.Firecracker(id)

	var prev, prevFlushes float64
	for i := range 4 {
		time.Sleep(400 * time.Millisecond) // the guest prints in between
		if err := fc.FlushMetrics(ctx); err != nil {
			t.Fatal(err)
		}
		uart, raw := e.scrapeSeries(t, "nexus_fc_uart_writes_total")
		flushes, _ := e.scrapeSeries(t, "nexus_fc_metrics_flushes_total")
		if uart[id] < prev {
			t.Fatalf("scrape %d: uart writes went down: %v → %v", i, prev, uart[id])
		}
		if flushes[id] <= prevFlushes {
			t.Fatalf("scrape %d: flushes %v after %v; want more", i, flushes[id], prevFlushes)
		}
		prev, prevFlushes = uart[id], flushes[id]
		if i == 0 {
			testutil.Promtool(t, "agent /metrics", raw)
		}
	}
	if want := sumInFile(t, e.layout.MetricsPath(id), "uart", "write_count"); prev != want {
		t.Fatalf("uart writes total = %v; the file's records add up to %v", prev, want)
	}
	if prev == 0 {
		t.Fatal("the guest printed its counter but no uart write was counted")
	}
	for _, series := range []string{"nexus_vmm_resident_memory_bytes", "nexus_vmm_cpu_seconds_total"} {
		v, _ := e.scrapeSeries(t, series)
		if _, ok := v[id]; !ok {
			t.Errorf("%s has no series for the VM", series)
		}
	}
	st, err := e.client.Stats(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range st.Samples {
		if s.Name == "nexus_fc_uart_writes_total" {
			found = true
			if s.Value != prev || s.Type != "counter" {
				t.Fatalf("stats say %+v; /metrics said %v", s, prev)
			}
		}
	}
	if !found {
		t.Fatalf("stats lack the uart series: %+v", st.Samples)
	}
	// A stopped VM leaves /metrics and the stats route.
	if err := e.client.Stop(ctx, id, agentapi.StopRequest{GraceMs: 100}); err != nil {
		t.Fatal(err)
	}
	if uart, _ := e.scrapeSeries(t, "nexus_fc_uart_writes_total"); len(uart) != 0 {
		t.Fatalf("series of a stopped VM: %v", uart)
	}
	if _, err := e.client.Stats(ctx, id); err == nil {
		t.Fatal("stats of a stopped VM answered")
	}
}

// sumInFile adds group.key over every record of a metrics file.
func sumInFile(t *testing.T, path, group, key string) float64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var rec map[string]json.RawMessage
		var g map[string]json.RawMessage
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("record %.80q: %v", line, err)
		}
		if err := json.Unmarshal(rec[group], &g); err != nil {
			t.Fatalf("record %.80q: group %s: %v", line, group, err)
		}
		v, err := strconv.ParseFloat(string(g[key]), 64)
		if err != nil {
			t.Fatalf("record %.80q: %s.%s: %v", line, group, key, err)
		}
		sum += v
	}
	return sum
}

// sseEvent is one event (or comment) of a stream.
type sseEvent struct {
	id, event, data, comment string
}

// readEvents parses Server-Sent Events from r into ch until r ends.
func readEvents(r io.Reader, ch chan<- sseEvent) {
	defer close(ch)
	sc := bufio.NewScanner(r)
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev != (sseEvent{}) {
				ch <- ev
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, ":"):
			ev.comment = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
}

func (e *env) openStream(t *testing.T, query, lastID string) (*http.Response, chan sseEvent) {
	t.Helper()
	req, _ := http.NewRequest("GET", e.srv.URL+query, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("stream %s: %d %s", query, resp.StatusCode, raw)
	}
	ch := make(chan sseEvent, 64)
	go readEvents(resp.Body, ch)
	t.Cleanup(func() { resp.Body.Close() })
	return resp, ch
}

func next(t *testing.T, ch <-chan sseEvent, d time.Duration) sseEvent {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("stream ended")
		}
		return ev
	case <-time.After(d):
		t.Fatalf("no event within %s", d)
	}
	return sseEvent{}
}

// TestLogStreamResume: a client that drops and reconnects with the last
// id it saw gets every later line once: no gap, no duplicate, even for
// lines written while it was away.
func TestLogStreamResume(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id, kernel, rootfs := e.newVM()
	e.boot(ctx, id, kernel, rootfs)
	path := fmt.Sprintf("/agent/v1/vms/%s/logs/stream?source=console&tail=3", id)

	resp, ch := e.openStream(t, path, "")
	var got []string
	var last string
	for len(got) < 4 {
		ev := next(t, ch, 5*time.Second)
		if ev.comment != "" {
			continue
		}
		if ev.id == "" || ev.event != "console" {
			t.Fatalf("event %+v: want an id and event console", ev)
		}
		got = append(got, ev.data)
		last = ev.id
	}
	resp.Body.Close()
	time.Sleep(1500 * time.Millisecond) // the guest prints while we are away

	_, ch = e.openStream(t, path, last)
	for {
		ev := next(t, ch, 5*time.Second)
		if ev.comment != "" {
			continue
		}
		got = append(got, ev.data)
		last = ev.id
		if len(got) >= 7 {
			break
		}
	}
	// What the client saw is exactly the console from the tail's start to
	// the last id, line by line.
	b, err := os.ReadFile(e.layout.ConsolePath(id))
	if err != nil {
		t.Fatal(err)
	}
	end, _ := strconv.Atoi(last)
	lines := strings.Split(strings.TrimSuffix(string(b[:end]), "\n"), "\n")
	want := lines[len(lines)-len(got):]
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(lines) < len(got) {
		t.Fatalf("resumed stream:\n%s\nconsole:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A bad Last-Event-ID is a 400, not a stream from somewhere.
	req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Last-Event-ID", "banana")
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 400 {
		t.Fatalf("Last-Event-ID banana: %d; want 400", r2.StatusCode)
	}
}

// TestLogStreamKeepAlive: headers arrive at once, before any line, and an
// idle stream sends comments.
func TestLogStreamKeepAlive(t *testing.T) {
	e := newEnv(t)
	e.agent.cfg.KeepAlive = 300 * time.Millisecond
	ctx := context.Background()
	id, kernel, rootfs := e.newVM()
	e.boot(ctx, id, kernel, rootfs)
	start := time.Now()
	// firecracker's own log is quiet once the VM runs.
	_, ch := e.openStream(t, "/agent/v1/vms/"+id+"/logs/stream?source=fc", "")
	if d := time.Since(start); d > time.Second {
		t.Fatalf("headers took %s; want them at once", d)
	}
	deadline := time.After(3 * time.Second)
	for {
		select {
		case ev := <-ch:
			if ev.comment == "keep-alive" {
				return
			}
		case <-deadline:
			t.Fatal("no keep-alive comment on an idle stream within 3s")
		}
	}
}
