// The /together/{room} demo page: a <video> kept in sync by tandem-sync.js, host
// controls, members with avatars and a host badge, chat with reactions and moderation.
import { TandemSync } from '/web/tandem-sync.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const parts = location.pathname.split('/').filter(Boolean);
const room = decodeURIComponent(parts[parts.length - 1]);
const prefix = location.pathname.startsWith('/.proxy/') ? '/.proxy' : '';
const token = params.get('token') || '';
const defaultMedia = params.get('video') || '/media/sample.mp4';
const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${prefix}/v1/rooms/${encodeURIComponent(room)}/ws`;

const sync = new TandemSync({ url: wsUrl, token, user: { name: params.get('name') || undefined } });
const video = $('video');
const adapter = sync.attach(video);
sync.debug = !!sessionStorage.getItem('tandem-debug');
let oldest = null;

function esc(s) { return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]); }
function canModerate() { return sync.isHost() || (sync.you && sync.you.role === 'moderator'); }

function setSource(p) {
  const url = (p && p.media && p.media.url) || null;
  if (url && video.dataset.src !== url) { video.dataset.src = url; video.src = url; }
}

sync.addEventListener('state', (e) => { setSource(e.detail); renderStatus(); renderControls(); });
sync.addEventListener('welcome', (e) => {
  const p = e.detail.room.playback;
  // The first member into an empty room loads the default video.
  if (!p.media && sync.isHost()) sync.load({ id: 'sample', url: defaultMedia, title: 'Sample' }, 0);
  renderControls();
});
sync.addEventListener('presence', (e) => { renderMembers(e.detail.members); renderControls(); });
sync.addEventListener('host', renderControls);
sync.addEventListener('connection', renderStatus);
sync.addEventListener('error', (e) => {
  const m = e.detail;
  $('errors').textContent = `${m.code}: ${m.message}` + (m.retry_after_ms ? ` (retry in ${Math.ceil(m.retry_after_ms / 1000)} s)` : '');
  setTimeout(() => { $('errors').textContent = ''; }, 5000);
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
  $('errors').textContent = `${m.user} was ${m.type.split('.')[1]} by ${m.by}`;
});

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
}
function renderControls() {
  const mayControl = sync.isHost() || (sync.room && sync.room.control === 'everyone');
  $('hostControls').hidden = !mayControl;
  $('everyone').disabled = !sync.isHost();
  if (sync.room) $('everyone').checked = sync.room.control === 'everyone';
}
function renderStatus() {
  const p = sync.playback;
  $('status').textContent = !sync.connected ? 'reconnecting…' :
    `${p && !p.paused ? 'playing' : 'paused'} · ${sync.position().toFixed(2)} s · rate ${p ? p.rate : 1} · ` +
    `clock offset ${sync.offset.toFixed(1)} ms (rtt ${sync.rtt === null ? '?' : sync.rtt.toFixed(1)} ms) · drift ${(adapter.drift * 1000).toFixed(0)} ms`;
}
setInterval(renderStatus, 500);

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
document.addEventListener('visibilitychange', () => sync.setHidden(document.hidden));

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
sync.connect();
