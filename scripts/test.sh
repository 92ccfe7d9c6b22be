#!/usr/bin/env bash
# The test command README.md gives. It installs what the tests need on a
# fresh Debian machine (redis-server; Chromium, Node.js and playwright-core
# for the browser test), checks gofmt and go vet, and runs every test with
# the race detector. Under CI=true a missing dependency fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_apt[@]}"
fi
# The browser test's own install step (Chromium, Node.js, playwright-core).
bash webapi-example/e2e/install.sh

gofmt_out=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$gofmt_out" ]; then
  echo "gofmt needed: $gofmt_out"
  exit 1
fi
# Two modules in one workspace (go.work): the library and the example.
go vet ./... ./webapi-example/...

go test -race -count=1 -timeout 30m ./... ./webapi-example/...
