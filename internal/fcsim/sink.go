package fcsim

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// sink is an output opened the way firecracker opens its logger, metrics
// and serial destinations (utils::open_file_nonblock): read-write,
// non-blocking, created if missing with mode 0666 (less the umask),
// neither appending nor truncating. Read-write matters for a FIFO: the
// process is then a reader of its own FIFO, so the open succeeds with no
// other reader (write-only and non-blocking fails with ENXIO), and data
// waits in the pipe until a reader comes. A regular file is written from
// offset 0 over what it held, as firecracker does.
//
// Writes are raw write(2) calls, not os.File ones: Go parks a goroutine on
// its poller when a pipe is full, where firecracker gets EAGAIN, counts the
// loss and carries on. A full pipe must never stall the API.
type sink struct{ fd int }

func openSink(path string) (*sink, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_NONBLOCK|unix.O_CREAT|unix.O_CLOEXEC, 0o666)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return &sink{fd: fd}, nil
}

// stdoutSink makes the process's stdout non-blocking, as firecracker does
// when the guest console goes to stdout, and writes to it with raw calls.
// A writer that is not a file (a test's buffer) is used as it is.
func stdoutSink(w io.Writer) io.Writer {
	f, ok := w.(*os.File)
	if !ok {
		return w
	}
	fd := int(f.Fd())
	if unix.SetNonblock(fd, true) != nil {
		return w
	}
	return &sink{fd: fd}
}

// Write is Rust's write_all: partial writes continue, EINTR retries, any
// other error (EAGAIN on a full pipe) ends it with what was written.
func (s *sink) Write(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Write(s.fd, p[n:])
		if m > 0 {
			n += m
		}
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return n, err
		case m == 0:
			return n, io.ErrShortWrite
		}
	}
	return n, nil
}

func (s *sink) Close() error { return unix.Close(s.fd) }
