#!/usr/bin/env bash
# tandem's test command: installs what the real-peer tests need (when missing)
# and runs the whole test suite (docs/TESTING.md describes it).
#
#   scripts/test.sh                 # everything, with real peers
#   scripts/test.sh --test media    # extra arguments go to `cargo test` (one area)
#   scripts/test.sh --fast          # the fast tier: needs nothing installed
#
# The fast tier is every crate's unit tests (`cargo test --workspace --lib`) and
# the business-API tests on SQLite (`cargo test --test api -- --skip ::postgres`:
# each API test runs as `<name>::sqlite` and `<name>::postgres`). It installs
# nothing and needs no PostgreSQL, Chromium, Python or Node.
#
# For a fresh Debian 12 machine running as root. Idempotent: when Chromium,
# ffmpeg, nginx with the RTMP module (the restream tests), the Python venv
# (.venv with aiortc + aiohttp) and the Node peers (tests/peers/node_modules)
# are already there, it goes straight to the tests.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '==> %s\n' "$*" >&2; }

# --- the fast tier -------------------------------------------------------------
if [ "${1:-}" = "--fast" ]; then
    if [ "$#" -ne 1 ]; then
        echo "scripts/test.sh: --fast takes no other arguments" >&2
        exit 2
    fi
    log "cargo test --workspace --lib"
    cargo test --workspace --lib
    # --workspace like the full run: the same feature set, so the two tiers share one
    # build (with `-p tandem` cargo rebuilt the shared crates: 3 min on 2 cores).
    log "cargo test --workspace --test api -- --skip ::postgres"
    cargo test --workspace --test api -- --skip ::postgres
    exit 0
fi

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- system packages (Debian) -------------------------------------------------
missing=()
for pkg in chromium ffmpeg nginx-light libnginx-mod-rtmp; do
    have_pkg "$pkg" || missing+=("$pkg")
done
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    missing+=(python3 python3-venv)
elif [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]} (apt)"
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: need root to apt-get install ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
fi

# --- Python venv with aiortc -------------------------------------------------
if ! .venv/bin/python -c 'import aiortc, aiohttp' >/dev/null 2>&1; then
    log "creating .venv with aiortc and aiohttp (PyPI)"
    rm -rf .venv
    "$PYTHON" -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check aiortc aiohttp
fi

# --- Node peers (playwright-core driving Debian's chromium) -----------------
PEERS="tests/peers"
stamp="$PEERS/node_modules/.tandem-lock.sha256"
want="$( (cat "$PEERS/package.json" "$PEERS/package-lock.json" 2>/dev/null || true) | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing Node test peers (npm)"
    export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
    if [ -f "$PEERS/package-lock.json" ]; then
        # A lock file out of step with package.json makes `npm ci` refuse; then install.
        (cd "$PEERS" && npm ci --no-audit --no-fund --loglevel=error) ||
            (cd "$PEERS" && npm install --no-audit --no-fund --loglevel=error)
    else
        (cd "$PEERS" && npm install --no-audit --no-fund --loglevel=error)
    fi
    echo "$want" >"$stamp"
fi

# --- the tests ---------------------------------------------------------------
export TANDEM_CHROMIUM="${TANDEM_CHROMIUM:-/usr/bin/chromium}"
log "cargo test --workspace --no-fail-fast $*"
cargo test --workspace --no-fail-fast "$@"
