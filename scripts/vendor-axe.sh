#!/usr/bin/env bash
# Refreshes axe-core (the console tests' accessibility checker; never served)
# from the npm registry, checked against the pinned tarball checksum
# (server/tests/console/vendor/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.14.1
SHA256=e6b0ce02b84d892e2e33e403485e7f3d6c29e2be6df65daf44d89ba564139745
scripts/vendor-npm.sh axe-core "$VERSION" "$SHA256" server/tests/console/vendor \
  axe.min.js:axe.min.js LICENSE:axe-core.LICENSE
(cd server/tests/console/vendor && sha256sum axe.min.js axe-core.LICENSE)
