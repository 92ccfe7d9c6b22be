#!/usr/bin/env bash
# Installs what the browser test (webapi-example/e2e_test.go) and the tests
# of the imclient package (imclient/imclient_test.go) need on a fresh Debian
# machine: Chromium from Debian packages, Node.js and npm, and the locked npm
# packages (playwright-core). It never downloads a browser.
# playwright-core is pinned to a release that still runs on Debian 12's
# Node.js 18.
set -euo pipefail
cd "$(dirname "$0")"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y "${missing[@]}"
fi

PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
