#!/usr/bin/env node
// The first hour's walk (issue 13, "Prove it"), in headless Chromium with the
// browser's default autoplay policy, through the links a server started with no
// configuration prints:
// - broadcast: Chromium's fake camera goes live;
// - watch: "playing" with frames decoded and rising;
// - together: the shipped demo video plays muted, a click on Unmute unmutes it and
//   it keeps playing;
// - streams: the operator dashboard lists the demo stream with its publisher and
//   one viewer.
// Screenshots go to SHOT_DIR. Prints one JSON line; exit 0 = pass.
//
// usage: node first-hour.js SHOT_DIR BROADCAST_URL WATCH_URL TOGETHER_URL STREAMS_URL
'use strict';

const path = require('path');
const { until: untilEvery, launch, open: openPage } = require('./page-kit');

const [shotDir, broadcastUrl, watchUrl, togetherUrl, streamsUrl] = process.argv.slice(2);
const result = { ok: false, steps: [] };
const log = (...a) => console.error('[first-hour]', ...a);
const open = (ctx, name, url) => openPage(ctx, log, name, url);
const until = (what, f, timeoutMs = 30000) => untilEvery(what, f, timeoutMs);

const stats = (page) => page.evaluate(() => (window.tandem && window.tandem.stats ? window.tandem.stats() : null));
const shot = (page, name) => page.screenshot({ path: path.join(shotDir, `first-hour-${name}.png`) });

async function main() {
  // The camera is Chromium's fake one and its prompt is accepted, as a person
  // clicking "Allow"; autoplay is the browser's default (no override).
  const { ctx, close } = await launch('first-hour', ['--disable-quic',
    '--use-fake-device-for-media-stream=fps=30', '--use-fake-ui-for-media-stream',
    '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns']);
  try {
    // 1. The broadcast link: the camera goes live.
    const pub = await open(ctx, 'broadcast', broadcastUrl);
    await until('broadcast page live', async () => {
      const s = await stats(pub);
      return { ok: !!s && s.state === 'live', state: s && s.state };
    });
    result.steps.push('broadcast live');

    // 2. The watch link: playing, on frames decoded (and still rising).
    const watch = await open(ctx, 'watch', watchUrl);
    const playing = await until('watch page playing', async () => {
      const s = await stats(watch);
      const frames = (s && s.video && s.video.framesDecoded) || 0;
      return { ok: !!s && s.state === 'playing' && frames >= 15, state: s && s.state, frames };
    }, 45000);
    await until('watch page still decoding', async () => {
      const s = await stats(watch);
      const frames = (s && s.video && s.video.framesDecoded) || 0;
      return { ok: s.state === 'playing' && frames > playing.frames, frames };
    });
    result.watch = { state: 'playing', frames: playing.frames };
    result.steps.push('watch playing');

    // 3. The together link: the shipped video plays muted; Unmute is a click.
    const room = await open(ctx, 'together', togetherUrl);
    const video = () => room.evaluate(() => {
      const v = document.getElementById('video');
      return { t: v.currentTime, paused: v.paused, muted: v.muted, src: v.currentSrc };
    });
    const t0 = (await until('together video loaded', async () => {
      const v = await video();
      return { ok: v.src.endsWith('/media/demo.mp4') && v.t > 0, ...v };
    })).t;
    const muted = await until('together video plays (muted)', async () => {
      const v = await video();
      return { ok: !v.paused && v.t > t0 + 0.5, ...v };
    });
    if (!muted.muted) throw new Error('the room video should start muted (autoplay rules)');
    await shot(room, 'together-muted');
    await room.click('#unmute');
    const t1 = (await video()).t;
    const unmuted = await until('together video plays unmuted', async () => {
      const v = await video();
      return { ok: !v.muted && !v.paused && v.t > t1 + 0.5, ...v };
    });
    result.together = { muted_before: muted.muted, muted_after: unmuted.muted, src: unmuted.src, t: unmuted.t };
    result.steps.push('together unmuted');

    // 4. The streams link: the operator sees the demo stream with one viewer.
    const ops = await open(ctx, 'streams', streamsUrl);
    const listed = await until('dashboard lists demo with 1 viewer', async () => {
      const s = await stats(ops);
      const row = s && Array.isArray(s.streams) ? s.streams.find((r) => r.stream === 'demo') : null;
      return { ok: !!row && row.viewers === 1 && !!row.publisher && s.rows >= 1, state: s && s.state, row };
    });
    result.streams = listed.row;
    result.steps.push('streams lists demo');

    await shot(pub, 'broadcast');
    await shot(watch, 'watch');
    await shot(room, 'together-unmuted');
    await shot(ops, 'streams');
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e);
  } finally {
    await close();
  }
  console.log(JSON.stringify(result));
  process.exit(result.ok ? 0 : 1);
}

main();
