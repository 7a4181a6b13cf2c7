#!/usr/bin/env bash
# Install aar_ray into ./.venv: Debian packages (.ci/apt-packages.txt: bubblewrap for the sandbox,
# postgresql whose server the tests start on their own), the CPU torch wheel, the project.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v bwrap >/dev/null || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(cat .ci/apt-packages.txt) >/tmp/aar-apt.log 2>&1 \
        || { $SUDO apt-get update -q >>/tmp/aar-apt.log 2>&1 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(cat .ci/apt-packages.txt) >>/tmp/aar-apt.log 2>&1; } \
        || { tail -20 /tmp/aar-apt.log; exit 1; }
fi
[ -x .venv/bin/python ] || python3.11 -m venv .venv
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/pip install -q torch==2.13.0 >/tmp/aar-install.log 2>&1 || { tail -50 /tmp/aar-install.log; exit 1; }
.venv/bin/pip install -q -e '.[dev]' >>/tmp/aar-install.log 2>&1 || { tail -50 /tmp/aar-install.log; exit 1; }
echo "installed: .venv/bin/aar"
