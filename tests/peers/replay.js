#!/usr/bin/env node
// The replay page (/replay/{stream}, web/replay.html) in headless Chromium, as an
// enrolled student opens it from the link their platform gives them
// (`/replay/{id}?token=IDENTITY_JWT`; the page moves the token out of the address).
//
// Modes:
// - vod (default): the recording has ended. Waits for playback (state "playing",
//   currentTime past 1 s and advancing), seeks to the middle of `duration`, waits
//   until currentTime advances from there.
// - live: the class is still live (joined late). Waits for playback, then asserts
//   the page says live, plays within --max-behind seconds of the live edge (the end
//   of the seekable range), not from the start when the class has run longer than
//   that, and that the edge grows while it plays.
// - expect=STATE: waits until the page shows STATE (enroll, expired, no-recording,
//   no-token, failed, unknown …) and prints what it says; for the API's refusals.
//
// Prints one JSON line {ok, mode, player, duration, played_from, seeked_to,
// after_seek, errors, …}; exit 0 = pass, 1 = failed (the reason in `error` and on
// stderr), 2 = bad usage. Page console output goes to stderr.
//
// usage: node replay.js BASE_URL STREAM TOKEN [--live | --expect=STATE]
//                       [--player=hls.js|native] [--max-behind=SECS] [--timeout=SECS] [--shot=PATH]
// or with TANDEM_BASE_URL, TANDEM_STREAM, TANDEM_TOKEN in the environment
// (a TOKEN of "-" or "" opens the page without one).
'use strict';

const { until, launch, open: openPage } = require('./page-kit');

const flags = Object.fromEntries(process.argv.slice(2).filter((a) => a.startsWith('--'))
  .map((a) => { const [k, ...v] = a.slice(2).split('='); return [k, v.length ? v.join('=') : true]; }));
const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const base = (args[0] || process.env.TANDEM_BASE_URL || '').replace(/\/$/, '');
const stream = args[1] || process.env.TANDEM_STREAM || '';
const token = (args[2] !== undefined ? args[2] : process.env.TANDEM_TOKEN || '').replace(/^-$/, '');
const mode = flags.live ? 'live' : flags.expect ? 'expect' : 'vod';
const timeoutMs = (Number(flags.timeout) || 45) * 1000;
const maxBehind = Number(flags['max-behind']) || 10;

const log = (...a) => console.error('[replay]', ...a);
const result = { ok: false, mode, stream, player: null, duration: null, played_from: null, seeked_to: null, after_seek: null, errors: [] };

/** States in which the page has given up: waiting longer cannot help. */
const FINAL = ['failed', 'enroll', 'expired', 'no-recording', 'no-token', 'unknown'];

const stats = (page) => page.evaluate(() => (window.tandem && window.tandem.stats ? window.tandem.stats() : null));

/** Like page-kit's until(), but fails at once when the page reaches a final state it was not asked for. */
function untilPlaying(page, what, cond, ms = timeoutMs) {
  return until(what, async () => {
    const s = await stats(page);
    if (s && FINAL.includes(s.state)) {
      throw new Error(`${what}: the page says “${s.stateText}” (${s.state})${s.error ? `: ${s.error}` : ''}`);
    }
    return s ? { ...s, ok: cond(s) } : { ok: false, page: 'no window.tandem yet' };
  }, ms);
}

async function main() {
  if (!base || !stream) {
    console.error('usage: node replay.js BASE_URL STREAM TOKEN [--live | --expect=STATE] [--player=hls.js|native]');
    process.exit(2);
  }
  const q = new URLSearchParams();
  if (token) q.set('token', token);
  if (flags.player) q.set('player', flags.player);
  const url = `${base}/replay/${encodeURIComponent(stream)}${q.toString() ? `?${q}` : ''}`;
  // The browser's default autoplay policy: the page starts muted, which it allows.
  const { ctx, close } = await launch('replay', ['--disable-quic']);
  let page;
  try {
    page = await openPage(ctx, log, 'replay', url);
    // The page must not keep the token in its address (it moves it to sessionStorage).
    if (token && page.url().includes(token)) throw new Error('the page left the token in its address');

    if (mode === 'expect') {
      const s = await until(`the page shows ${flags.expect}`, async () => {
        const s = await stats(page);
        return s ? { ...s, ok: s.state === flags.expect } : { ok: false };
      }, timeoutMs);
      Object.assign(result, { state: s.state, shown: s.shown, problem: await page.evaluate(() => {
        const p = document.getElementById('problem');
        return p.hidden ? null : p.textContent.trim();
      }), overlay: await page.evaluate(() => document.getElementById('overlay').textContent.trim()) });
      result.errors = s.errors;
      result.ok = true;
      return;
    }

    // 1. It plays: currentTime past 1 s (vod) or past where it started (live), advancing.
    const first = await untilPlaying(page, 'playback starts', (s) => s.state === 'playing' && s.currentTime > 0);
    result.player = first.player;
    result.played_from = round(first.currentTime);
    const started = await untilPlaying(page, 'currentTime advances past 1 s of playing',
      (s) => s.state === 'playing' && s.currentTime > Math.max(1, first.currentTime + 1));

    if (mode === 'live') {
      if (started.live !== true) throw new Error(`the page does not say live (live: ${started.live}, duration ${started.duration})`);
      const behind = started.seekableEnd - started.currentTime;
      result.live_edge = round(started.seekableEnd);
      result.behind_edge = round(behind);
      if (!(behind <= maxBehind)) throw new Error(`plays ${behind.toFixed(1)} s behind the live edge (${started.seekableEnd}), more than ${maxBehind} s`);
      if (started.seekableEnd > maxBehind + 2 && first.currentTime < 1) throw new Error('a late joiner started from the beginning, not the live edge');
      const grown = await untilPlaying(page, 'the live edge grows', (s) => s.seekableEnd > started.seekableEnd + 1 && s.state === 'playing');
      result.edge_grew_to = round(grown.seekableEnd);
      result.after_seek = round(grown.currentTime);
    } else {
      // 2. A finished recording: a finite duration, then a seek to its middle plays from there.
      if (typeof started.duration !== 'number' || !(started.duration > 2)) {
        throw new Error(`no finite duration to seek in (duration: ${started.duration}, live: ${started.live})`);
      }
      result.duration = round(started.duration);
      const target = started.duration / 2;
      result.seeked_to = round(target);
      await page.evaluate((x) => { document.getElementById('player').currentTime = x; }, target);
      const after = await untilPlaying(page, `playback advances from the middle (${target.toFixed(2)} s)`,
        (s) => !s.seeking && s.state === 'playing' && s.currentTime > target + 1 && s.currentTime < target + 30);
      result.after_seek = round(after.currentTime);
      if (result.played_from > target - 1) throw new Error(`playback started at ${result.played_from}, not near the beginning`);
    }
    const last = await stats(page);
    result.errors = last.errors;
    result.state = last.state;
    result.shown = last.shown;
    result.size = `${last.videoWidth}x${last.videoHeight}`;
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.message ? e.message : e);
    if (page) {
      const s = await stats(page).catch(() => null);
      if (s) {
        result.errors = s.errors;
        result.state = s.state;
        result.shown = s.shown;
      }
      if (flags.shot) await page.screenshot({ path: flags.shot }).catch(() => {});
    }
    log(`FAILED: ${result.error}`);
  } finally {
    if (result.ok && flags.shot && page) await page.screenshot({ path: flags.shot }).catch(() => {});
    await close();
  }
}

const round = (x) => (typeof x === 'number' ? Math.round(x * 1000) / 1000 : x);

main().then(() => {
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
});
