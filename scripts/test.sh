#!/usr/bin/env bash
# The test command README.md gives. It installs what the tests need on a
# fresh Debian machine (redis-server; Chromium, Node.js and playwright-core
# for the browser test), checks gofmt and go vet, and runs every test with
# the race detector. Under CI=true a missing dependency fails the run, and
# so does a skipped test (scripts/testreport). It prints one line per
# package as it finishes and a summary at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# promtool, for the alert rules' unit tests (deploy/monitoring).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# The browser test's own install step (Chromium, Node.js, playwright-core).
bash webapi-example/e2e/install.sh

gofmt_out=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$gofmt_out" ]; then
  echo "gofmt needed: $gofmt_out"
  exit 1
fi
# Two modules in one workspace (go.work): the library and the example.
echo "== go vet"
go vet ./... ./webapi-example/...

report_dir=$(mktemp -d)
trap 'rm -rf "$report_dir"' EXIT
go build -o "$report_dir/testreport" ./scripts/testreport
echo "== go test -race (the first run compiles every test binary with the race detector: a minute or two of silence)"
go test -race -count=1 -timeout 30m -json ./... ./webapi-example/... | "$report_dir/testreport"
