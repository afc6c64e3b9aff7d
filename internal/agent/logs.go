package agent

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nexus-microvm/nexus/internal/agentapi"
	"github.com/nexus-microvm/nexus/internal/apierr"
	"github.com/nexus-microvm/nexus/internal/httpmw"
)

const (
	defaultTail = 100
	maxTail     = 10000
)

func parseTail(r *http.Request) (int, error) {
	s := r.URL.Query().Get("tail")
	if s == "" {
		return defaultTail, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > maxTail {
		return 0, apierr.BadRequest("tail must be an integer between 0 and %d", maxTail)
	}
	return n, nil
}

// logPath picks fc.log or console.log of a VM.
func (a *Agent) logPath(id, source string) (string, string, error) {
	switch source {
	case "", "fc":
		return "fc", a.cfg.Layout.LogPath(id), nil
	case "console":
		return "console", a.cfg.Layout.ConsolePath(id), nil
	}
	return "", "", apierr.BadRequest("source must be fc or console, not %q", source)
}

func (a *Agent) logs(w http.ResponseWriter, r *http.Request, id string) {
	n, err := parseTail(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	src, path, err := a.logPath(id, r.URL.Query().Get("source"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := os.Stat(a.cfg.Layout.VMDir(id)); errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.NotFound("vm run dir", id))
		return
	}
	lines, err := tailFile(a.openInVMs, path, n)
	if err != nil {
		a.fail(w, r, readErr(err, path))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.LogLines{Source: src, Path: path, Lines: lines})
}

// tailFiles serves GET /files/tail?path= (dev mode): any file under the VM
// run dirs, symlinks resolved before the check.
func (a *Agent) tailFiles(w http.ResponseWriter, r *http.Request) {
	if !a.cfg.DevMode {
		a.fail(w, r, apierr.Forbidden("file tail is available in dev mode only").
			WithSuggestion("use GET /agent/v1/vms/{id}/logs"))
		return
	}
	n, err := parseTail(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	p := r.URL.Query().Get("path")
	if p == "" || !filepath.IsAbs(p) {
		a.fail(w, r, apierr.BadRequest("path must be an absolute path under %s", a.cfg.Layout.VMsDir()))
		return
	}
	real := canonical(filepath.Clean(p))
	if !within(canonical(a.cfg.Layout.VMsDir()), real) {
		a.fail(w, r, apierr.Forbidden("path %q is outside the VM run dirs %s", p, a.cfg.Layout.VMsDir()))
		return
	}
	fi, err := os.Stat(real)
	if errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.NotFound("file", p))
		return
	}
	if err != nil || !fi.Mode().IsRegular() {
		a.fail(w, r, apierr.BadRequest("path %q is not a regular file", p))
		return
	}
	lines, err := tailFile(a.openInVMs, real, n)
	if err != nil {
		a.fail(w, r, readErr(err, p))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.LogLines{Source: "file", Path: p, Lines: lines})
}

func (a *Agent) metrics(w http.ResponseWriter, r *http.Request, id string) {
	if _, err := os.Stat(a.cfg.Layout.VMDir(id)); errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.NotFound("vm run dir", id))
		return
	}
	lines, err := tailFile(a.openInVMs, a.cfg.Layout.MetricsPath(id), 1)
	if err != nil {
		a.fail(w, r, readErr(err, a.cfg.Layout.MetricsPath(id)))
		return
	}
	var rec agentapi.MetricsRecord
	if len(lines) == 1 && json.Valid([]byte(lines[0])) {
		rec.Record = json.RawMessage(lines[0])
		var ts struct {
			UTC int64 `json:"utc_timestamp_ms"`
		}
		if json.Unmarshal(rec.Record, &ts) == nil && ts.UTC > 0 {
			t := time.UnixMilli(ts.UTC).UTC()
			rec.At = &t
		}
	}
	writeJSON(w, http.StatusOK, rec)
}

// maxTailBytes bounds what a tail reads from the end of a file: a guest
// that writes megabytes without a newline must not make one request cost
// seconds of CPU or a huge answer.
const maxTailBytes = 4 << 20

// maxLineBytes cuts longer lines in tails and streams.
const maxLineBytes = 64 << 10

// readErr is the answer to a log or metrics file that could not be read:
// 403 for one reached through a symbolic link (or not a regular file),
// 500 otherwise.
func readErr(err error, path string) error {
	if errors.Is(err, errSymlink) {
		return apierr.Forbidden("%s is a symbolic link, lies behind one, or is not a regular file: the agent does not follow links in VM run dirs", path)
	}
	return apierr.Internal(err)
}

// opener opens a file for reading (Agent.openInVMs: no symbolic links).
type opener func(path string) (*os.File, error)

// tailFile returns the last n lines of path, reading backwards in blocks
// and counting newlines only in each new block. A missing file has no lines.
func tailFile(open opener, path string, n int) ([]string, error) {
	lines := []string{}
	if n == 0 {
		return lines, nil
	}
	f, err := open(path)
	if errors.Is(err, os.ErrNotExist) {
		return lines, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tail %s: %w", path, err)
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("tail %s: %w", path, err)
	}
	const block = 64 << 10
	var blocks [][]byte // newest first
	newlines, read := 0, int64(0)
	pos := end
	for pos > 0 && newlines <= n && read < maxTailBytes {
		size := min(int64(block), pos)
		pos -= size
		chunk := make([]byte, size)
		if _, err := f.ReadAt(chunk, pos); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("tail %s: %w", path, err)
		}
		newlines += bytes.Count(chunk, []byte{'\n'})
		read += size
		blocks = append(blocks, chunk)
	}
	buf := make([]byte, 0, read)
	for i := len(blocks) - 1; i >= 0; i-- {
		buf = append(buf, blocks[i]...)
	}
	buf = bytes.TrimRight(buf, "\n")
	if len(buf) == 0 {
		return lines, nil
	}
	all := bytes.Split(buf, []byte{'\n'})
	if pos > 0 && len(all) > 1 {
		all = all[1:] // the first piece may be a partial line
	}
	if len(all) > n {
		all = all[len(all)-n:]
	}
	for _, l := range all {
		lines = append(lines, clip(string(l)))
	}
	return lines, nil
}

// clip shortens a line to maxLineBytes.
func clip(l string) string {
	if len(l) > maxLineBytes {
		return l[:maxLineBytes] + " …[cut]"
	}
	return l
}

// streamLogs follows a VM log as Server-Sent Events, one event per line:
//
//	id: <byte offset just past the line>
//	event: fc|console
//	data: <the line>
//
// A client that reconnects with Last-Event-ID gets the lines after that
// offset: nothing missed, nothing repeated. ?tail=N starts N lines back;
// without either, only new lines come. A comment every KeepAlive keeps
// idle connections (and the proxies between) open, and shows a client
// that the stream is alive.
func (a *Agent) streamLogs(w http.ResponseWriter, r *http.Request, id string) {
	src, path, err := a.logPath(id, r.URL.Query().Get("source"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	n := 0
	if r.URL.Query().Get("tail") != "" {
		if n, err = parseTail(r); err != nil {
			a.fail(w, r, err)
			return
		}
	}
	resume := int64(-1)
	if le := r.Header.Get("Last-Event-ID"); le != "" {
		resume, err = strconv.ParseInt(le, 10, 64)
		if err != nil || resume < 0 {
			a.fail(w, r, apierr.BadRequest("Last-Event-ID %q is not an id this stream sent (a byte offset)", le))
			return
		}
	}
	if _, err := os.Stat(a.cfg.Layout.VMDir(id)); errors.Is(err, os.ErrNotExist) {
		a.fail(w, r, apierr.NotFound("vm run dir", id))
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		a.fail(w, r, apierr.Internal(errors.New("streaming unsupported")))
		return
	}
	var off int64
	switch {
	case resume >= 0:
		off = resume
		if fi, err := os.Stat(path); err == nil && fi.Size() < off {
			off = 0 // the file was replaced since: all of the new one is new
		}
	case n > 0:
		off = tailOffset(a.openInVMs, path, n)
	default:
		if fi, err := os.Stat(path); err == nil {
			off = fi.Size()
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher.Flush() // headers at once: the client knows the stream is open

	send := func(line string, id int64) {
		// A guest's \r would start a new SSE field: never pass it through.
		line = strings.ReplaceAll(clip(line), "\r", "\\r")
		fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, src, line)
	}
	var partial []byte
	lastWrite := time.Now()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		sent := false
		if f, err := a.openInVMs(path); err == nil {
			if fi, err := f.Stat(); err == nil && fi.Size() < off {
				off, partial = 0, nil // truncated or replaced: start over
			}
			_, _ = f.Seek(off, io.SeekStart)
			br := bufio.NewReader(f)
			for {
				chunk, err := br.ReadBytes('\n')
				off += int64(len(chunk))
				if err != nil {
					partial = append(partial, chunk...)
					if len(partial) > maxLineBytes { // a line without end: send what we have
						send(string(partial), off)
						partial, sent = nil, true
					}
					break
				}
				line := append(partial, bytes.TrimRight(chunk, "\n")...)
				partial = nil
				send(string(line), off)
				sent = true
			}
			f.Close()
		}
		if !sent && time.Since(lastWrite) >= a.cfg.KeepAlive {
			fmt.Fprint(w, ": keep-alive\n\n")
			sent = true
		}
		if sent {
			flusher.Flush()
			lastWrite = time.Now()
		}
		select {
		case <-r.Context().Done():
			return
		case <-httpmw.Closing(r.Context()):
			return // the agent shuts down: streams never hold it
		case <-tick.C:
		}
	}
}

// tailOffset returns where the last n lines of path start (0 for a short
// or missing file). It reads backwards at most maxTailBytes; a longer
// stretch starts at the first line boundary inside it.
func tailOffset(open opener, path string, n int) int64 {
	f, err := open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil || end == 0 {
		return 0
	}
	const block = 64 << 10
	pos := end
	// A final newline ends the last line; it does not start another.
	want := n
	last := make([]byte, 1)
	if _, err := f.ReadAt(last, end-1); err == nil && last[0] == '\n' {
		want++
	}
	seen := 0
	for pos > 0 && end-pos < maxTailBytes {
		size := min(int64(block), pos)
		pos -= size
		chunk := make([]byte, size)
		if _, err := f.ReadAt(chunk, pos); err != nil && !errors.Is(err, io.EOF) {
			return end
		}
		for i := len(chunk) - 1; i >= 0; i-- {
			if chunk[i] == '\n' {
				seen++
				if seen == want {
					return pos + int64(i) + 1
				}
			}
		}
	}
	if pos == 0 {
		return 0
	}
	// Too far back: begin at the first whole line within the window.
	chunk := make([]byte, min(int64(block), end-pos))
	if k, _ := f.ReadAt(chunk, pos); k > 0 {
		if i := bytes.IndexByte(chunk[:k], '\n'); i >= 0 {
			return pos + int64(i) + 1
		}
	}
	return end
}
