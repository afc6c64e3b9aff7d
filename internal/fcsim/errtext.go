package fcsim

import (
	"errors"
	"io/fs"
	"strconv"
	"syscall"
	"unicode"
	"unicode/utf8"
)

// ioErrText renders err like Rust's std::io::Error Display, which
// firecracker's messages embed: "No such file or directory (os error 2)".
func ioErrText(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errnoText(errno)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return ioErrText(pe.Err)
	}
	return err.Error()
}

func errnoText(e syscall.Errno) string {
	return strerror(e) + " (os error " + strconv.Itoa(int(e)) + ")"
}

// strerror is glibc's text for e. Go's table has the same words in lower
// case, except for the few listed here.
func strerror(e syscall.Errno) string {
	switch e {
	case syscall.EADDRINUSE:
		return "Address already in use"
	case syscall.ENOTSOCK:
		return "Socket operation on non-socket"
	}
	s := e.Error()
	r, n := utf8.DecodeRuneInString(s)
	return string(unicode.ToUpper(r)) + s[n:]
}
