// What the page scripts (first-hour.js, together-page.js) share: Chromium as a
// person's browser (the default autoplay policy: no override), pages that log
// their console, and waiting on a condition with a deadline.
'use strict';

const os = require('os');
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Calls `f` every 200 ms until it returns `{ok: true, …}`; throws with the last answer after `timeoutMs`. */
async function until(what, f, timeoutMs = 20000) {
  const end = Date.now() + timeoutMs;
  let last;
  while (Date.now() < end) {
    last = await f();
    if (last && last.ok) return last;
    await sleep(200);
  }
  throw new Error(`timed out: ${what} (last: ${JSON.stringify(last)})`);
}

/**
 * Headless Chromium with a fresh profile; `extraArgs` add to the flags every test
 * browser needs here (no network beyond loopback, no throttling of background
 * pages). Returns `{ctx, close}`; `close()` also removes the profile.
 */
async function launch(name, extraArgs = []) {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), `tandem-${name}-`));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.TANDEM_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    viewport: { width: 1280, height: 800 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
      '--disable-backgrounding-occluded-windows', ...extraArgs],
  });
  const close = async () => {
    await ctx.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  };
  return { ctx, close };
}

/** Opens `url` in a new page of `ctx` whose console and errors go to `log` as `name`. */
async function open(ctx, log, name, url) {
  const page = await ctx.newPage();
  page.on('console', (m) => log(`${name}:`, m.text()));
  page.on('pageerror', (e) => log(`${name} error:`, e.message));
  await page.goto(url);
  return page;
}

module.exports = { sleep, until, launch, open };
