package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func record(ts, uart int, pauseUs int) string {
	return fmt.Sprintf(`{"utc_timestamp_ms":%d,"uart":{"write_count":%d},"block":{"read_bytes":%d,"read_agg":{"min_us":1,"max_us":2,"sum_us":3}},"latencies_us":{"pause_vm":%d}}`+"\n", ts, uart, uart*10, pauseUs)
}

func uartTotal(c *vmCounters) float64 { return c.values[0] }

// TestCountersSurviveNewFiles: deltas are summed whatever happens to the
// file: records arriving in pieces, a VMM restart that starts a new file.
func TestCountersSurviveNewFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "metrics.json")
	c := &vmCounters{values: make([]float64, len(fcSeriesTable))}
	write := func(flag int, s string) {
		f, err := os.OpenFile(path, flag|os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	c.read(path) // no file yet: nothing, no error
	write(os.O_APPEND, record(1000, 5, 0)+record(2000, 7, 250))
	c.read(path)
	if uartTotal(c) != 12 || c.flushes != 2 {
		t.Fatalf("after two records: uart %v flushes %v; want 12, 2", uartTotal(c), c.flushes)
	}
	// A record written in two pieces counts once, when complete.
	r := record(3000, 3, 0)
	write(os.O_APPEND, r[:20])
	c.read(path)
	if c.flushes != 2 {
		t.Fatalf("half a record was counted")
	}
	write(os.O_APPEND, r[20:])
	c.read(path)
	if uartTotal(c) != 15 || c.flushes != 3 {
		t.Fatalf("after the rest: uart %v flushes %v; want 15, 3", uartTotal(c), c.flushes)
	}
	// A new file (restarted VMM): its deltas add on, the total never drops.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	write(0, record(4000, 2, 0))
	c.read(path)
	if uartTotal(c) != 17 {
		t.Fatalf("after a new file: uart %v; want 17", uartTotal(c))
	}
	// Gauges (firecracker's store metrics) are the latest value, in seconds.
	for i, s := range fcSeriesTable {
		if s.name == "nexus_fc_pause_latency_seconds" && c.values[i] != 0 {
			t.Fatalf("pause latency %v after a record without one; want the latest (0)", c.values[i])
		}
		if s.name == "nexus_fc_block_read_bytes_total" && c.values[i] != 170 {
			t.Fatalf("block read bytes %v; want 170", c.values[i])
		}
	}
	if c.last.UnixMilli() != 4000 {
		t.Fatalf("last flush %v; want the newest record's time", c.last)
	}
}

// TestWalkRecord: the scanner reads firecracker's shape and refuses, as a
// whole, lines that are not a complete record.
func TestWalkRecord(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
		want string
	}{
		{`{"utc_timestamp_ms":5,"uart":{"write_count":7,"x_agg":{"min_us":1}},"s":"a\"}b"}`, true, ".utc_timestamp_ms=5 uart.write_count=7 "},
		{` {"a":{"b":-1.5e3}} `, true, "a.b=-1.5e3 "},
		{`{}`, true, ""},
		{`{"uart":{"write_count":7}`, false, ""},
		{`{"uart":{"write_count":7},}`, false, ""},
		{`{"uart" {"write_count":7}}`, false, ""},
		{`{"uart":{"write_count":7}} trailing`, false, ""},
		{`[1,2]`, false, ""},
		{``, false, ""},
	} {
		got := ""
		ok := walkRecord([]byte(tc.line), func(g, k, n []byte) { got += string(g) + "." + string(k) + "=" + string(n) + " " })
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("walkRecord(%s) = %v %q; want %v %q", tc.line, ok, got, tc.ok, tc.want)
		}
	}
	// A torn record changes no total.
	c := &vmCounters{values: make([]float64, len(fcSeriesTable))}
	c.add([]byte(`{"utc_timestamp_ms":1,"uart":{"write_count":9},"block":{"read_bytes":`))
	if uartTotal(c) != 0 || c.flushes != 0 {
		t.Fatalf("a torn record counted: uart %v flushes %v", uartTotal(c), c.flushes)
	}
}
