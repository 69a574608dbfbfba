#!/usr/bin/env bash
# The browser the UI tests drive: Debian's chromium at /usr/bin/chromium (Playwright's own
# browser download cannot work on machines without general network access). Idempotent:
# apt-get runs only when the binary is missing. Needs root (CI and these machines are root).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
echo "installing Debian chromium for the UI tests" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium
test -x /usr/bin/chromium
