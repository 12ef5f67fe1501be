#!/usr/bin/env node
// The Watch Together page as a newcomer meets it (issue 13, item 1), in headless
// Chromium with the browser's default autoplay policy:
// - the host opens the room: the shipped demo video plays muted, "Unmute" is
//   shown; a click unmutes it (video.muted === false) and it keeps playing;
//   the host controls are shown to the host;
// - the host creates an invite link; a guest opens it, types a name, joins, sees
//   no host controls, and plays the video too;
// - a page without a token, one with a bad token, one past the room's member
//   limit, and the guest after a ban each show an error panel (no "reconnecting").
// Screenshots go to SHOT_DIR. Prints one JSON line; exit 0 = pass.
//
// usage: node together-page.js BASE_URL ROOM HOST_TOKEN THIRD_TOKEN SHOT_DIR
'use strict';

const path = require('path');
const { sleep, until, launch, open: openPage } = require('./page-kit');

const [base, room, hostToken, thirdToken, shotDir] = process.argv.slice(2);
const result = { ok: false, steps: [] };
const log = (...a) => console.error('[together-page]', ...a);
const open = (ctx, name, url) => openPage(ctx, log, name, url);

/** The video advances by more than 0.5 s over a second, not paused. */
async function plays(page, what) {
  const a = await page.evaluate(() => document.getElementById('video').currentTime);
  return until(what, async () => {
    const v = await page.evaluate(() => { const v = document.getElementById('video'); return { t: v.currentTime, paused: v.paused, muted: v.muted, src: v.currentSrc, err: v.error && v.error.code }; });
    return { ok: !v.paused && v.t > a + 0.5, ...v };
  });
}

/** The error panel is shown with `text`, and the status never says reconnecting. */
async function fatal(page, what, text) {
  const got = await until(what, async () => {
    const s = await page.evaluate(() => ({
      shown: !document.getElementById('fatal').hidden,
      text: document.getElementById('fatal').innerText,
      status: document.getElementById('status').textContent,
    }));
    return { ok: s.shown && s.text.toLowerCase().includes(text), ...s };
  });
  // Stays put: no reconnect loop behind the panel.
  await sleep(1500);
  const later = await page.evaluate(() => ({ status: document.getElementById('status').textContent, shown: !document.getElementById('fatal').hidden }));
  if (!later.shown || /reconnect/i.test(later.status)) throw new Error(`${what}: panel gone or reconnecting: ${JSON.stringify(later)}`);
  return got.text;
}

async function main() {
  // No autoplay override: the page must start muted to play without a click.
  const { ctx, close } = await launch('together-page');
  try {
    // Host: the demo video plays muted, Unmute shown, host controls shown.
    const host = await open(ctx, 'host', `${base}/together/${room}?token=${hostToken}`);
    await host.waitForFunction(() => window.tandem && window.tandem.sync.connected);
    const first = await plays(host, 'host video plays');
    if (!first.src.endsWith('/media/demo.mp4')) throw new Error(`default video: ${first.src}`);
    if (!first.muted) throw new Error('the video should start muted (autoplay rules)');
    const shown = (id) => getComputedStyle(document.getElementById(id)).display !== 'none';
    const before = await host.evaluate((f) => { const shown = eval(f); return { unmute: shown('unmute'), controls: shown('hostControls'), invite: shown('invite'), header: document.getElementById('roomName').textContent }; }, shown.toString());
    if (!before.invite) throw new Error('a moderator does not see "Create invite link"');
    if (!before.unmute) throw new Error('no Unmute button while muted');
    if (!before.controls) throw new Error('the host does not see the host controls');
    if (before.header !== room) throw new Error(`room header: ${before.header}`);
    await host.screenshot({ path: path.join(shotDir, 'together-host-muted.png') });
    await host.click('#unmute');
    const unmuted = await host.evaluate(() => ({ muted: document.getElementById('video').muted, button: !document.getElementById('unmute').hidden }));
    if (unmuted.muted || unmuted.button) throw new Error(`after Unmute: ${JSON.stringify(unmuted)}`);
    const after = await plays(host, 'host video plays unmuted');
    if (after.muted) throw new Error('muted again');
    result.host = { muted_after_click: after.muted, current_time: after.t };
    result.steps.push('host plays, unmuted');

    // Invite link -> guest joins with a name.
    await host.click('#makeInvite');
    const invite = (await until('invite link', async () => {
      const v = await host.evaluate(() => document.getElementById('inviteUrl').value);
      return { ok: v.includes('invite='), v };
    })).v;
    result.invite_url_shape = invite.replace(/invite=.*/, 'invite=…');
    const guest = await open(ctx, 'guest', invite);
    await guest.waitForSelector('#joinName');
    await guest.fill('#joinName', 'Guest Gina');
    await guest.click('#joinForm button');
    await guest.waitForFunction(() => window.tandem && window.tandem.sync.connected);
    const g = await guest.evaluate(() => ({
      url: location.search, controls: !document.getElementById('hostControls').hidden,
      note: document.getElementById('viewerNote').textContent, name: window.tandem.sync.you.name,
      invite: getComputedStyle(document.getElementById('invite')).display !== 'none',
    }));
    if (g.invite) throw new Error('a guest (no moderate grant) sees "Create invite link"');
    if (!g.url.includes('token=') || g.url.includes('invite=')) throw new Error(`guest URL: ${g.url}`);
    if (g.controls) throw new Error('a guest sees the host controls');
    if (g.name !== 'Guest Gina') throw new Error(`guest name: ${g.name}`);
    await plays(guest, 'guest video plays');
    await until('host sees two members', async () => {
      const n = await host.evaluate(() => document.querySelectorAll('#members li').length);
      return { ok: n === 2, n };
    });
    await host.screenshot({ path: path.join(shotDir, 'together-host.png') });
    await guest.screenshot({ path: path.join(shotDir, 'together-guest.png') });
    result.guest = g;
    result.steps.push('guest joined by invite');

    // No token, a bad token, a full room.
    const none = await open(ctx, 'none', `${base}/together/${room}`);
    result.no_token = await fatal(none, 'no-token panel', 'needs a room token');
    await none.screenshot({ path: path.join(shotDir, 'together-no-token.png') });
    const bad = await open(ctx, 'bad', `${base}/together/${room}?token=not-a-token`);
    result.bad_token = await fatal(bad, 'bad-token panel', 'token was refused');
    await bad.screenshot({ path: path.join(shotDir, 'together-bad-token.png') });
    const third = await open(ctx, 'third', `${base}/together/${room}?token=${thirdToken}`);
    result.room_full = await fatal(third, 'room-full panel', 'room is full');
    result.steps.push('no token, bad token, room full shown');

    // A ban reaches the guest's page as a panel, not a reconnect loop.
    const guestId = await guest.evaluate(() => window.tandem.sync.you.id);
    await host.evaluate((id) => window.tandem.sync.ban(id, 'test'), guestId);
    result.banned = await fatal(guest, 'banned panel', 'banned');
    await guest.screenshot({ path: path.join(shotDir, 'together-banned.png') });
    result.steps.push('ban shown');
    result.ok = true;
  } finally {
    await close();
  }
}

main().then(
  () => { console.log(JSON.stringify(result)); process.exit(result.ok ? 0 : 1); },
  (e) => { result.error = String(e && e.stack || e); console.log(JSON.stringify(result)); process.exit(1); },
);
