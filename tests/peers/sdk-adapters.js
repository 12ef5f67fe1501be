#!/usr/bin/env node
// The sync SDK's player adapters in headless Chromium (issue 17): loads
// sdk-adapters.page.js as a module into a page of the tandem server at BASE_URL
// (so the SDK comes from /web/tandem-sync.js, the file the pages and the npm
// package share) and runs its scenarios for a real <video> and for the Kaltura
// Player v7 stand-in. Prints one JSON line; exit 0 = pass.
//
// usage: node sdk-adapters.js BASE_URL
'use strict';

const fs = require('fs');
const path = require('path');
const { launch, open } = require('./page-kit');

const [base] = process.argv.slice(2);
const log = (...a) => console.error('[sdk-adapters]', ...a);

async function main() {
  const { ctx, close } = await launch('sdk-adapters');
  try {
    // Any page of the server gives the module its origin; /healthz has no script of its own.
    const page = await open(ctx, log, 'page', `${base}/healthz`);
    await page.addScriptTag({ type: 'module', content: fs.readFileSync(path.join(__dirname, 'sdk-adapters.page.js'), 'utf8') });
    await page.waitForFunction(() => window.adapterTestsLoaded === true, null, { timeout: 10000 });
    const result = await page.evaluate(() => window.runAdapterTests());
    console.log(JSON.stringify({ ok: result.video.ok && result.kaltura.ok, ...result }));
    return 0;
  } catch (err) {
    console.log(JSON.stringify({ ok: false, error: String(err && err.message || err) }));
    return 1;
  } finally {
    await close();
  }
}

main().then((code) => process.exit(code));
