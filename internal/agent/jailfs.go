package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/nexus-microvm/nexus/internal/agent/jail"
	"github.com/nexus-microvm/nexus/internal/agent/vmm"
	"github.com/nexus-microvm/nexus/internal/apierr"
)

// A jailed VMM sees only its chroot (docs/security.md). The manager keeps
// sending host paths, and they keep working: every file a relayed body
// names is linked into the chroot at the same path (a relative path at the
// same name from the chroot's root, which is firecracker's working
// directory there), after the proxy's usual checks. The VM's own files
// (its drive copies, its logs) become its uid's; files other VMs share (a
// snapshot restored many times, an image) are only read; sockets the VMM
// makes are linked back out to their host paths once firecracker answers.

// expose links the files of a relayed body into the VM's jail and returns
// what to do once firecracker has answered with success.
func (p *proxy) expose(ctx context.Context, id string, jl *vmm.JailInfo, files []bodyFile) ([]func() error, error) {
	d := jl.Dir()
	execName := filepath.Base(filepath.Dir(filepath.Dir(jl.Root))) // <base>/<exec name>/<id>/root
	var after []func() error
	for _, f := range files {
		rel, err := jail.Rel(f.given, execName)
		if err != nil {
			return nil, apierr.Forbidden("%s %q: %v", f.field, f.given, err)
		}
		switch f.kind {
		case socketOut:
			// The VMM binds it: its directory in the jail must be the VMM's.
			if err := d.MkdirAll(filepath.Dir(rel), true); err != nil {
				return nil, apierr.Internal(err)
			}
			host := f.host
			after = append(after, func() error { return d.LinkOut(rel, host) })
		case socketIn:
			if err := p.linkSocketIn(d, rel, f.host); err != nil {
				return nil, err
			}
		default:
			if err := p.exposeFile(ctx, id, d, rel, f); err != nil {
				return nil, err
			}
			if f.kind == fileSnapshot {
				// Written, a snapshot is read by every VM restored from it:
				// the agent takes it back, so that neither its VMM nor a VMM
				// that gets its uid later can reopen it for writing.
				host := f.host
				after = append(after, func() error { return os.Lchown(host, os.Geteuid(), os.Getegid()) })
			}
		}
	}
	return after, nil
}

// exposeFile links one regular file into the jail (see expose).
func (p *proxy) exposeFile(ctx context.Context, id string, d jail.Dir, rel string, f bodyFile) error {
	flag := os.O_RDONLY | syscall.O_NOFOLLOW
	perm := os.FileMode(0)
	switch f.kind {
	case fileWrite:
		flag, perm = os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o640
	case fileSnapshot:
		// Readable by the uids of the VMs restored from it; the run dir's
		// own modes (0750) keep other users of the host out.
		flag, perm = os.O_WRONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o644
	}
	fh, err := os.OpenFile(f.host, flag, perm)
	if errors.Is(err, os.ErrNotExist) {
		return nil // firecracker says what is missing, as without a jail
	}
	if err != nil {
		return apierr.Newf(http.StatusForbidden, "path_not_allowed", "%s %q: %v", f.field, f.given, err)
	}
	defer fh.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(fh.Fd()), &st); err != nil {
		return apierr.Internal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return apierr.Forbidden("%s %q is not a regular file", f.field, f.given)
	}
	own := within(canonical(p.layout.VMDir(id)), f.host) && st.Nlink == 1
	switch {
	case f.kind == fileWrite || f.kind == fileSnapshot || own:
		// The VM's own file: its uid's, whatever uid a previous boot had.
		if err := fh.Chown(d.UID, d.GID); err != nil {
			return apierr.Internal(fmt.Errorf("jail: %s: %w", f.host, err))
		}
	case f.kind == fileReadWrite:
		return apierr.Forbidden("%s %q: a jailed VMM writes only its own files, and this one is shared or outside its run dir", f.field, f.given).
			WithSuggestion("attach it read-only, or let the agent make the VM its own copy (image-backed drives)")
	case st.Mode&0o004 == 0:
		if !within(canonical(p.layout.VMsDir()), f.host) {
			return apierr.Newf(http.StatusForbidden, "not_readable_in_jail", "%s %q is not readable by the VM's uid (mode %o, owner %d): a jailed VMM reads files as a uid of its own",
				f.field, f.given, st.Mode&0o777, st.Uid).WithSuggestion("make the file world-readable (chmod o+r): images are only ever read")
		}
		// A file of the agent's run dir shared by VMs (a snapshot's drive
		// copy): readable by their uids, the run dir keeps others out.
		if err := fh.Chmod(os.FileMode(st.Mode&0o777 | 0o004)); err != nil {
			return apierr.Internal(err)
		}
	}
	err = d.Link(rel, fh)
	if errors.Is(err, jail.ErrCrossDevice) && !own && f.kind == fileRead {
		err = copyIntoJail(ctx, d, rel, fh, st.Size)
	}
	if err != nil {
		return apierr.Internal(fmt.Errorf("vm %s: %s %q into its jail: %w", id, f.field, f.given, err))
	}
	return nil
}

// copyIntoJail copies a read-only file from another filesystem into the
// jail (a hard link cannot cross filesystems): a reflink or a sparse copy.
func copyIntoJail(ctx context.Context, d jail.Dir, rel string, src *os.File, size int64) error {
	dst, err := d.Create(rel, 0o444)
	if err != nil {
		return err
	}
	_, err = copyInto(ctx, dst, src, size)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// linkSocketIn links an existing unix socket (a vhost-user backend's) into
// the jail; a missing one is left for firecracker to report.
func (p *proxy) linkSocketIn(d jail.Dir, rel, host string) error {
	fh, err := os.OpenFile(host, unix.O_PATH|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return apierr.Internal(err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return apierr.Internal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return apierr.Forbidden("%s is not a socket", host)
	}
	if err := d.Link(rel, fh); err != nil {
		return apierr.Internal(err)
	}
	return nil
}

// exposeOwnFiles links files of the VM's run dir (names relative to it,
// as a snapshot's state file records them) into its jail, as its own.
func (a *Agent) exposeOwnFiles(ctx context.Context, id string, names []string, readOnly []bool) error {
	jl := a.proxy.jailOf(id)
	if jl == nil {
		return nil
	}
	var files []bodyFile
	for i, n := range names {
		k := fileRead
		if !readOnly[i] {
			k = fileReadWrite
		}
		files = append(files, bodyFile{field: "drive file", given: n, host: canonical(filepath.Join(a.cfg.Layout.VMDir(id), n)), kind: k})
	}
	_, err := a.proxy.expose(ctx, id, jl, files)
	return err
}
