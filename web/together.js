// The /together/{room} page: a <video> kept in sync by tandem-sync.js (the shipped
// demo video by default), a muted autoplay start with an Unmute every member can
// press (local only), host controls for the host (or everyone when allowed), a
// room header with an invite link, members, chat with reactions and moderation,
// and errors that say what is wrong instead of "reconnecting…" forever.
//
// Opened as a Discord Activity (`/together` or `/` with Discord's `instance_id` in
// the query, usually under `/.proxy`): signs in with Discord (the Embedded App
// SDK's authorize, exchanged at tandem's /v1/discord/token), joins the instance's
// room `discord:{instance_id}` and shows Discord names and avatars. The authorize
// step can be supplied by whoever embeds the page, as `window.tandemActivity =
// {authorize, authenticate?, instanceId?}` set before this module runs (the tests
// do; so may an Activity bundle that already holds a DiscordSDK): the code still
// goes through tandem and Discord. docs/DISCORD.md, "The Activity".
import { TandemSync, discordSignIn, fromDiscordSdk } from './tandem-sync.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const parts = location.pathname.split('/').filter(Boolean);
const prefix = location.pathname.startsWith('/.proxy/') ? '/.proxy' : '';
// /together/{room}: that room; /together or / (the Activity): the instance's room, once signed in.
const roomInPath = parts.length >= 2 && parts[parts.length - 2] === 'together';
const activity = !roomInPath && (params.has('instance_id') || !!window.tandemActivity);
let room = roomInPath ? decodeURIComponent(parts[parts.length - 1]) : '';
const inviteToken = params.get('invite') || '';
// Browsers start media without a click only when muted: the first member loads it
// muted and everyone has an Unmute button.
const defaultMedia = params.get('video') || `${prefix}/media/demo.mp4`;
const wsUrl = () => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${prefix}/v1/rooms/${encodeURIComponent(room)}/ws`;
const video = $('video');
let sync = null;
let adapter = null;
let oldest = null;

function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]); }
function canModerate() { return sync && (sync.isHost() || (sync.you && sync.you.role === 'moderator')); }

/** The token's claims (not verified here: only to decide what to show). */
function claimsOf(token) {
  try { return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/'))); } catch { return {}; }
}

function showRoom() {
  $('roomName').textContent = room;
  document.querySelectorAll('span.room').forEach((e) => { e.textContent = room; });
}
showRoom();

const HELP = `Open this page as <code>/together/${esc(room)}?token=…</code> with a room token of your own: ` +
  `on the server run <code>tandem token --room ${esc(room)} --user YOU --name "Your name"</code>, ` +
  `or ask the platform (<code>POST /v1/rooms/${esc(room)}/token</code> with an identity JWT), ` +
  `or ask a moderator of the room for an invite link.`;

/** Replaces the room with a panel saying why we are not (or no longer) in it. */
function showFatal(title, text, help = HELP) {
  $('room').hidden = true;
  $('join').hidden = true;
  $('invite').hidden = true;
  $('memberCount').textContent = '';
  $('fatal').hidden = false;
  $('fatalTitle').textContent = title;
  $('fatalText').textContent = text;
  $('fatalHelp').innerHTML = help;
  video.pause();
}

function onFatal(f) {
  const reload = 'Reload the page to try again.';
  switch (f.code) {
    case 'unauthorized':
      return showFatal('The room token was refused', `${f.message}.`, HELP);
    case 'forbidden': case 'not_enrolled':
      return showFatal('You may not join this room', `${f.message}.`,
        'A stream\'s room admits its enrolled viewers, its instructor and admins. ' + HELP);
    case 'room_full':
      return showFatal('The room is full', `${f.message}.`, `Wait until someone leaves. ${reload}`);
    case 'server_full':
      return showFatal('The server is full', `${f.message}.`, reload);
    case 'banned':
      return showFatal('You are banned from this room', `${f.message}.`, 'A moderator banned you; only a moderator can lift it.');
    case 'kicked':
      return showFatal('You were removed from the room', `${f.message}.`, reload);
    case 'replaced':
      return showFatal('This room is open elsewhere', `${f.message}.`, reload);
    default:
      return showFatal('Disconnected from the room', `${f.code}: ${f.message}.`, reload);
  }
}

// ---- the invite flow: a guest types a name, the invite buys a room token ----------
function showJoin() {
  $('join').hidden = false;
  $('joinName').value = params.get('name') || '';
  $('joinForm').onsubmit = async (e) => {
    e.preventDefault();
    $('joinError').textContent = '';
    const name = $('joinName').value.trim();
    if (!name) return;
    try {
      const r = await fetch(`${prefix}/v1/rooms/${encodeURIComponent(room)}/join`, {
        method: 'POST',
        headers: { authorization: `Bearer ${inviteToken}`, 'content-type': 'application/json' },
        body: JSON.stringify({ name }),
      });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) {
        const msg = (body.error && body.error.message) || `HTTP ${r.status}`;
        if (r.status === 401) return showFatal('This invite link does not work', `${msg}.`, HELP);
        $('joinError').textContent = msg;
        return;
      }
      // The page's address now carries the guest's own token: a reload rejoins.
      const next = new URLSearchParams(params);
      next.delete('invite'); next.delete('name'); next.set('token', body.token);
      history.replaceState(null, '', `${location.pathname}?${next}`);
      $('join').hidden = true;
      start(body.token);
    } catch (err) {
      $('joinError').textContent = `cannot reach the server: ${err.message}`;
    }
  };
}

// ---- the room -----------------------------------------------------------------
function start(token, user = { name: params.get('name') || undefined }) {
  $('room').hidden = false;
  const claims = claimsOf(token);
  sync = new TandemSync({ url: wsUrl(), token, user });
  adapter = sync.attach(video);
  sync.debug = !!sessionStorage.getItem('tandem-debug');
  $('invite').hidden = !(claims.grants && claims.grants.moderate);

  sync.addEventListener('fatal', (e) => onFatal(e.detail));
  sync.addEventListener('state', (e) => { setSource(e.detail); renderStatus(); renderControls(); });
  sync.addEventListener('welcome', (e) => {
    const p = e.detail.room.playback;
    // The first member into an empty room loads the default video.
    if (!p.media && sync.isHost()) sync.load({ id: 'demo', url: defaultMedia, title: 'tandem demo' }, 0);
    renderControls();
  });
  sync.addEventListener('presence', (e) => { renderMembers(e.detail.members); renderControls(); });
  sync.addEventListener('host', renderControls);
  sync.addEventListener('settings', renderControls);
  sync.addEventListener('connection', renderStatus);
  sync.addEventListener('error', (e) => {
    const m = e.detail;
    flash(`${m.code}: ${m.message}` + (m.retry_after_ms ? ` (retry in ${Math.ceil(m.retry_after_ms / 1000)} s)` : ''));
  });
  sync.addEventListener('chat', (e) => {
    const d = e.detail;
    if (d.kind === 'reset') { $('chat').innerHTML = ''; d.messages.forEach(addChat); oldest = d.messages[0] ? d.messages[0].id : null; }
    else if (d.kind === 'message' && !d.message.duplicate) addChat(d.message);
    else if (d.kind === 'deleted') { const li = document.querySelector(`#chat li[data-id="${CSS.escape(d.id)}"]`); if (li) li.remove(); }
    else if (d.kind === 'page') {
      const chat = $('chat');
      [...d.messages].reverse().forEach((m) => chat.prepend(chatItem(m)));
      if (d.messages.length) oldest = d.messages[0].id;
      $('older').disabled = !d.has_more;
    }
  });
  sync.addEventListener('reaction', (e) => {
    const s = document.createElement('div');
    s.className = 'float'; s.style.left = (10 + Math.random() * 60) + '%'; s.textContent = e.detail.emoji;
    document.body.append(s); setTimeout(() => s.remove(), 2000);
  });
  sync.addEventListener('moderation', (e) => {
    const m = e.detail;
    flash(`${m.user} was ${m.type.split('.')[1]} by ${m.by}`);
  });

  // For tests and debugging: read the player at a given server instant.
  window.tandem = {
    sync, adapter, video,
    sampleAt(serverTime) {
      return new Promise((resolve) => {
        const wait = serverTime - sync.serverNow();
        setTimeout(() => resolve({ currentTime: video.currentTime, serverNow: sync.serverNow(), paused: video.paused, rate: video.playbackRate, offset: sync.offset, drift: adapter.drift }), Math.max(0, wait));
      });
    },
  };
  setInterval(renderStatus, 500);
  sync.connect();
}

function flash(text) {
  $('errors').textContent = text;
  clearTimeout(flash.t);
  flash.t = setTimeout(() => { $('errors').textContent = ''; }, 6000);
}

function setSource(p) {
  const url = (p && p.media && p.media.url) || null;
  if (url && video.dataset.src !== url) { video.dataset.src = url; video.src = url; }
}

// ---- sound: local to this page --------------------------------------------------
function renderSound() {
  $('unmute').hidden = !video.muted;
  $('muteToggle').textContent = video.muted ? 'Unmute' : 'Mute';
}
function setMuted(muted) {
  video.muted = muted;
  // The click is the user gesture browsers want before sound; resume if the room plays.
  if (!muted && sync && sync.playback && !sync.playback.paused) video.play().catch(() => {});
  renderSound();
}
$('unmute').onclick = () => setMuted(false);
$('muteToggle').onclick = () => setMuted(!video.muted);
video.addEventListener('volumechange', renderSound);
video.addEventListener('error', () => {
  const src = video.dataset.src || video.currentSrc;
  flash(`cannot play ${src}: ${video.error && video.error.code === 4 ? 'not found or not a playable format' : 'network or decode error'}`);
});
renderSound();

// ---- chat and members -----------------------------------------------------------
function chatItem(m) {
  const li = document.createElement('li');
  li.dataset.id = m.id;
  const t = m.media_time !== undefined ? `[${Math.floor(m.media_time / 60)}:${String(Math.floor(m.media_time % 60)).padStart(2, '0')}] ` : '';
  li.innerHTML = `<b>${esc(m.user.name)}</b> <small>${t}</small>${esc(m.text)}`;
  if (canModerate() || (sync.you && m.user.id === sync.you.id)) {
    const del = document.createElement('button'); del.textContent = 'delete'; del.onclick = () => sync.deleteChat(m.id); li.append(del);
  }
  if (canModerate() && sync.you && m.user.id !== sync.you.id) {
    for (const [label, f] of [['mute 5m', () => sync.mute(m.user.id, 300)], ['kick', () => sync.kick(m.user.id)], ['ban', () => sync.ban(m.user.id, 'from chat')]]) {
      const b = document.createElement('button'); b.textContent = label; b.onclick = f; li.append(b);
    }
  }
  return li;
}
function addChat(m) { const c = $('chat'); c.append(chatItem(m)); c.scrollTop = c.scrollHeight; }

function renderMembers(members) {
  const ul = $('members'); ul.innerHTML = '';
  for (const m of members) {
    const li = document.createElement('li');
    if (!m.connected || m.status !== 'active') li.className = 'off';
    const av = m.avatar ? `<img src="${esc(m.avatar)}" alt="">` : esc((m.name || m.id).slice(0, 1).toUpperCase());
    li.innerHTML = `<span class="avatar">${av}</span>${esc(m.name)}` +
      (m.role === 'host' ? ' <span class="badge">HOST</span>' : '') +
      (m.role === 'moderator' ? ' <span class="badge">MOD</span>' : '') +
      ` <small>${esc(m.status)}${m.connected ? '' : ', reconnecting'}</small>`;
    ul.append(li);
  }
  const n = members.length;
  $('memberCount').textContent = `${n} watching`;
}
function hostName() {
  if (!sync.room) return 'the host';
  for (const m of sync.members.values()) if (m.id === sync.room.host) return m.name || m.id;
  return 'the host';
}
function renderControls() {
  if (!sync) return;
  const host = sync.isHost();
  const everyone = !!(sync.room && sync.room.control === 'everyone');
  const mayControl = host || everyone;
  $('hostControls').hidden = !mayControl;
  $('controlsLegend').textContent = host ? 'Host controls (the whole room follows)' : 'Room controls (the host lets everyone control)';
  $('everyone').disabled = !host;
  $('everyone').checked = everyone;
  $('viewerNote').hidden = mayControl || !sync.connected;
  $('viewerNote').textContent = `${hostName()} controls playback; you follow along.`;
}
function renderStatus() {
  if (!sync) return;
  const st = $('status');
  if (sync.fatal) { st.textContent = ''; return; }
  const p = sync.playback;
  st.dataset.state = sync.connected ? 'connected' : 'reconnecting';
  if (!sync.connected) { st.textContent = sync.you ? 'connection lost; reconnecting…' : 'connecting…'; return; }
  // "playing" only when the video really plays; the room may play while this page loads.
  const roomPlays = p && !p.paused;
  const local = !roomPlays ? 'paused' : video.error ? 'the video cannot be played' :
    (video.paused || video.readyState < 3) ? 'loading the video…' : 'playing';
  st.textContent = `${local} · ${sync.position().toFixed(2)} s · rate ${p ? p.rate : 1} · ` +
    `clock offset ${sync.offset.toFixed(1)} ms (rtt ${sync.rtt === null ? '?' : sync.rtt.toFixed(1)} ms) · drift ${(adapter.drift * 1000).toFixed(0)} ms`;
}

$('play').onclick = () => sync.play();
$('pause').onclick = () => sync.pause();
$('back').onclick = () => sync.seek(Math.max(0, sync.position() - 10));
$('fwd').onclick = () => sync.seek(sync.position() + 10);
$('rate').onchange = (e) => sync.setRate(Number(e.target.value));
$('load').onclick = () => { const url = $('mediaUrl').value.trim(); if (url) sync.load({ id: url, url, title: url }, 0); };
$('everyone').onchange = (e) => sync.settings({ control: e.target.checked ? 'everyone' : 'host' });
$('older').onclick = () => { if (oldest) sync.history(oldest, 50); };
$('chatForm').onsubmit = (e) => {
  e.preventDefault();
  const t = $('chatText').value.trim();
  if (t) { sync.sendChat(t, video.currentTime); $('chatText').value = ''; }
};
document.querySelectorAll('#reactions span').forEach((s) => { s.onclick = () => sync.react(s.textContent, video.currentTime); });
document.addEventListener('visibilitychange', () => { if (sync) sync.setHidden(document.hidden); });

// ---- invite links (moderators) --------------------------------------------------
$('makeInvite').onclick = async () => {
  const r = await fetch(`${prefix}/v1/rooms/${encodeURIComponent(room)}/invite`, {
    method: 'POST', headers: { authorization: `Bearer ${sync.token}` },
  }).catch((err) => ({ ok: false, status: 0, json: async () => ({ error: { message: err.message } }) }));
  const body = await r.json().catch(() => ({}));
  if (!r.ok) { flash(`invite: ${(body.error && body.error.message) || `HTTP ${r.status}`}`); return; }
  // The link as this browser reaches the server (public_url may name another host).
  const url = `${location.origin}${prefix}/together/${encodeURIComponent(room)}?invite=${body.invite_token}`;
  $('inviteUrl').value = url;
  $('inviteUrl').hidden = false;
  $('copyInvite').hidden = false;
  $('inviteUrl').title = `valid until ${body.expires_at}`;
  $('inviteUrl').select();
};
$('copyInvite').onclick = async () => {
  try { await navigator.clipboard.writeText($('inviteUrl').value); $('copyInvite').textContent = 'Copied'; }
  catch { $('inviteUrl').select(); document.execCommand('copy'); }
};

// ---- the Discord Activity ---------------------------------------------------------
const ACTIVITY_HELP = 'This page runs as a Discord Activity: open it from a voice channel in Discord. ' +
  'The server needs <code>[discord] client_id</code> and <code>client_secret</code> (docs/DISCORD.md).';

/** The authorize step: the embedder's (window.tandemActivity), else Discord's Embedded App SDK. */
async function discordOption() {
  const hook = window.tandemActivity;
  if (hook && typeof hook.authorize === 'function') {
    return { instanceId: hook.instanceId || params.get('instance_id'), authorize: hook.authorize, authenticate: hook.authenticate };
  }
  const meta = document.querySelector('meta[name="tandem-discord-client-id"]');
  const clientId = (meta && meta.content) || params.get('client_id') || '';
  if (!clientId) throw Object.assign(new Error('the server has no Discord application configured ([discord] client_id)'), { code: 'not_configured' });
  const { DiscordSDK } = await import(`${prefix}/vendor/discord-embedded-app-sdk.js`);
  return fromDiscordSdk(new DiscordSDK(clientId), { clientId });
}

async function startActivity() {
  $('tokenHelp').hidden = true;
  $('signin').hidden = false;
  $('signin').textContent = 'signing in with Discord…';
  let signed;
  try {
    signed = await discordSignIn({ base: prefix, ...(await discordOption()) });
  } catch (err) {
    $('signin').hidden = true;
    const text = /[.!?]$/.test(err.message) ? err.message : `${err.message}.`;
    if (err.status === 403) return showFatal('You are not in this Activity', text, 'Start or join the Activity from the voice channel in Discord.');
    if (err.status === 400) return showFatal('Discord sign-in failed', text, 'Close the Activity and start it again from Discord.');
    return showFatal('Discord sign-in failed', text, ACTIVITY_HELP);
  }
  $('signin').textContent = `signed in as ${signed.presence.name}`;
  room = signed.room;
  showRoom();
  window.tandemDiscord = { user: signed.user, room: signed.room, presence: signed.presence };
  start(signed.sessionToken, signed.presence);
}

// ---- start ----------------------------------------------------------------------
const token = params.get('token') || '';
if (activity) startActivity();
else if (!room) showFatal('This page needs a room', 'Open /together/{room}, or start it as a Discord Activity.', ACTIVITY_HELP);
else if (token) start(token);
else if (inviteToken) showJoin();
else showFatal('This page needs a room token', `No token in the address of room "${room}".`);
