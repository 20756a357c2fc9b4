#!/usr/bin/env bash
# Re-fetches a vendored npm package from the registry and checks it against
# the pinned sha256 of its tarball: scripts/vendor-uplot.sh and
# scripts/vendor-axe.sh call it. Usage: vendor-npm.sh NAME VERSION SHA256 DEST FILE:AS...
set -euo pipefail
name=$1 version=$2 sha=$3 dest=$4
shift 4
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
url="https://registry.npmjs.org/$name/-/$name-$version.tgz"
curl -fsSL "$url" -o "$tmp/pkg.tgz"
echo "$sha  $tmp/pkg.tgz" | sha256sum -c --quiet - || {
  echo "checksum mismatch for $url: got $(sha256sum "$tmp/pkg.tgz" | cut -d' ' -f1)" >&2
  exit 1
}
tar -xzf "$tmp/pkg.tgz" -C "$tmp"
mkdir -p "$dest"
for pair in "$@"; do
  cp "$tmp/package/${pair%%:*}" "$dest/${pair##*:}"
done
echo "vendored $name@$version into $dest" >&2
