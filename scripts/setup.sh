#!/usr/bin/env bash
# Installs what building, running and testing Nexus needs on Debian/Ubuntu,
# and nothing that is already there. Safe to run again; fast when done.
#
#   scripts/setup.sh            Go toolchain and build tools
#   scripts/setup.sh --test     also a local PostgreSQL for the test suite, and
#                               QEMU plus what `make images` needs, for the
#                               guest smoke test (test/guest)
#
# Go comes from the Go module proxy (golang.org/toolchain), the same place
# `go` itself downloads toolchains from, when no new enough Go is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf 'setup: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	say "installing ${missing[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# --- Go -------------------------------------------------------------------
go_want=$(awk '/^go /{print $2; exit}' go.mod)
go_ok=$(scripts/find-go.sh --check "$go_want" || true)
if [ -z "$go_ok" ]; then
	apt_install ca-certificates curl unzip
	dir=/usr/local/nexus-go
	say "installing Go $go_want into $dir (from the Go module proxy)"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	arch=$(dpkg --print-architecture)
	curl -sSfL -o "$tmp/go.zip" "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go${go_want}.linux-${arch}.zip"
	unzip -q "$tmp/go.zip" -d "$tmp"
	as_root rm -rf "$dir/go"
	as_root mkdir -p "$dir"
	as_root mv "$tmp/golang.org/toolchain@v0.0.1-go${go_want}.linux-${arch}" "$dir/go"
	as_root chmod -R a+rX "$dir/go"
	as_root find "$dir/go/bin" "$dir/go/pkg/tool" -type f -exec chmod a+x {} +
	say "Go: $("$dir/go/bin/go" version)"
fi
command -v make >/dev/null || apt_install make
command -v git >/dev/null || apt_install git

# --- the guest smoke test ---------------------------------------------------
# test/guest builds the images with scripts/build-images.sh (busybox, cpio,
# depmod, mkfs.ext4) and boots them under QEMU's microvm machine.
if [ "$want_test" -eq 1 ]; then
	apt_install qemu-system-x86 busybox-static cpio kmod e2fsprogs
fi

# --- PostgreSQL for the test suite ----------------------------------------
if [ "$want_test" -eq 1 ]; then
	if ! command -v pg_ctlcluster >/dev/null; then
		apt_install postgresql
	fi
	if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
		ver=$(ls /etc/postgresql | sort -V | tail -n1)
		say "starting PostgreSQL $ver"
		as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
		for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
	fi
	# A role and database of our own, so the suite needs no change to how
	# the server authenticates anyone else.
	psql_admin() { as_root runuser -u postgres -- psql -X -q -tA "$@"; }
	if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='nexus'" 2>/dev/null)" != "1" ]; then
		say "creating PostgreSQL role nexus and database nexus_test"
		psql_admin -c "CREATE ROLE nexus LOGIN PASSWORD 'nexus'"
	fi
	if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='nexus_test'" 2>/dev/null)" != "1" ]; then
		psql_admin -c "CREATE DATABASE nexus_test OWNER nexus"
	fi
fi

# --- Browser and promtool for the console and metrics tests ---------------
if [ "$want_test" -eq 1 ]; then
	# Debian's Chromium runs the console's browser tests (driven by
	# chromedp); a browser build that a test tool downloads would not
	# install on machines without internet access.
	[ -x /usr/bin/chromium ] || apt_install chromium
	# promtool checks the /metrics output. Only the binary is taken out of
	# Debian's prometheus package: installing the package would also start
	# a Prometheus server, on the port agents use (9090).
	tools=/usr/local/nexus-tools/bin
	if ! command -v promtool >/dev/null && [ ! -x "$tools/promtool" ]; then
		say "extracting promtool from Debian's prometheus package into $tools"
		ptmp=$(mktemp -d)
		if ! (cd "$ptmp" && apt-get download prometheus >/dev/null 2>&1); then
			as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
			(cd "$ptmp" && apt-get download prometheus >/dev/null 2>&1)
		fi
		dpkg-deb -x "$ptmp"/prometheus_*.deb "$ptmp/x"
		as_root install -D -m 0755 "$ptmp/x/usr/bin/promtool" "$tools/promtool"
		rm -rf "$ptmp"
	fi
fi
