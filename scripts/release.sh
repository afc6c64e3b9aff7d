#!/usr/bin/env bash
# Release builds of Nexus: static, reproducible binaries of nexus, nexus-jail
# and firecracker-sim for each platform, a tarball per platform and
# SHA256SUMS, in dist/ (make release).
#
# Reproducible means: the same commit built again, anywhere, gives the same
# bytes. What makes it so:
#   CGO_ENABLED=0        static binaries, no C toolchain in the picture
#   -trimpath            no build paths in the binaries
#   -ldflags -buildid=   no build id (it hashes inputs that vary)
#   -buildvcs=false      VCS data is stamped below instead (the toolchain
#                        records none in a worktree or a source tarball)
#   SOURCE_DATE_EPOCH    the commit's time: the only time in the tarballs
#   tar --sort=name, fixed owner and modes, gzip -n
#
# Settings (environment):
#   VERSION            what the binaries report (default: git describe)
#   PLATFORMS          default "linux/amd64 linux/arm64"
#   DIST               output directory (default dist; emptied first)
#   COMMIT             full commit hash (default: git HEAD, "-dirty" added
#                      when the tree has uncommitted changes)
#   SOURCE_DATE_EPOCH  default: the commit's time
#   GO                 the go command (default: scripts/find-go.sh)
# Outside a git checkout (a source tarball) set VERSION, COMMIT and
# SOURCE_DATE_EPOCH.
set -euo pipefail
cd "$(dirname "$0")/.."

in_git() { git rev-parse --is-inside-work-tree >/dev/null 2>&1; }

if [ -z "${COMMIT:-}" ]; then
	in_git || { echo "release: not a git checkout: set VERSION, COMMIT and SOURCE_DATE_EPOCH" >&2; exit 2; }
	COMMIT=$(git rev-parse HEAD)
	if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
		COMMIT="$COMMIT-dirty"
		echo "release: the tree has uncommitted changes; the binaries say so (commit $COMMIT)" >&2
	fi
fi
: "${VERSION:=$(git describe --tags --always --dirty 2>/dev/null || echo "0.0.0-${COMMIT:0:12}")}"
: "${SOURCE_DATE_EPOCH:=$(git log -1 --format=%ct)}"
: "${PLATFORMS:=linux/amd64 linux/arm64}"
: "${DIST:=dist}"
: "${GO:=$(scripts/find-go.sh)}"
COMMIT_TIME=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
export SOURCE_DATE_EPOCH

pkg=github.com/nexus-microvm/nexus/internal/version
ldflags="-s -w -buildid= -X $pkg.Stamp=$VERSION -X $pkg.StampCommit=$COMMIT -X $pkg.StampTime=$COMMIT_TIME"

rm -rf "$DIST"
mkdir -p "$DIST"
for platform in $PLATFORMS; do
	os=${platform%/*}
	arch=${platform#*/}
	name="nexus_${VERSION}_${os}_${arch}"
	out="$DIST/$name"
	echo "release: $name (commit $COMMIT, $COMMIT_TIME)" >&2
	mkdir -p "$out"
	# GOFLAGS is replaced, not added to: a developer's -race or -buildvcs
	# must not leak into a release. GOAMD64/GOARM64 pin the baseline ISA.
	env CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" GOAMD64=v1 GOARM64=v8.0 GOFLAGS=-mod=readonly \
		"$GO" build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$out/" \
		./cmd/nexus ./cmd/nexus-jail ./cmd/firecracker-sim

	# What an install needs beside the binaries (scripts/install.sh reads it).
	cp LICENSE README.md CHANGELOG.md scripts/install.sh "$out/"
	mkdir -p "$out/docs" "$out/deploy"
	cp docs/upgrading.md docs/runbook.md "$out/docs/"
	cp -r deploy/systemd "$out/deploy/"
	chmod -R u=rwX,go=rX "$out"
	chmod 0755 "$out/nexus" "$out/nexus-jail" "$out/firecracker-sim" "$out/install.sh"

	tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
		--format=gnu -C "$DIST" -cf - "$name" | gzip -n -9 >"$DIST/$name.tar.gz"
done

(cd "$DIST" && sha256sum -- *.tar.gz */nexus */nexus-jail */firecracker-sim >SHA256SUMS)
echo "release: $DIST/SHA256SUMS" >&2
cat "$DIST/SHA256SUMS"
