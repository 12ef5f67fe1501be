#!/usr/bin/env node
// Watch Together in headless Chromium: three pages on /together/{room} play the same
// video; after the host seeks and changes rate, every page's position (read at the
// same server instant) must be within 50 ms of the others; then one page reloads,
// resumes its session and must be back in sync. Prints one JSON line; exit 0 = pass.
//
// usage: node together.js BASE_URL ROOM VIDEO_PATH TOKEN1 TOKEN2 TOKEN3
'use strict';

const os = require('os');
const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');

const [base, room, video, ...tokens] = process.argv.slice(2);
const LIMIT_MS = 50;
const result = { ok: false, spreads: {}, steps: [] };

function log(...a) { console.error('[together]', ...a); }
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

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

// Positions of every page at one server instant T (host's clock + 300 ms).
async function spread(pages) {
  const T = await pages[0].evaluate(() => window.tandem.sync.serverNow() + 300);
  const samples = await Promise.all(pages.map((p) => p.evaluate((t) => window.tandem.sampleAt(t), T)));
  const rate = await pages[0].evaluate(() => window.tandem.sync.playback.rate);
  // Each read fires a few ms after T (timer jitter): bring it back to T.
  const pos = samples.map((s) => s.currentTime - ((s.serverNow - T) / 1000) * (s.paused ? 0 : rate));
  const ms = (Math.max(...pos) - Math.min(...pos)) * 1000;
  return { ok: ms < LIMIT_MS && samples.every((s) => !s.paused), ms, pos, samples };
}

// Converged = under the limit in 3 consecutive samplings.
async function converge(what, pages, timeoutMs = 25000) {
  let streak = 0;
  let last;
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    last = await spread(pages);
    streak = last.ok ? streak + 1 : 0;
    if (streak >= 3) return last;
    await sleep(300);
  }
  throw new Error(`${what}: pages not within ${LIMIT_MS} ms (last: ${JSON.stringify(last)})`);
}

async function main() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-together-'));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.TANDEM_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--autoplay-policy=no-user-gesture-required', '--disable-background-timer-throttling',
      '--disable-renderer-backgrounding', '--disable-backgrounding-occluded-windows'],
  });
  try {
    const pages = [];
    for (let i = 0; i < 3; i++) {
      const page = i === 0 && ctx.pages().length ? ctx.pages()[0] : await ctx.newPage();
      page.on('console', (m) => log(`page${i}:`, m.text()));
      page.on('pageerror', (e) => log(`page${i} error:`, e.message));
      const url = `${base}/together/${room}?token=${tokens[i]}&video=${encodeURIComponent(video)}&name=page${i}`;
      await page.goto(url);
      await page.waitForFunction(() => window.tandem && window.tandem.sync.connected);
      pages.push(page);
    }
    const hostIs = await pages[0].evaluate(() => window.tandem.sync.isHost());
    if (!hostIs) throw new Error('the first page is not the host');
    result.steps.push('joined');

    // The host loads the default video on join; everyone starts through the ready barrier.
    await until('all playing', async () => {
      const st = await Promise.all(pages.map((p) => p.evaluate(() => ({ paused: window.tandem.video.paused, t: window.tandem.video.currentTime, ready: window.tandem.video.readyState }))));
      return { ok: st.every((s) => !s.paused && s.t > 0.2), st };
    });
    result.spreads.start = (await converge('start', pages)).ms;
    result.steps.push('playing');

    await pages[0].evaluate(() => window.tandem.sync.seek(12));
    await pages[0].evaluate(async () => {
      const s = window.tandem.sync;
      while (!(s.playback && !s.playback.paused && s.playback.position === 12)) await new Promise((r) => setTimeout(r, 50));
    });
    await pages[0].evaluate(() => window.tandem.sync.setRate(1.5));
    await until('rate 1.5 everywhere', async () => {
      const r = await Promise.all(pages.map((p) => p.evaluate(() => window.tandem.sync.playback.rate)));
      return { ok: r.every((x) => x === 1.5), r };
    });
    const afterSeek = await converge('after seek + rate', pages);
    result.spreads.after_seek_rate = afterSeek.ms;
    result.positions_after_seek_rate = afterSeek.pos;
    if (afterSeek.pos.some((p) => p < 12)) throw new Error('the seek did not take');
    result.steps.push('seek+rate in sync');

    const session = await pages[2].evaluate(() => window.tandem.sync.session);
    await pages[2].evaluate(() => { sessionStorage.setItem('tandem-debug', '1'); });
    await pages[2].reload();
    await pages[2].waitForFunction(() => window.tandem && window.tandem.sync.connected);
    const session2 = await pages[2].evaluate(() => window.tandem.sync.session);
    result.resumed_same_session = session === session2;
    if (!result.resumed_same_session) throw new Error('reload did not resume the session');
    await until('reloaded page playing', async () => {
      const s = await pages[2].evaluate(() => ({ paused: window.tandem.video.paused, t: window.tandem.video.currentTime }));
      return { ok: !s.paused && s.t > 12, s };
    });
    result.spreads.after_reload = (await converge('after reload', pages)).ms;
    result.steps.push('reload in sync');
    result.ok = true;
  } finally {
    await ctx.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
}

main().then(
  () => { console.log(JSON.stringify(result)); process.exit(result.ok ? 0 : 1); },
  (e) => { result.error = String(e && e.stack || e); console.log(JSON.stringify(result)); process.exit(1); },
);
