#!/usr/bin/env bash
# Refreshes the console's vendored files (web/static/vendor) from the npm
# registry. Only needed to change the uPlot version: the files are
# committed, so building Nexus never needs npm or the network.
set -euo pipefail
cd "$(dirname "$0")/.."
UPLOT_VERSION=${UPLOT_VERSION:-1.6.32}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null && tar xzf "uplot-$UPLOT_VERSION.tgz")
dst=web/static/vendor
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$dst/"
cp "$tmp/package/LICENSE" "$dst/uPlot.LICENSE"
sed -i "s/| [0-9.]* | MIT/| $UPLOT_VERSION | MIT/" "$dst/README.md"
echo "vendored uPlot $UPLOT_VERSION into $dst"
