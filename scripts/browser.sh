#!/usr/bin/env bash
# The browser that tests/e2e/test_browser.py drives formgrader with, installed idempotently:
#   chromium         Debian's package (/usr/bin/chromium), through apt-get when it is missing
#   playwright-core  from npm into tests/browser/node_modules, the version pinned by
#                    tests/browser/package-lock.json (`npm ci`)
# No browser is ever downloaded: playwright-core is the driver only (its browser downloads
# belong to the `playwright` package, and PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 is set anyway);
# tests/browser/formgrader.mjs launches /usr/bin/chromium through executablePath.
# Needs root for apt-get when chromium is missing; node (>= 20) and npm on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need node nodejs
need npm npm
(( $(node -p 'process.versions.node.split(".")[0]') >= 20 )) ||
  { echo "browser.sh: playwright-core needs node >= 20, found $(node --version)" >&2; exit 1; }
# lib.sh's need_file: apt-get install, and apt-get update first only if that fails
need_file /usr/bin/chromium chromium

dir=tests/browser
marker=$dir/node_modules/.package-lock.sha256
lock_sha=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [[ -f $marker && $(cat "$marker") == "$lock_sha" && -f $dir/node_modules/playwright-core/package.json ]]; then
  echo "browser.sh: $dir/node_modules is up to date"
else
  echo "browser.sh: npm ci in $dir"
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$lock_sha" >"$marker"
fi
echo "browser.sh: $(/usr/bin/chromium --version 2>/dev/null | head -n1);" \
  "playwright-core $(node -p 'require("./'"$dir"'/node_modules/playwright-core/package.json").version')"
