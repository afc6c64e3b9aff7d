#!/usr/bin/env bash
# Prints the path of a Go toolchain new enough for go.mod: the one on PATH,
# /usr/local/go, or the one scripts/setup.sh installs. With --check VERSION
# it prints nothing and fails when there is none.
set -u
cd "$(dirname "$0")/.."
want=${2:-$(awk '/^go /{print $2; exit}' go.mod)}

new_enough() {
	local v
	v=$("$1" env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	[ "$(printf '%s\n%s\n' "$want" "$v" | sort -V | head -n1)" = "$want" ]
}

for g in "$(command -v go 2>/dev/null)" /usr/local/go/bin/go /usr/local/nexus-go/go/bin/go; do
	[ -n "$g" ] && [ -x "$g" ] || continue
	if GOTOOLCHAIN=local new_enough "$g"; then
		echo "$g"
		exit 0
	fi
done
[ "${1:-}" = "--check" ] && exit 1
echo go
