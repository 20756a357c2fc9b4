#!/usr/bin/env bash
# Refreshes the console's one chart library, uPlot, from the npm registry,
# checked against the pinned tarball checksum (server/console/vendor/README.md).
# To upgrade: change VERSION and SHA256 (`npm view uplot@V dist.tarball`, then
# sha256sum the tarball), run this, and update the README's file checksums.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.6.32
SHA256=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d
scripts/vendor-npm.sh uplot "$VERSION" "$SHA256" server/console/vendor \
  dist/uPlot.iife.min.js:uPlot.iife.min.js dist/uPlot.min.css:uPlot.min.css LICENSE:uPlot.LICENSE
(cd server/console/vendor && sha256sum uPlot.iife.min.js uPlot.min.css uPlot.LICENSE)
