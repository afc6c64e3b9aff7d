package fcsim

import (
	"errors"
	"io/fs"
	"strconv"
	"syscall"
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

// strerror is what the official firecracker binaries print for e: they
// are linked with musl, whose strerror wording often differs from glibc's
// ("Resource busy", "Address in use"). Codes musl has no text for read
// "No error information".
func strerror(e syscall.Errno) string {
	if s, ok := muslStrerror[e]; ok {
		return s
	}
	return "No error information"
}

var muslStrerror = map[syscall.Errno]string{
	syscall.EILSEQ:          "Illegal byte sequence",
	syscall.EDOM:            "Domain error",
	syscall.ERANGE:          "Result not representable",
	syscall.ENOTTY:          "Not a tty",
	syscall.EACCES:          "Permission denied",
	syscall.EPERM:           "Operation not permitted",
	syscall.ENOENT:          "No such file or directory",
	syscall.ESRCH:           "No such process",
	syscall.EEXIST:          "File exists",
	syscall.EOVERFLOW:       "Value too large for data type",
	syscall.ENOSPC:          "No space left on device",
	syscall.ENOMEM:          "Out of memory",
	syscall.EBUSY:           "Resource busy",
	syscall.EINTR:           "Interrupted system call",
	syscall.EAGAIN:          "Resource temporarily unavailable",
	syscall.ESPIPE:          "Invalid seek",
	syscall.EXDEV:           "Cross-device link",
	syscall.EROFS:           "Read-only file system",
	syscall.ENOTEMPTY:       "Directory not empty",
	syscall.ECONNRESET:      "Connection reset by peer",
	syscall.ETIMEDOUT:       "Operation timed out",
	syscall.ECONNREFUSED:    "Connection refused",
	syscall.EHOSTDOWN:       "Host is down",
	syscall.EHOSTUNREACH:    "Host is unreachable",
	syscall.EADDRINUSE:      "Address in use",
	syscall.EPIPE:           "Broken pipe",
	syscall.EIO:             "I/O error",
	syscall.ENXIO:           "No such device or address",
	syscall.ENOTBLK:         "Block device required",
	syscall.ENODEV:          "No such device",
	syscall.ENOTDIR:         "Not a directory",
	syscall.EISDIR:          "Is a directory",
	syscall.ETXTBSY:         "Text file busy",
	syscall.ENOEXEC:         "Exec format error",
	syscall.EINVAL:          "Invalid argument",
	syscall.E2BIG:           "Argument list too long",
	syscall.ELOOP:           "Symbolic link loop",
	syscall.ENAMETOOLONG:    "Filename too long",
	syscall.ENFILE:          "Too many open files in system",
	syscall.EMFILE:          "No file descriptors available",
	syscall.EBADF:           "Bad file descriptor",
	syscall.ECHILD:          "No child process",
	syscall.EFAULT:          "Bad address",
	syscall.EFBIG:           "File too large",
	syscall.EMLINK:          "Too many links",
	syscall.ENOLCK:          "No locks available",
	syscall.EDEADLK:         "Resource deadlock would occur",
	syscall.ENOTRECOVERABLE: "State not recoverable",
	syscall.EOWNERDEAD:      "Previous owner died",
	syscall.ECANCELED:       "Operation canceled",
	syscall.ENOSYS:          "Function not implemented",
	syscall.ENOMSG:          "No message of desired type",
	syscall.EIDRM:           "Identifier removed",
	syscall.ENOSTR:          "Device not a stream",
	syscall.ENODATA:         "No data available",
	syscall.ETIME:           "Device timeout",
	syscall.ENOSR:           "Out of streams resources",
	syscall.ENOLINK:         "Link has been severed",
	syscall.EPROTO:          "Protocol error",
	syscall.EBADMSG:         "Bad message",
	syscall.EBADFD:          "File descriptor in bad state",
	syscall.ENOTSOCK:        "Not a socket",
	syscall.EDESTADDRREQ:    "Destination address required",
	syscall.EMSGSIZE:        "Message too large",
	syscall.EPROTOTYPE:      "Protocol wrong type for socket",
	syscall.ENOPROTOOPT:     "Protocol not available",
	syscall.EPROTONOSUPPORT: "Protocol not supported",
	syscall.ESOCKTNOSUPPORT: "Socket type not supported",
	syscall.ENOTSUP:         "Not supported",
	syscall.EPFNOSUPPORT:    "Protocol family not supported",
	syscall.EAFNOSUPPORT:    "Address family not supported by protocol",
	syscall.EADDRNOTAVAIL:   "Address not available",
	syscall.ENETDOWN:        "Network is down",
	syscall.ENETUNREACH:     "Network unreachable",
	syscall.ENETRESET:       "Connection reset by network",
	syscall.ECONNABORTED:    "Connection aborted",
	syscall.ENOBUFS:         "No buffer space available",
	syscall.EISCONN:         "Socket is connected",
	syscall.ENOTCONN:        "Socket not connected",
	syscall.ESHUTDOWN:       "Cannot send after socket shutdown",
	syscall.EALREADY:        "Operation already in progress",
	syscall.EINPROGRESS:     "Operation in progress",
	syscall.ESTALE:          "Stale file handle",
	syscall.EREMOTEIO:       "Remote I/O error",
	syscall.EDQUOT:          "Quota exceeded",
	syscall.ENOMEDIUM:       "No medium found",
	syscall.EMEDIUMTYPE:     "Wrong medium type",
	syscall.EMULTIHOP:       "Multihop attempted",
}

// ioKind is Rust's io::ErrorKind Debug name for an errno.
func ioKind(e syscall.Errno) string {
	switch e {
	case syscall.EAGAIN:
		return "WouldBlock"
	case syscall.EPIPE:
		return "BrokenPipe"
	case syscall.ENOSPC:
		return "StorageFull"
	case syscall.EINTR:
		return "Interrupted"
	case syscall.EFBIG:
		return "FileTooLarge"
	case syscall.ENOENT:
		return "NotFound"
	case syscall.EACCES, syscall.EPERM:
		return "PermissionDenied"
	}
	return "Uncategorized"
}

// serialErrDebug is the Debug form of vm-superio's SerialError::IOError
// that firecracker logs when a console write fails.
func serialErrDebug(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return "IOError(" + rustDebugString(err.Error()) + ")"
	}
	return "IOError(Os { code: " + strconv.Itoa(int(errno)) + ", kind: " + ioKind(errno) +
		", message: " + rustDebugString(strerror(errno)) + " })"
}
