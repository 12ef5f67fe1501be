#!/usr/bin/env bash
# Reinstalls hls.js (the version pinned in web/package.json and web/package-lock.json)
# and copies its minified browser build to web/vendor/hls.min.js, which the server
# embeds and serves at /vendor/hls.min.js for the replay page (/replay/{stream}).
#
# The copy is committed so that building and running tandem needs no npm; run this
# only to change the version: edit web/package.json, run
# `npm install --prefix web --save-exact hls.js@X.Y.Z`, then this script, and commit
# web/package.json, web/package-lock.json and web/vendor/ together.
#
# The full build (dist/hls.min.js, ~620 KB) rather than hls.light.min.js (~390 KB):
# the light build drops alternate audio renditions, and a recording's multivariant
# playlist may name its audio as one (see docs/RECORDING.md, "Replay page").
#
# Usage: scripts/update-hls.sh
set -euo pipefail
cd "$(dirname "$0")/../web"
command -v npm >/dev/null || { echo "npm is needed (apt-get install npm)" >&2; exit 1; }
npm ci --no-audit --no-fund
src=node_modules/hls.js/dist/hls.min.js
version=$(node -p "require('./node_modules/hls.js/package.json').version")
licence=$(node -p "require('./node_modules/hls.js/package.json').license")
out=vendor/hls.min.js
mkdir -p vendor
{
  printf '/*! hls.js %s (%s) — https://github.com/video-dev/hls.js — Copyright (c) 2017 Dailymotion. ' "$version" "$licence"
  printf 'Licensed under the Apache License, Version 2.0. Copied from the npm package by scripts/update-hls.sh; see web/vendor/README.md. */\n'
  # The source map is not shipped: drop the comment that would make devtools ask for it.
  grep -v '^//# sourceMappingURL=' "$src"
} >"$out.tmp"
mv "$out.tmp" "$out"
# Apache-2.0 asks that a copy of the licence goes with the redistributed file.
cp node_modules/hls.js/LICENSE vendor/hls.js.LICENSE
echo "web/$out: hls.js $version, $(wc -c <"$out") bytes"
