#!/usr/bin/env bash
# Installs Debian's redis-server for the ZSET designs of the comparison suite
# if it is not on PATH. The suite starts its own redis-server processes (on
# 127.0.0.1, fresh directories), so the system service the package starts is
# stopped again. Used by .ci/run and by
# `cd benchmarks && go run ./cmd/compare`.
set -euo pipefail
command -v redis-server >/dev/null 2>&1 && exit 0
echo "installing redis-server (Debian package)" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends redis-server >/dev/null
"${sudo[@]}" service redis-server stop >/dev/null 2>&1 || true
command -v redis-server >/dev/null
