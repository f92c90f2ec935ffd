#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, start the services it
# talks to when they are not running, and run the whole suite. Extra arguments go to
# pytest (e.g. `bash scripts/test.sh tests/server -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing system packages ($*) and no apt-get: install them by hand" >&2; return 1
  fi
  if [ "$apt_updated" = 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

say "system packages"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Network-namespace deployment tests (tests/deploy/test_netns.py): ip, nft and coturn.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v turnserver >/dev/null 2>&1 || missing+=(coturn)
# Emoji (reactions, chat) in the browser tests' screenshots.
[ -e /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf ] || missing+=(fonts-noto-color-emoji)
if [ ${#missing[@]} -gt 0 ]; then echo "installing ${missing[*]}"; apt_install "${missing[@]}"; fi
# GStreamer webrtcbin as an outside WHIP/WHEP client (tests/e2e/test_gstreamer.py), driven
# by Debian's own python3 (the venv has no PyGObject).
gst_packages=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-nice)
if ! /usr/bin/python3 -c "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstSdp', '1.0'); gi.require_version('GstWebRTC', '1.0'); gi.require_version('Nice', '0.1'); from gi.repository import Gst; Gst.init(None); assert all(Gst.ElementFactory.find(n) for n in ('webrtcbin', 'nicesrc', 'x264enc', 'avdec_h264', 'opusenc'))" >/dev/null 2>&1; then
  echo "installing GStreamer (${gst_packages[*]})"; apt_install "${gst_packages[@]}"
fi

say "python environment (.venv)"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  # Debian's own python3 keeps venv in a separate package.
  "$PY" -m venv .venv 2>/dev/null || { rm -rf .venv; apt_install python3-venv; "$PY" -m venv .venv; }
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

say "node modules (axe-core for the accessibility checks, libwebrtc DataChannel receivers)"
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
if [ ! -f .cache/axe/node_modules/axe-core/axe.min.js ]; then
  npm install --silent --no-save --no-package-lock --prefix .cache/axe axe-core@4 >/dev/null
fi
if [ ! -d .venv/node/node_modules/@roamhq/wrtc ]; then
  npm install --prefix .venv/node --no-audit --no-fund --silent @roamhq/wrtc
fi

say "services"
# Redis: tests use TEST_REDIS_URL, or a local server on 6379, started here if needed.
if [ -z "${TEST_REDIS_URL:-}" ]; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  export TEST_REDIS_URL=redis://127.0.0.1:6379/0
fi
# PostgreSQL: TEST_DATABASE_URL, else a local server on 5432 if one answers, else the
# tests start the embedded PostgreSQL that the server itself uses by default.
if [ -z "${TEST_DATABASE_URL:-}" ] && command -v pg_isready >/dev/null 2>&1 \
   && pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null \
   && psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1' >/dev/null 2>&1; then
  export TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres
fi
echo "database: ${TEST_DATABASE_URL:-embedded (pgserver)}; redis: $TEST_REDIS_URL"

say "tests"
exec .venv/bin/python -m pytest -q "$@"
