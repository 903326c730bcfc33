#!/usr/bin/env bash
# Installs Debian's prometheus package (prometheus and promtool) if either
# is missing from PATH; does nothing if both are there. The tests start
# their own prometheus processes (on 127.0.0.1, temporary storage), so the
# system service the package may start is stopped again. Exits non-zero if
# the install fails or the binaries are still missing. Used by .ci/run; run
# it as root (or with sudo available).
set -euo pipefail
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
	exit 0
fi
echo "installing prometheus (Debian package)" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null
"${sudo[@]}" service prometheus stop >/dev/null 2>&1 || true
command -v prometheus >/dev/null
command -v promtool >/dev/null
prometheus --version 2>&1 | head -n 1 >&2
