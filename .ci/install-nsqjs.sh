#!/usr/bin/env bash
# Installs nsqjs, pinned in ingest/testdata/nsqjs/package.json and
# package-lock.json, into ingest/testdata/nsqjs/node_modules (git-ignored)
# for nsqjs_test.go, which runs ingest/testdata/nsqjs/publish.js with node.
# Installs Debian's nodejs and npm first if node or npm is missing from
# PATH. Does nothing if the pinned nsqjs is already installed there and
# loads. Exits non-zero if the install fails or nsqjs still does not load.
# Used by .ci/run; the apt step needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/../ingest/testdata/nsqjs"

want=$(node -p "require('./package.json').dependencies.nsqjs" 2>/dev/null || true)
have=$(node -p "require('nsqjs/package.json').version" 2>/dev/null || true)
if [ -n "$want" ] && [ "$want" = "$have" ] && node -e "require('nsqjs')" >/dev/null 2>&1; then
	exit 0
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	echo "installing nodejs and npm (Debian packages)" >&2
	sudo=()
	[ "$(id -u)" -eq 0 ] || sudo=(sudo)
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update -qq >/dev/null
	"${sudo[@]}" apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

echo "installing nsqjs (npm ci in ingest/testdata/nsqjs)" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
node -e "require('nsqjs')"
echo "nsqjs $(node -p "require('nsqjs/package.json').version") (node $(node --version))" >&2
