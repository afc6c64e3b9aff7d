#!/usr/bin/env bash
# Installs Nexus on this host from a release tarball, an unpacked release,
# or a local build (make build), with its systemd units. Read it before you
# run it: it does only what is listed here, and --dry-run prints each step
# instead of doing it.
#
#   1. copies nexus, nexus-jail and firecracker-sim to $PREFIX/bin
#   2. creates the system user "nexus" (the manager runs as it)
#   3. creates /etc/nexus (settings), /etc/nexus/pki (certificates) and,
#      for the agent, its run dir /srv/fc
#   4. copies the env file examples to /etc/nexus/{manager,agent}.env
#      unless those exist (it never overwrites your settings)
#   5. installs nexus-manager.service and nexus-agent.service to
#      /etc/systemd/system and reloads systemd
# It starts and enables nothing: edit the env files, then
#   systemctl enable --now nexus-manager    (and/or nexus-agent)
# Upgrading is running it again with the new release (docs/upgrading.md).
#
# Usage: install.sh [--from TARBALL|DIR] [--role manager|agent|all]
#                   [--prefix /usr/local] [--destdir DIR] [--dry-run]
#   --from     a nexus_*.tar.gz, or a directory holding the binaries
#              (default: this script's directory when it holds them, as in
#              a release; else bin/ of the source tree)
#   --role     what this host runs (default all)
#   --destdir  install under DIR instead of / (packaging, tests): no user
#              is created and systemd is not reloaded
#   --dry-run  print the steps, change nothing
set -euo pipefail

prefix=/usr/local
role=all
from=""
destdir=""
dry=0

usage() { sed -n '/^# Usage:/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
	case "$1" in
	--from) from=${2:?--from needs a path}; shift 2 ;;
	--role) role=${2:?--role needs manager, agent or all}; shift 2 ;;
	--prefix) prefix=${2:?--prefix needs a path}; shift 2 ;;
	--destdir) destdir=${2:?--destdir needs a path}; shift 2 ;;
	--dry-run) dry=1; shift ;;
	-h | --help) usage; exit 0 ;;
	*) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done
case "$role" in manager | agent | all) ;; *) echo "install.sh: --role $role: use manager, agent or all" >&2; exit 2 ;; esac

# run prints a step, and does it unless --dry-run.
run() {
	echo "+ $*"
	[ "$dry" = 1 ] || "$@"
}

here=$(cd "$(dirname "$0")" && pwd)

# Where the binaries and the unit files come from.
if [ -z "$from" ]; then
	if [ -x "$here/nexus" ]; then from=$here; else from="$here/../bin"; fi
fi
if [ -f "$from" ]; then
	# A release tarball: unpack it to a temporary directory first.
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	tar -xzf "$from" -C "$tmp"
	from=$(echo "$tmp"/nexus_*)
fi
from=$(cd "$from" && pwd)
for b in nexus nexus-jail firecracker-sim; do
	[ -x "$from/$b" ] || { echo "install.sh: $from/$b is missing (make build, or --from a release)" >&2; exit 1; }
done
units=""
for d in "$from/deploy/systemd" "$here/../deploy/systemd" "$here/deploy/systemd"; do
	if [ -f "$d/nexus-agent.service" ]; then units=$(cd "$d" && pwd); break; fi
done
[ -n "$units" ] || { echo "install.sh: no deploy/systemd beside $from or $here" >&2; exit 1; }

root=${destdir%/}
echo "installing Nexus ($("$from/nexus" --version 2>/dev/null || echo "unknown version")) from $from, role $role, into ${root:-/}"

# 1. Binaries.
run install -d -m 0755 "$root$prefix/bin"
for b in nexus nexus-jail firecracker-sim; do
	run install -m 0755 "$from/$b" "$root$prefix/bin/$b"
done

# 2. The manager's user.
if [ "$role" != agent ] && [ -z "$destdir" ] && ! getent passwd nexus >/dev/null; then
	run useradd --system --user-group --home-dir /var/lib/nexus --no-create-home --shell /usr/sbin/nologin nexus
fi
group=root
if [ "$role" != agent ] && [ -z "$destdir" ] && { getent group nexus >/dev/null || [ "$dry" = 1 ]; }; then group=nexus; fi

# 3. Directories. The manager's state dir (/var/lib/nexus) is systemd's
# StateDirectory: systemd creates it with the right owner.
run install -d -m 0755 "$root/etc/nexus"
run install -d -m 0750 -g "$group" "$root/etc/nexus/pki"
if [ "$role" != manager ]; then
	run install -d -m 0711 "$root/srv/fc"
fi

# 4. Settings, only where there are none yet.
install_env() { # name mode group
	local dst="$root/etc/nexus/$1.env"
	if [ -e "$dst" ]; then
		echo "  keeping $dst"
	else
		run install -m "$2" -g "$3" "$units/$1.env.example" "$dst"
	fi
}
[ "$role" = agent ] || install_env manager 0640 "$group"
[ "$role" = manager ] || install_env agent 0600 root

# 5. Units, pointing at $PREFIX/bin.
run install -d -m 0755 "$root/etc/systemd/system"
for u in manager agent; do
	[ "$role" = all ] || [ "$role" = "$u" ] || continue
	echo "+ sed 's#/usr/local/bin/#$prefix/bin/#' $units/nexus-$u.service > $root/etc/systemd/system/nexus-$u.service"
	if [ "$dry" = 0 ]; then
		sed "s#/usr/local/bin/#$prefix/bin/#" "$units/nexus-$u.service" >"$root/etc/systemd/system/nexus-$u.service"
		chmod 0644 "$root/etc/systemd/system/nexus-$u.service"
	fi
done
if [ -z "$destdir" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
	run systemctl daemon-reload
fi

cat <<EOF
done. Next:
  edit /etc/nexus/*.env (join token, database, TLS: docs/runbook.md)
  systemctl enable --now nexus-manager    # on manager hosts
  systemctl enable --now nexus-agent      # on VM hosts
An upgrade is this script with the new release, then a restart of each
unit, one host at a time (docs/upgrading.md); VMs keep running.
EOF
