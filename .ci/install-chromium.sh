#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium (package chromium) for
# status_page_test.go, which drives /usr/bin/chromium with chromedp. Does
# nothing if /usr/bin/chromium is already there and runs. Exits non-zero
# if the install fails or chromium still does not run. Used by .ci/run;
# the apt step needs root (or sudo).
set -euo pipefail

if [ -x /usr/bin/chromium ] && /usr/bin/chromium --version >/dev/null 2>&1; then
	exit 0
fi

echo "installing chromium (Debian package)" >&2
sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq chromium >/dev/null
/usr/bin/chromium --version >&2
