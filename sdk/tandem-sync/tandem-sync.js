// tandem-sync.js: the Watch Together client SDK (SYNC_PROTOCOL.md v1), an ES module
// with no dependencies, and the one source of it: the npm package `tandem-sync`
// (sdk/tandem-sync/, what a Discord Activity built with Vite installs) and the
// server's pages (served as /web/tandem-sync.js, embedded by src/pages.rs) are this
// file. Connects, keeps a clock offset to the server, follows the room's playback
// state, resumes after a drop, and drives a player through a small adapter: an
// HTMLMediaElement (attach), the Kaltura Player v7 (attachKaltura), or any object
// with the PlayerAdapter methods (attachPlayer). Discord Activity sign-in
// (discordSignIn, TandemSync.join with `discord`) is an option, not a dependency:
// the Activity passes its Embedded App SDK's authorize/authenticate in.
// Types: tandem-sync.d.ts beside this file; usage: README.md.

const localNow = () => performance.timeOrigin + performance.now();

/** NTP-style filter: lowest-RTT samples of a sliding window, median offset. */
class ClockFilter {
  constructor(window = 16, best = 4) { this.window = window; this.best = best; this.samples = []; }
  add(offset, rtt) {
    this.samples.push({ offset, rtt });
    if (this.samples.length > this.window) this.samples.shift();
  }
  estimate() {
    if (!this.samples.length) return null;
    const best = [...this.samples].sort((a, b) => a.rtt - b.rtt).slice(0, this.best);
    const rtt = best[0].rtt;
    const offs = best.map((s) => s.offset).sort((a, b) => a - b);
    const n = offs.length;
    const offset = n % 2 ? offs[(n - 1) / 2] : (offs[n / 2 - 1] + offs[n / 2]) / 2;
    return { offset, rtt };
  }
}

export class TandemSync extends EventTarget {
  /**
   * @param {object} o
   * @param {string} [o.url]  ws(s)://host/v1/rooms/{room}/ws (token added as ?token=)
   * @param {string} [o.base] instead of url: where tandem answers ('' this origin,
   *   '/.proxy' in a Discord Activity, or 'https://tandem.example.com'), with o.room
   * @param {string} [o.room] the room id, with o.base
   * @param {string} o.token room token
   * @param {{name?:string, avatar?:string}} [o.user]
   * @param {Storage} [o.storage] where the resume data survives a reload (sessionStorage)
   */
  constructor({ url, base, room, token, user, storage } = {}) {
    super();
    if (!url && room !== undefined) url = roomSocketUrl(base || '', room);
    if (!url) throw new TypeError('TandemSync: url, or base and room, is required');
    this.url = url;
    this.token = token;
    this.user = user || {};
    this.storage = storage === undefined ? globalThis.sessionStorage : storage;
    this.clock = new ClockFilter();
    this.offset = 0;
    this.rtt = null;
    this.session = null;
    this.you = null;
    this.room = null;
    this.members = new Map();
    this.playback = null;
    this.chat = [];
    this.lastSeq = 0;
    this.connected = false;
    this._closing = false;
    this._attempt = 0;
    this._pingId = 0;
    this._pings = new Map();
    this._timers = [];
    this._key = 'tandem-sync:' + url;
    /** Set (and a `fatal` event emitted) when the server refused us for good. */
    this.fatal = null;
    this._lastError = null;
  }

  /** Server time now (ms since the epoch), from the local clock and the offset. */
  serverNow() { return localNow() + this.offset; }
  localNow() { return localNow(); }

  /** Expected media position now (seconds), from the room's playback state. */
  position(at = this.serverNow()) {
    const p = this.playback;
    if (!p) return 0;
    if (p.paused) return p.position;
    return Math.max(0, p.position + ((at - p.at) / 1000) * p.rate);
  }

  isHost() { return !!(this.you && this.room && this.room.host === this.you.id); }

  connect() {
    this._closing = false;
    this.fatal = null;
    this._lastError = null;
    const sep = this.url.includes('?') ? '&' : '?';
    const ws = new WebSocket(this.url + sep + 'token=' + encodeURIComponent(this.token));
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      const hello = { type: 'hello', user: this.user };
      const saved = this._loadResume();
      if (saved) hello.resume = saved;
      ws.send(JSON.stringify(hello));
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch { return; }
      this._onMessage(m);
    };
    ws.onclose = async (ev) => {
      this.connected = false;
      this._stopTimers();
      if (this._closing) { this._emit('connection', { connected: false, code: ev.code, reason: ev.reason }); return; }
      // Refusals that a reconnect cannot fix end here, with a `fatal` event the page
      // shows (SYNC_PROTOCOL.md close codes; docs/SYNC.md "Client SDK").
      let fatal = fatalClose(ev.code, this._lastError);
      // A token refused before the upgrade (HTTP 401/403) looks like a bare 1006 to
      // a WebSocket: ask the same URL over plain HTTP, which answers the reason.
      if (!fatal && !opened) fatal = await this._diagnose();
      if (fatal) {
        this.fatal = { ...fatal, closeCode: ev.code };
        this._clearResume();
        this._emit('connection', { connected: false, code: ev.code, reason: ev.reason, fatal: this.fatal });
        this._emit('fatal', this.fatal);
        return;
      }
      this._emit('connection', { connected: false, code: ev.code, reason: ev.reason });
      const delay = Math.min(10000, 250 * 2 ** this._attempt) * (0.75 + Math.random() * 0.5);
      this._attempt++;
      setTimeout(() => { if (!this._closing) this.connect(); }, delay);
    };
    return this;
  }

  /** Why the upgrade failed, from an HTTP GET of the WebSocket URL (null: retry). */
  async _diagnose() {
    if (this._closing) return null;
    const sep = this.url.includes('?') ? '&' : '?';
    const http = this.url.replace(/^ws/, 'http') + sep + 'token=' + encodeURIComponent(this.token);
    try {
      const r = await fetch(http, { cache: 'no-store' });
      if (r.status !== 401 && r.status !== 403 && r.status !== 404) return null;
      let err = {};
      try { err = (await r.json()).error || {}; } catch {}
      return { code: err.code || (r.status === 401 ? 'unauthorized' : 'forbidden'), message: err.message || `HTTP ${r.status}`, status: r.status };
    } catch { return null; } // the server is away: keep retrying
  }

  /** Leaves the room for good (close 1000: the server hands the host role on at once). */
  close() {
    this._closing = true;
    this._clearResume();
    this._stopTimers();
    if (this.ws) this.ws.close(1000, 'bye');
  }

  send(obj) {
    if (this.ws && this.ws.readyState === 1) { this.ws.send(JSON.stringify(obj)); return true; }
    return false;
  }

  // ---- commands -------------------------------------------------------------------
  command(action, fields = {}) {
    const msg = { type: 'playback.command', action, at: localNow(), ...fields };
    if (msg.position === undefined && action !== 'load') msg.position = this.position();
    return this.send(msg);
  }
  play(position) { return this.command('play', position === undefined ? {} : { position }); }
  pause(position) { return this.command('pause', position === undefined ? {} : { position }); }
  seek(position) { return this.command('seek', { position }); }
  setRate(rate) { return this.command('rate', { rate }); }
  load(media, position = 0) { return this.command('load', { media, position }); }
  transferHost(to) { return this.send({ type: 'host.transfer', to }); }
  settings(s) { return this.send({ type: 'room.settings', ...s }); }
  sendChat(text, media_time) {
    const client_msg_id = (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2);
    const m = { type: 'chat.send', text, client_msg_id };
    if (media_time !== undefined) m.media_time = media_time;
    this.send(m);
    return client_msg_id;
  }
  history(before, limit = 50) { return this.send({ type: 'chat.history', before, limit }); }
  react(emoji, media_time) { return this.send({ type: 'reaction', emoji, media_time }); }
  deleteChat(id) { return this.send({ type: 'chat.delete', id }); }
  mute(user, seconds) { return this.send({ type: 'member.mute', user, seconds }); }
  kick(user, reason) { return this.send({ type: 'member.kick', user, reason }); }
  ban(user, reason) { return this.send({ type: 'member.ban', user, reason }); }
  setHidden(hidden) { return this.send({ type: 'client.visibility', hidden }); }
  report(state, position) {
    return this.send({ type: 'playback.report', state, position, at: localNow(), seq: this.playback ? this.playback.seq : undefined });
  }

  // ---- clock ----------------------------------------------------------------------
  _ping() {
    const id = ++this._pingId;
    this._pings.set(id, true);
    this.send({ type: 'time.ping', id, t0: localNow() });
  }
  _burst() {
    for (let i = 0; i < 8; i++) this._timers.push(setTimeout(() => this._ping(), i * 60));
    this._timers.push(setInterval(() => this._ping(), 15000));
  }
  _stopTimers() { this._timers.forEach((t) => { clearTimeout(t); clearInterval(t); }); this._timers = []; }

  // ---- resume ---------------------------------------------------------------------
  _saveResume() {
    if (!this.storage || !this.session) return;
    try { this.storage.setItem(this._key, JSON.stringify({ session: this.session, resume_token: this.resumeToken, last_seq: this.lastSeq })); } catch {}
  }
  _loadResume() {
    if (!this.storage) return null;
    try { return JSON.parse(this.storage.getItem(this._key) || 'null'); } catch { return null; }
  }
  _clearResume() { try { this.storage && this.storage.removeItem(this._key); } catch {} }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  // ---- messages -------------------------------------------------------------------
  _onMessage(m) {
    if (this.debug) console.log('recv', m.type, m.seq === undefined ? '' : m.seq, m.type === 'error' ? m.message : '');
    if (typeof m.seq === 'number' && m.type !== 'sync.hint' && m.type !== 'welcome') {
      if (m.seq <= this.lastSeq) return; // already seen (replay overlap)
      if (m.seq > this.lastSeq + 1 && this.connected) this.send({ type: 'room.snapshot' });
      this.lastSeq = m.seq;
      this._saveResume();
    }
    switch (m.type) {
      case 'welcome': {
        this.session = m.session; this.resumeToken = m.resume_token; this.you = m.you;
        this.room = m.room; this.lastSeq = m.room.seq;
        this.members = new Map(m.room.members.map((x) => [x.session, x]));
        this.playback = m.room.playback; this.chat = m.chat;
        this._online();
        this._emit('welcome', m);
        this._emit('presence', { members: [...this.members.values()] });
        this._emit('chat', { kind: 'reset', messages: this.chat });
        this._emit('state', this.playback);
        break;
      }
      case 'resumed':
        this.session = m.session; this.resumeToken = m.resume_token; this.you = m.you;
        this._online();
        // A reloaded page resumes its session but has no room state yet: ask for it.
        if (!this.room) this.send({ type: 'room.snapshot' });
        this._emit('resumed', m);
        break;
      case 'time.pong': {
        if (!this._pings.delete(m.id)) break;
        const t3 = localNow();
        const rtt = (t3 - m.t0) - (m.t2 - m.t1);
        const offset = ((m.t1 - m.t0) + (m.t2 - t3)) / 2;
        this.clock.add(offset, Math.max(0, rtt));
        const est = this.clock.estimate();
        this.offset = est.offset; this.rtt = est.rtt;
        this.send({ type: 'time.report', offset: est.offset, rtt: est.rtt });
        this._emit('clock', est);
        break;
      }
      case 'time.ping': {
        const t1 = localNow();
        this.send({ type: 'time.pong', id: m.id, t0: m.t0, t1, t2: localNow() });
        break;
      }
      case 'playback.state':
        this.playback = m;
        if (this.room) this.room.host = m.host;
        this._emit('state', m);
        break;
      case 'presence.join': case 'presence.update':
        this.members.set(m.member.session, m.member);
        this._emit('presence', { members: [...this.members.values()], change: m });
        break;
      case 'presence.leave':
        this.members.delete(m.member.session);
        this._emit('presence', { members: [...this.members.values()], change: m });
        break;
      case 'host.changed':
        if (this.room) this.room.host = m.host;
        for (const x of this.members.values()) x.role = x.id === m.host ? 'host' : (x.role === 'host' ? 'viewer' : x.role);
        this._emit('host', m);
        this._emit('presence', { members: [...this.members.values()], change: m });
        break;
      case 'room.settings':
        if (this.room) Object.assign(this.room, { control: m.control, slow_mode_ms: m.slow_mode_ms });
        this._emit('settings', m);
        break;
      case 'chat.message':
        if (!m.duplicate) this.chat.push(m);
        this._emit('chat', { kind: 'message', message: m });
        break;
      case 'chat.deleted':
        this.chat = this.chat.filter((c) => c.id !== m.id);
        this._emit('chat', { kind: 'deleted', id: m.id, by: m.by });
        break;
      case 'chat.page':
        this._emit('chat', { kind: 'page', messages: m.messages, has_more: m.has_more });
        break;
      case 'reaction':
        this._emit('reaction', m);
        break;
      case 'member.muted': case 'member.unmuted': case 'member.kicked': case 'member.banned': case 'member.unbanned':
        this._emit('moderation', m);
        break;
      case 'sync.hint':
        this._emit('hint', m);
        break;
      case 'error':
        this._lastError = m;
        this._emit('error', m);
        break;
      default:
        this._emit('message', m);
    }
  }

  _online() {
    this.connected = true;
    this._lastError = null; // only a refusal before welcome/resumed decides a close
    this._attempt = 0;
    this._saveResume();
    this._stopTimers();
    this._burst();
    this._emit('connection', { connected: true });
  }

  /**
   * Drives a player; see VideoAdapter. `player`: an HTMLMediaElement (<video>,
   * <audio>), or an object with the PlayerAdapter methods (MediaElementPlayer,
   * KalturaPlayerAdapter or your own).
   */
  attach(player, opts) {
    return this.attachPlayer(typeof player.getTime === 'function' ? player : new MediaElementPlayer(player), opts);
  }

  /** Drives any PlayerAdapter (getTime, seek, play, pause, isPaused, setRate?, isReady?, on?). */
  attachPlayer(adapter, opts) { return new VideoAdapter(this, adapter, opts); }

  /**
   * Drives a Kaltura Player v7 (the object `KalturaPlayer.setup(config)` returns).
   * `opts.EventType` names its events (default `KalturaPlayer.core.EventType`).
   */
  attachKaltura(player, opts = {}) { return this.attachPlayer(new KalturaPlayerAdapter(player, opts), opts); }

  /**
   * Signs in (with `discord`: the Discord Activity flow, see discordSignIn) and
   * connects. Resolves once the sign-in is done (the connection goes on: listen
   * for `welcome`/`fatal`); `sync.discord` holds the sign-in's answer.
   * @param {object} o
   * @param {string} [o.base] where tandem answers; default '/.proxy' with `discord`, else ''
   * @param {string} [o.room] the room (not with `discord`: the instance's room)
   * @param {string} [o.token] room token (not with `discord`)
   * @param {object} [o.discord] `{instanceId, authorize, authenticate?}` (discordSignIn)
   */
  static async join({ base, room, token, user, storage, discord, fetch: doFetch } = {}) {
    if (discord) {
      const b = base === undefined ? DISCORD_PROXY : base;
      const signed = await discordSignIn({ base: b, fetch: doFetch, ...discord });
      const sync = new TandemSync({ base: b, room: signed.room, token: signed.sessionToken, user: { ...signed.presence, ...user }, storage });
      sync.discord = signed;
      return sync.connect();
    }
    return new TandemSync({ base: base || '', room, token, user, storage }).connect();
  }

  /**
   * Drives a player that can only seek/play/pause (e.g. an embedded iframe player):
   * `player = { getTime(): number, seek(t), play(), pause(), isPaused(): boolean,
   *   setRate?(r), isReady?(): boolean }`.
   */
  attachSeekOnly(player, opts) { return new VideoAdapter(this, player, { ...opts, canRate: !!player.setRate }); }
}

/**
 * The close codes and closing errors after which reconnecting is pointless:
 * `{code, message}` for the page, or null to reconnect. 1013 is fatal only after
 * `room_full`/`server_full` (a slow reader's 1013 reconnects); `lastError` is the
 * last `error` since the connection opened and before `welcome`.
 */
export function fatalClose(closeCode, lastError) {
  const last = lastError && lastError.code;
  const why = (code, message) => ({ code, message: (lastError && lastError.message) || message });
  switch (closeCode) {
    case 4000: return { code: 'replaced', message: 'this session was opened again elsewhere (another tab?)' };
    case 4001: return why('kicked', 'a moderator removed you from the room');
    case 4003: return why('banned', 'you are banned from this room');
    case 4004: return why('not_enrolled', 'your access to this room was revoked');
    case 1009: return why('too_large', 'a message was too large');
    default: break;
  }
  if (['room_full', 'server_full', 'banned', 'not_enrolled'].includes(last)) {
    return why(last, last);
  }
  return null;
}

/** `ws(s)://…/v1/rooms/{room}/ws` for a base ('' or '/.proxy': this page's host; or an http(s) URL). */
export function roomSocketUrl(base, room, loc = globalThis.location) {
  const path = `/v1/rooms/${encodeURIComponent(room)}/ws`;
  if (/^https?:\/\//.test(base)) return base.replace(/^http/, 'ws').replace(/\/$/, '') + path;
  return `${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}${base}${path}`;
}

/**
 * The player adapter over a <video>/<audio> element. Every adapter has these
 * methods (PlayerAdapter in tandem-sync.d.ts); `on(event, f)` takes the SDK's
 * event names (ADAPTER_EVENTS) and returns a function that removes the listener.
 */
export class MediaElementPlayer {
  constructor(el) { this.el = el; }
  getTime() { return this.el.currentTime; }
  seek(t) { this.el.currentTime = t; }
  play() { return this.el.play().catch(() => {}); }
  pause() { this.el.pause(); }
  isPaused() { return this.el.paused; }
  setRate(r) { this.el.playbackRate = r; }
  getRate() { return this.el.playbackRate; }
  getDuration() { return this.el.duration; }
  isReady() { return this.el.readyState >= 3 && !this.el.seeking; }
  on(ev, f) { this.el.addEventListener(ev, f); return () => this.el.removeEventListener(ev, f); }
}

/** The events an adapter's `on` knows: HTMLMediaElement's names. */
export const ADAPTER_EVENTS = ['play', 'pause', 'seeking', 'seeked', 'ratechange', 'timeupdate', 'canplay', 'waiting'];

/** The same events' keys in Kaltura's `KalturaPlayer.core.EventType` (playkit-js). */
const KALTURA_EVENT_KEYS = {
  play: 'PLAY', pause: 'PAUSE', seeking: 'SEEKING', seeked: 'SEEKED', ratechange: 'RATE_CHANGE',
  timeupdate: 'TIME_UPDATE', canplay: 'CAN_PLAY', waiting: 'WAITING',
};

/**
 * The player adapter over a Kaltura Player v7 (kaltura-player-js): the object
 * `KalturaPlayer.setup({targetId, provider: {partnerId}})` returns, whose
 * `play()`, `pause()`, `currentTime` (get/set), `playbackRate` (get/set),
 * `paused`, `seeking`, `duration` and `addEventListener(type, listener)` /
 * `removeEventListener` follow the HTMLMediaElement's. Event types come from
 * `opts.EventType`, default `KalturaPlayer.core.EventType` (or the player's
 * `Event.Core`), falling back to the HTML5 names the player re-dispatches.
 */
export class KalturaPlayerAdapter {
  constructor(player, opts = {}) {
    this.player = player;
    const g = globalThis.KalturaPlayer;
    this.EventType = opts.EventType || (g && g.core && g.core.EventType) || (player.Event && player.Event.Core) || {};
  }
  getTime() { return this.player.currentTime; }
  seek(t) { this.player.currentTime = t; }
  play() {
    // v7's play() returns nothing; a Promise (some versions) may reject on autoplay rules.
    try { const r = this.player.play(); if (r && r.catch) r.catch(() => {}); return r; } catch { return undefined; }
  }
  pause() { this.player.pause(); }
  isPaused() { return !!this.player.paused; }
  setRate(r) { this.player.playbackRate = r; }
  getRate() { return this.player.playbackRate; }
  getDuration() { return this.player.duration; }
  isReady() { return !this.player.seeking; }
  on(ev, f) {
    const type = this.EventType[KALTURA_EVENT_KEYS[ev]] || ev;
    this.player.addEventListener(type, f);
    return () => this.player.removeEventListener(type, f);
  }
  /** Loads a Kaltura entry (`player.loadMedia({entryId})`). */
  loadMedia(entryId) { return this.player.loadMedia({ entryId }); }
}

// ---- Discord Activity -----------------------------------------------------------
/** Where an Activity reaches its URL mappings: Discord's proxy prefix. */
export const DISCORD_PROXY = '/.proxy';

/** The display name Discord shows: `global_name`, else `username`. */
export function discordName(user) { return (user && (user.global_name || user.username)) || ''; }

/** A Discord user's avatar on Discord's CDN (undefined without one). */
export function discordAvatarUrl(user) {
  return user && user.avatar ? `https://cdn.discordapp.com/avatars/${user.id}/${user.avatar}.png` : undefined;
}

/** Sign-in refused (by tandem or Discord): `status` 0 when tandem was unreachable. */
export class TandemError extends Error {
  constructor(message, { status = 0, code = 'unreachable', field } = {}) {
    super(message);
    this.name = 'TandemError'; this.status = status; this.code = code; this.field = field;
  }
}

/**
 * The Activity's sign-in: `authorize()` gives an OAuth2 code (the Embedded App
 * SDK's `commands.authorize`), tandem exchanges it at Discord
 * (`POST {base}/v1/discord/token` with the instance id) and answers a room token
 * for the instance's room `discord:{instanceId}`; then `authenticate(access_token)`
 * (the SDK's `commands.authenticate`) when given. Resolves
 * `{accessToken, user, sessionToken, room, expiresAt, presence: {name, avatar}}`.
 */
export async function discordSignIn({ base = DISCORD_PROXY, instanceId, authorize, authenticate, fetch: doFetch } = {}) {
  if (typeof authorize !== 'function') throw new TypeError('discord.authorize: a function resolving to an authorization code');
  if (!instanceId) throw new TypeError('discord.instanceId: the Activity instance id (DiscordSDK.instanceId)');
  const code = await authorize();
  const f = doFetch || globalThis.fetch.bind(globalThis);
  let r;
  try {
    r = await f(`${base}/v1/discord/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ code, instance_id: instanceId }),
    });
  } catch (err) {
    throw new TandemError(`cannot reach tandem: ${err.message}`);
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = body.error || {};
    throw new TandemError(e.message || `HTTP ${r.status}`, { status: r.status, code: e.code || 'error', field: e.field });
  }
  if (authenticate) await authenticate(body.access_token);
  return {
    accessToken: body.access_token,
    user: body.user,
    sessionToken: body.session_token,
    room: body.room,
    expiresAt: body.expires_at,
    presence: { name: discordName(body.user), avatar: discordAvatarUrl(body.user) },
  };
}

/**
 * The `discord` option from an Embedded App SDK instance (`new DiscordSDK(clientId)`
 * from @discord/embedded-app-sdk): waits for `ready()`, authorizes with
 * `scope` (default identify), authenticates with the access token tandem returns.
 */
export function fromDiscordSdk(discordSdk, { clientId, scope = ['identify'], prompt = 'none' } = {}) {
  return {
    instanceId: discordSdk.instanceId,
    async authorize() {
      await discordSdk.ready();
      const { code } = await discordSdk.commands.authorize({
        client_id: clientId || discordSdk.clientId, response_type: 'code', state: '', prompt, scope,
      });
      return code;
    },
    authenticate: (access_token) => discordSdk.commands.authenticate({ access_token }),
  };
}

/**
 * Applies the room's state to a player. Correction policy: under 30 ms do nothing;
 * 30 ms–1.5 s nudge the rate within ±5 % until under 15 ms; beyond 1.5 s (or when the
 * player cannot change rate) seek to target + measured seek latency, at most every 3 s.
 */
export class VideoAdapter {
  /**
   * @param {TandemSync} sync
   * @param {object} player a PlayerAdapter
   * @param {object} [opts]
   * @param {boolean} [opts.canRate] false: correct by seeking only
   * @param {boolean} [opts.forward] the player's own controls (a play, pause or seek
   *   the person makes in the player's UI) become room commands; the server refuses
   *   them from members who may not control (docs/SYNC.md)
   */
  constructor(sync, player, opts = {}) {
    this.sync = sync;
    this.player = player;
    this.canRate = opts.canRate !== false && !!player.setRate;
    this.forward = !!opts.forward;
    this.seekLatency = 0.05; // s, measured
    this.lastSeek = 0;
    this.nudging = false;
    this.readySent = -1;
    this.drift = 0;
    // When this adapter last moved the player itself: the events that follow are its own.
    this._own = { play: 0, pause: 0, seek: 0 };
    this._off = [];
    this._onState = () => this.apply(true);
    this._onHint = (e) => { if (e.detail.action === 'seek') this.lastSeek = 0; this.apply(false); };
    sync.addEventListener('state', this._onState);
    sync.addEventListener('hint', this._onHint);
    if (player.on) {
      const on = (ev, f) => { const off = player.on(ev, f); if (typeof off === 'function') this._off.push(off); };
      on('seeked', () => {
        if (this._seekStarted) { const lat = (localNow() - this._seekStarted) / 1000; this.seekLatency = 0.7 * this.seekLatency + 0.3 * Math.min(lat, 1); this._seekStarted = 0; }
        this.apply(false);
      });
      // `seeking`, not `seeked`: it comes before the next correction could undo the person's seek.
      on('seeking', () => this._local('seek'));
      on('canplay', () => this.apply(false));
      on('waiting', () => this.sync.report('buffering', this.player.getTime()));
      on('play', () => this._local('play'));
      on('pause', () => this._local('pause'));
    }
    this.timer = setInterval(() => this.apply(false), 100);
    this.reportTimer = setInterval(() => this.report(), 1500);
  }

  detach() {
    clearInterval(this.timer); clearInterval(this.reportTimer); clearTimeout(this._startTimer);
    this.sync.removeEventListener('state', this._onState);
    this.sync.removeEventListener('hint', this._onHint);
    this._off.forEach((off) => off());
    this._off = [];
  }

  /** A play/pause/seek this adapter did not cause: the person used the player's controls. */
  _local(kind) {
    if (!this.forward) return;
    const p = this.sync.playback;
    if (!p || !this.sync.connected || localNow() - this._own[kind] < 1000) return;
    const t = this.player.getTime();
    let sent = false;
    if (kind === 'play' && p.paused) sent = this.sync.play(t);
    else if (kind === 'pause' && !p.paused) sent = this.sync.pause(t);
    else if (kind === 'seek' && Math.abs(t - this.sync.position()) > 1) sent = this.sync.seek(t);
    // Leave the player as the person set it until the room's answer (a `state`) comes.
    if (sent) this._hold = localNow() + 1000;
  }

  _play() { this._own.play = localNow(); return this.player.play(); }
  _pause() { this._own.pause = localNow(); this.player.pause(); }

  report() {
    const p = this.sync.playback;
    if (!p) return;
    const st = this.player.isPaused() ? 'paused' : 'playing';
    this.sync.report(st, this.player.getTime());
  }

  _seek(t) { this._seekStarted = localNow(); this.lastSeek = localNow(); this._own.seek = localNow(); this.player.seek(t); }

  apply(fresh) {
    const p = this.sync.playback;
    if (!p || !this.sync.connected) return;
    if (!fresh && this._hold && localNow() < this._hold) return;
    const now = this.sync.serverNow();
    const cur = this.player.getTime();
    if (p.paused || now < p.at) {
      // Paused, or a scheduled start in the near future: hold at the position.
      if (!this.player.isPaused()) this._pause();
      if (this.canRate) this.player.setRate(p.rate);
      if (Math.abs(cur - p.position) > 0.01 && (fresh || localNow() - this.lastSeek > 500)) this._seek(p.position);
      if (p.waiting && this.readySent !== p.seq && Math.abs(this.player.getTime() - p.position) <= 0.01 && (!this.player.isReady || this.player.isReady())) {
        this.readySent = p.seq;
        this.sync.report('ready', this.player.getTime());
      }
      if (!p.paused && now < p.at) {
        clearTimeout(this._startTimer);
        this._startTimer = setTimeout(() => this.apply(false), Math.max(0, p.at - now));
      }
      return;
    }
    const target = this.sync.position(now);
    const drift = cur - target; // s, + ahead
    this.drift = drift;
    const abs = Math.abs(drift);
    if (this.player.isPaused()) {
      if (abs > 0.1) this._seek(target + this.seekLatency * p.rate);
      this._play();
      return;
    }
    if (abs > 1.5 || (!this.canRate && abs > 0.03)) {
      if (localNow() - this.lastSeek > 3000 || fresh) {
        this._seek(target + this.seekLatency * p.rate);
      }
      if (this.canRate) this.player.setRate(p.rate);
      return;
    }
    if (!this.canRate) return;
    if (this.nudging ? abs < 0.015 : abs < 0.03) {
      this.nudging = false;
      this.player.setRate(p.rate);
      return;
    }
    this.nudging = true;
    // Close the gap over about a second, within ±5 %.
    const k = Math.max(-0.05, Math.min(0.05, -drift));
    this.player.setRate(p.rate * (1 + k));
  }
}
