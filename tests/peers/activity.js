#!/usr/bin/env node
// The /together page as a Discord Activity, in headless Chromium (issue 17): two
// pages open `/.proxy/together?instance_id=…&frame_id=…` the way Discord's iframe
// does, each as a different Discord user. There is no Discord client around them,
// so each page gets its authorization code through the page's documented hook
// (`window.tandemActivity.authorize`, set before the page loads); everything after
// it is real: the page exchanges the code at tandem's /.proxy/v1/discord/token,
// tandem at the stand-in Discord, and the page joins `discord:{instance}`.
// Checks: both land in that room over /.proxy, see each other with their Discord
// names and CDN avatars, the host's pause, seek and play reach the other page's
// video; a refused code and an instance the user is not in show error panels; a
// page without the hook constructs the vendored DiscordSDK with the client id the
// server wrote into it.
// Prints one JSON line; exit 0 = pass.
//
// usage: node activity.js BASE_URL INSTANCE CODE_HOST CODE_GUEST OTHER_INSTANCE
'use strict';

const { until, launch } = require('./page-kit');

const [base, instance, codeHost, codeGuest, otherInstance] = process.argv.slice(2);
const result = { ok: false, steps: [] };
const log = (...a) => console.error('[activity]', ...a);

/** Opens the Activity page as Discord would, with `code` as what authorize() gives. */
async function openActivity(ctx, name, code, inst = instance) {
  const page = await ctx.newPage();
  page.on('console', (m) => log(`${name}:`, m.text()));
  page.on('pageerror', (e) => log(`${name} error:`, e.message));
  const seen = { requests: [], sockets: [] };
  page.on('request', (r) => seen.requests.push(new URL(r.url()).pathname));
  page.on('websocket', (ws) => seen.sockets.push(new URL(ws.url()).pathname));
  await page.addInitScript((c) => {
    window.tandemActivity = {
      authorize: async () => c,
      // What the Embedded App SDK's authenticate() would get: only whether it came.
      authenticate: async (accessToken) => { window.authenticated = typeof accessToken === 'string' && accessToken.length > 0; },
    };
  }, code);
  await page.goto(`${base}/.proxy/together?instance_id=${encodeURIComponent(inst)}&frame_id=frame-${name}&platform=desktop`);
  return { page, seen };
}

/** The member list as the page shows it: name and avatar URL per member. */
const members = (page) => page.evaluate(() => [...document.querySelectorAll('#members li')].map((li) => ({
  text: li.textContent,
  avatar: (li.querySelector('img') || {}).src || null,
})));

const video = (page) => page.evaluate(() => {
  const v = document.getElementById('video');
  return { t: v.currentTime, paused: v.paused, src: v.currentSrc };
});

async function fatalText(page, what, text) {
  const got = await until(what, async () => {
    const s = await page.evaluate(() => ({ shown: !document.getElementById('fatal').hidden, text: document.getElementById('fatal').innerText }));
    return { ok: s.shown && s.text.includes(text), ...s };
  });
  return got.text;
}

async function main() {
  const { ctx, close } = await launch('activity');
  try {
    const host = await openActivity(ctx, 'host', codeHost);
    await host.page.waitForFunction(() => window.tandem && window.tandem.sync.connected && window.tandem.sync.isHost(), null, { timeout: 20000 });
    const guest = await openActivity(ctx, 'guest', codeGuest);
    await guest.page.waitForFunction(() => window.tandem && window.tandem.sync.connected, null, { timeout: 20000 });

    // Both in the instance's room, signed in through tandem under /.proxy.
    for (const [name, p] of [['host', host], ['guest', guest]]) {
      const d = await p.page.evaluate(() => ({
        room: window.tandem.sync.room && window.tandem.sync.room.id,
        shown: document.getElementById('roomName').textContent,
        you: window.tandem.sync.you,
        authenticated: window.authenticated === true,
        url: window.tandem.sync.url.replace(/\?.*$/, ''),
      }));
      if (d.room !== `discord:${instance}`) throw new Error(`${name} is in ${d.room}`);
      if (!d.authenticated) throw new Error(`${name}: authenticate() was not called with an access token`);
      if (!p.seen.requests.includes('/.proxy/v1/discord/token')) throw new Error(`${name} did not sign in at /.proxy/v1/discord/token: ${p.seen.requests.join(' ')}`);
      if (!p.seen.sockets.some((s) => s === `/.proxy/v1/rooms/discord:${instance}/ws` || s === `/.proxy/v1/rooms/${encodeURIComponent(`discord:${instance}`)}/ws`)) {
        throw new Error(`${name}'s socket is not under /.proxy: ${p.seen.sockets.join(' ')}`);
      }
      result[name] = d;
    }
    result.steps.push('same room');

    // Each sees both, by Discord name, with the CDN avatar.
    for (const [name, p] of [['host', host], ['guest', guest]]) {
      const got = await until(`${name} sees both members`, async () => {
        const m = await members(p.page);
        const nelly = m.find((x) => x.text.includes('Nelly'));
        const kit = m.find((x) => x.text.includes('kit_watches'));
        return { ok: m.length === 2 && !!nelly && !!kit, m, nelly, kit };
      });
      result[`${name}_members`] = got.m;
      if (!got.nelly.avatar || !got.nelly.avatar.startsWith('https://cdn.discordapp.com/avatars/')) throw new Error(`avatar: ${JSON.stringify(got.nelly)}`);
      if (!got.kit.avatar || !got.kit.avatar.startsWith('https://cdn.discordapp.com/avatars/')) throw new Error(`avatar: ${JSON.stringify(got.kit)}`);
      if (!got.nelly.text.includes('HOST')) throw new Error(`Nelly (first in) should be the host: ${JSON.stringify(got.m)}`);
    }
    result.steps.push('presence');

    // The host's controls reach the guest's video.
    await until('the guest plays the room video', async () => { const v = await video(guest.page); return { ok: !v.paused && v.t > 0.3 && v.src.includes('/media/demo.mp4'), ...v }; });
    await host.page.click('#pause');
    await until('the guest pauses', async () => { const v = await video(guest.page); return { ok: v.paused, ...v }; });
    await host.page.evaluate(() => window.tandem.sync.seek(12));
    const sought = await until('the guest is at 12 s', async () => { const v = await video(guest.page); return { ok: v.paused && Math.abs(v.t - 12) < 0.05, ...v }; });
    result.guest_after_seek = sought.t;
    await host.page.click('#play');
    const played = await until('the guest plays on from 12 s', async () => { const v = await video(guest.page); return { ok: !v.paused && v.t > 12.3, ...v }; });
    result.guest_after_play = played.t;
    result.steps.push('controls');

    // A code Discord refuses, and an instance the user is not in: panels, not a room.
    const bad = await openActivity(ctx, 'bad', 'not-a-code');
    result.bad_code = await fatalText(bad.page, 'a refused code shows an error', 'Discord refused the code');
    const outsider = await openActivity(ctx, 'outsider', codeHost, otherInstance);
    result.not_in_instance = await fatalText(outsider.page, 'another instance shows an error', 'not in this Activity');
    result.steps.push('errors');

    // Without the hook the page uses Discord's Embedded App SDK (the vendored
    // bundle) with the client id the server wrote into it; outside Discord its
    // ready() never comes, so the page waits, signing in.
    const plain = await ctx.newPage();
    plain.on('pageerror', (e) => log('plain error:', e.message));
    await plain.goto(`${base}/.proxy/together?instance_id=${encodeURIComponent(instance)}&frame_id=frame-plain&platform=desktop`);
    result.embedded_sdk = await plain.evaluate(async () => {
      const { DiscordSDK } = await import('/.proxy/vendor/discord-embedded-app-sdk.js');
      const clientId = document.querySelector('meta[name="tandem-discord-client-id"]').content;
      const sdk = new DiscordSDK(clientId);
      return { clientId: sdk.clientId, instanceId: sdk.instanceId, signin: document.getElementById('signin').textContent };
    });
    if (result.embedded_sdk.instanceId !== instance) throw new Error(`DiscordSDK.instanceId: ${JSON.stringify(result.embedded_sdk)}`);
    if (!/signing in/.test(result.embedded_sdk.signin)) throw new Error(`the page without the hook: ${JSON.stringify(result.embedded_sdk)}`);
    result.steps.push('embedded sdk');

    result.ok = true;
  } catch (err) {
    result.error = String(err && err.message || err);
  } finally {
    await close();
  }
  console.log(JSON.stringify(result));
  return result.ok ? 0 : 1;
}

main().then((code) => process.exit(code));
