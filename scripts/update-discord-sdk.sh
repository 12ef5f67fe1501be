#!/usr/bin/env bash
# Reinstalls Discord's Embedded App SDK (the version pinned in web/package.json and
# web/package-lock.json) and bundles it, with its dependencies, into one ES module,
# web/vendor/discord-embedded-app-sdk.js, which the server embeds and serves at
# /vendor/discord-embedded-app-sdk.js: the /together page imports it when it runs
# as a Discord Activity (docs/DISCORD.md, "The Activity").
#
# The npm package ships an ES module that imports its dependencies by bare name
# (zod, eventemitter3, uuid, …), which a browser without a bundler cannot resolve;
# esbuild (a devDependency, pinned too) inlines them. The bundle is committed so that
# building and running tandem needs no npm; run this only to change the version:
# `npm install --prefix web --save-exact @discord/embedded-app-sdk@X.Y.Z`, then this
# script, and commit web/package.json, web/package-lock.json and web/vendor/ together.
#
# Usage: scripts/update-discord-sdk.sh
set -euo pipefail
cd "$(dirname "$0")/../web"
command -v npm >/dev/null || { echo "npm is needed (apt-get install npm)" >&2; exit 1; }
npm ci --no-audit --no-fund
pkg=node_modules/@discord/embedded-app-sdk
version=$(node -p "require('./$pkg/package.json').version")
out=vendor/discord-embedded-app-sdk.js
mkdir -p vendor
npx --no-install esbuild "$pkg/output/index.mjs" --bundle --format=esm --minify \
  --legal-comments=none --log-level=warning --outfile="$out.body"
{
  printf '/*! @discord/embedded-app-sdk %s (MIT, Copyright (c) Discord) bundled with its dependencies ' "$version"
  printf '(zod, eventemitter3, uuid, big-integer, decimal.js-light, lodash.transform) by scripts/update-discord-sdk.sh; '
  printf 'licences in discord-embedded-app-sdk.LICENSE, see web/vendor/README.md. */\n'
  cat "$out.body"
} >"$out.tmp"
rm -f "$out.body"
mv "$out.tmp" "$out"
# MIT and the Unlicense ask that the notices go with the redistributed code.
lic=vendor/discord-embedded-app-sdk.LICENSE
: >"$lic"
for dep in @discord/embedded-app-sdk zod eventemitter3 uuid big-integer decimal.js-light lodash.transform; do
  dir=node_modules/$dep
  file=$(ls "$dir" | grep -i -m1 -E '^(licen[cs]e|unlicense)') || { echo "no licence file in $dir" >&2; exit 1; }
  {
    printf '==== %s %s (%s) ====\n\n' "$dep" "$(node -p "require('./$dir/package.json').version")" \
      "$(node -p "require('./$dir/package.json').license")"
    cat "$dir/$file"
    printf '\n\n'
  } >>"$lic"
done
echo "web/$out: @discord/embedded-app-sdk $version, $(wc -c <"$out") bytes"
