// tandem's small WHIP/WHEP client (RFC 9725 and its WHEP sibling), shared by
// /broadcast and /watch. Plain ES module, no build step.
//
//   const s = new WhipWhepSession({ endpoint: '/v1/whep/demo', token, pc });
//   await s.start();        // offer → POST → answer; trickles late candidates
//   await s.restartIce();   // ICE restart through PATCH (200 + new sdpfrag)
//   await s.stop();         // DELETE the session
//
// ICE: the offer is sent once gathering completes or after `gatherTimeoutMs`,
// whichever comes first; candidates found later are trickled with PATCH
// (application/trickle-ice-sdpfrag). `trickle: true` sends the offer at once and
// trickles every candidate.

export class HttpError extends Error {
  constructor(status, code, message, retryAfterSecs) {
    super(message || `HTTP ${status}`);
    this.name = 'HttpError';
    this.status = status;
    this.code = code || '';
    this.retryAfterSecs = retryAfterSecs;
  }
  /** Whether trying again later may help (not an auth or request problem). */
  get retryable() {
    // 429: a per-token or per-user session limit; old sessions end and free it.
    return this.status >= 500 || this.status === 409 || this.status === 404 || this.status === 429 || this.status === 0;
  }
}

/** Parses `Link: <stun:…>; rel="ice-server"; username=…; credential=…` headers. */
export function parseIceServerLinks(header) {
  if (!header) return [];
  const servers = [];
  // Split on commas that start a new <…> link.
  for (const part of header.split(/,\s*(?=<)/)) {
    const m = part.match(/^\s*<([^>]+)>(.*)$/);
    if (!m) continue;
    const params = {};
    for (const p of m[2].split(';')) {
      const kv = p.trim().match(/^([\w-]+)\s*=\s*"?([^"]*)"?$/);
      if (kv) params[kv[1].toLowerCase()] = kv[2];
    }
    if (params.rel !== 'ice-server') continue;
    const server = { urls: m[1] };
    if (params.username) server.username = params.username;
    if (params.credential) server.credential = params.credential;
    servers.push(server);
  }
  return servers;
}

/** Asks the endpoint (OPTIONS) which ICE servers it advertises; [] on any problem. */
export async function fetchIceServers(endpoint) {
  try {
    const resp = await fetch(endpoint, { method: 'OPTIONS' });
    return parseIceServerLinks(resp.headers.get('Link'));
  } catch (_) {
    return [];
  }
}

async function errorFrom(resp) {
  let code = '';
  let message = `HTTP ${resp.status}`;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || '';
      message = `${resp.status} ${body.error.message || code}`;
    }
  } catch (_) {
    /* not JSON */
  }
  const ra = parseInt(resp.headers.get('Retry-After') || '', 10);
  return new HttpError(resp.status, code, message, Number.isFinite(ra) ? ra : undefined);
}

/** ice-ufrag / ice-pwd of an SDP (session level or first media section). */
export function iceCredentials(sdp) {
  const ufrag = (sdp.match(/^a=ice-ufrag:(.+?)\r?$/m) || [])[1];
  const pwd = (sdp.match(/^a=ice-pwd:(.+?)\r?$/m) || [])[1];
  return { ufrag, pwd };
}

/** The mid of the first media section (the one trickled candidates are bound to). */
function firstMid(sdp) {
  return (sdp.match(/^a=mid:(.+?)\r?$/m) || [])[1] || '0';
}

/** Builds an RFC 8840 sdpfrag. */
export function buildSdpFrag({ ufrag, pwd, mid, candidates = [], endOfCandidates = false }) {
  const lines = [];
  if (ufrag) lines.push(`a=ice-ufrag:${ufrag}`);
  if (pwd) lines.push(`a=ice-pwd:${pwd}`);
  lines.push('m=audio 9 UDP/TLS/RTP/SAVPF 0');
  lines.push(`a=mid:${mid}`);
  for (const c of candidates) lines.push(`a=${c}`);
  if (endOfCandidates) lines.push('a=end-of-candidates');
  return lines.join('\r\n') + '\r\n';
}

function waitForGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener('icegatheringstatechange', check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === 'complete') done();
    };
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener('icegatheringstatechange', check);
  });
}

export class WhipWhepSession {
  /**
   * @param {object} o
   * @param {string} o.endpoint  WHIP or WHEP endpoint URL (absolute or path)
   * @param {string} o.token     media token (Bearer)
   * @param {RTCPeerConnection} o.pc  with its transceivers already added
   * @param {boolean} [o.trickle=false]  send the offer before gathering ends
   * @param {number} [o.gatherTimeoutMs=1500]
   * @param {(msg: string) => void} [o.log]
   */
  constructor({ endpoint, token, pc, trickle = false, gatherTimeoutMs = 1500, log }) {
    this.endpoint = new URL(endpoint, location.href).toString();
    this.token = token;
    this.pc = pc;
    this.trickle = trickle;
    this.gatherTimeoutMs = gatherTimeoutMs;
    this.log = log || (() => {});
    this.sessionUrl = null;
    this.etag = null;
    this.pending = []; // candidates found before the session URL is known
    this.sentInOffer = new Set();
    this.patchChain = Promise.resolve();
    this.patches = { trickled: 0, restarts: 0, failed: 0 };
    this.stopped = false;
    this._onCandidate = (ev) => this._candidate(ev.candidate);
    pc.addEventListener('icecandidate', this._onCandidate);
  }

  _headers(contentType) {
    const h = { 'Content-Type': contentType };
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  /** Offer → POST → answer. Resolves once the answer is applied. */
  async start() {
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    if (!this.trickle) await waitForGathering(this.pc, this.gatherTimeoutMs);
    const sdp = this.pc.localDescription.sdp;
    for (const m of sdp.matchAll(/^a=(candidate:.+?)\r?$/gm)) this.sentInOffer.add(m[1]);
    this.pending = this.pending.filter((c) => !this.sentInOffer.has(c));

    this.postedAt = performance.now(); // the WHEP/WHIP POST (first-frame timing)
    const resp = await fetch(this.endpoint, {
      method: 'POST',
      headers: this._headers('application/sdp'),
      body: sdp,
    });
    if (resp.status !== 201) throw await errorFrom(resp);
    const loc = resp.headers.get('Location');
    if (!loc) throw new HttpError(resp.status, 'no_location', 'answer without a Location header (CORS expose-headers?)');
    this.sessionUrl = new URL(loc, this.endpoint).toString();
    this.etag = resp.headers.get('ETag');
    this.links = resp.headers.get('Link') || '';
    this.iceServers = parseIceServerLinks(this.links);
    const answer = await resp.text();
    this.log(`session ${this.sessionUrl}`);
    await this.pc.setRemoteDescription({ type: 'answer', sdp: answer });
    this._flushCandidates(this.pc.iceGatheringState === 'complete');
    return answer;
  }

  _candidate(candidate) {
    if (this.stopped) return;
    const end = !candidate || !candidate.candidate;
    if (!end) {
      const line = candidate.candidate.replace(/^a=/, '');
      if (this.sentInOffer.has(line)) return;
      this.pending.push(line);
    }
    // During an ICE restart the new candidates go in the restart PATCH itself.
    if (this.sessionUrl && !this.restarting) this._flushCandidates(end);
  }

  _flushCandidates(end) {
    if (!this.sessionUrl || (!this.pending.length && !(end && this.trickle))) return;
    const candidates = this.pending.splice(0);
    const local = this.pc.localDescription ? this.pc.localDescription.sdp : '';
    const { ufrag, pwd } = iceCredentials(local);
    const frag = buildSdpFrag({ ufrag, pwd, mid: firstMid(local), candidates, endOfCandidates: end });
    this.patchChain = this.patchChain.then(async () => {
      try {
        const headers = this._headers('application/trickle-ice-sdpfrag');
        if (this.etag) headers['If-Match'] = this.etag;
        const resp = await fetch(this.sessionUrl, { method: 'PATCH', headers, body: frag });
        if (resp.status === 204 || resp.status === 200) {
          this.patches.trickled += 1;
          if (resp.headers.get('ETag')) this.etag = resp.headers.get('ETag');
        } else {
          this.patches.failed += 1;
          this.log(`trickle PATCH answered ${resp.status}`);
        }
      } catch (e) {
        this.patches.failed += 1;
        this.log(`trickle PATCH failed: ${e}`);
      }
    });
  }

  /**
   * ICE restart (RFC 9725 §4.4.2): new local credentials in a PATCH, the server's
   * new ufrag/pwd (and candidates) from the 200 answer applied to the remote side.
   * Resolves to { status, oldUfrag, newUfrag, serverUfrag }.
   */
  async restartIce() {
    if (!this.sessionUrl) throw new Error('no session');
    const oldUfrag = iceCredentials(this.pc.localDescription.sdp).ufrag;
    this.restarting = true;
    try {
      return await this._restartIce(oldUfrag);
    } finally {
      this.restarting = false;
      if (this.pending.length) this._flushCandidates(this.pc.iceGatheringState === 'complete');
    }
  }

  async _restartIce(oldUfrag) {
    this.pc.restartIce();
    const offer = await this.pc.createOffer({ iceRestart: true });
    await this.pc.setLocalDescription(offer);
    await waitForGathering(this.pc, this.gatherTimeoutMs);
    const local = this.pc.localDescription.sdp;
    const { ufrag, pwd } = iceCredentials(local);
    const candidates = [...local.matchAll(/^a=(candidate:.+?)\r?$/gm)].map((m) => m[1]);
    candidates.forEach((c) => this.sentInOffer.add(c));
    this.pending = this.pending.filter((c) => !this.sentInOffer.has(c));
    const frag = buildSdpFrag({ ufrag, pwd, mid: firstMid(local), candidates, endOfCandidates: true });
    const headers = this._headers('application/trickle-ice-sdpfrag');
    if (this.etag) headers['If-Match'] = this.etag;
    await this.patchChain;
    const resp = await fetch(this.sessionUrl, { method: 'PATCH', headers, body: frag });
    if (resp.status !== 200) {
      // Roll back to the current remote description's transport so the call goes on.
      const remote = this.pc.currentRemoteDescription;
      if (remote) await this.pc.setRemoteDescription({ type: 'answer', sdp: remote.sdp }).catch(() => {});
      throw await errorFrom(resp);
    }
    const answerFrag = await resp.text();
    this.etag = resp.headers.get('ETag') || this.etag;
    const server = iceCredentials(answerFrag);
    if (!server.ufrag || !server.pwd) throw new Error('ICE restart answer without ice-ufrag/ice-pwd');
    const fragCandidates = [...answerFrag.matchAll(/^a=(candidate:.+?)\r?$/gm)].map((m) => m[1]);
    let sdp = this.pc.currentRemoteDescription.sdp
      .replace(/^a=ice-ufrag:.*$/gm, `a=ice-ufrag:${server.ufrag}`)
      .replace(/^a=ice-pwd:.*$/gm, `a=ice-pwd:${server.pwd}`);
    if (fragCandidates.length) {
      // Put the fragment's candidates in place of the old ones in every media section.
      sdp = sdp.replace(/^a=candidate:.*\r?\n/gm, '');
      sdp = sdp.replace(/^(a=mid:.*\r?\n)/gm, (m) => m + fragCandidates.map((c) => `a=${c}\r\n`).join(''));
    }
    await this.pc.setRemoteDescription({ type: 'answer', sdp });
    this.patches.restarts += 1;
    return { status: resp.status, oldUfrag, newUfrag: ufrag, serverUfrag: server.ufrag };
  }

  /** Ends the session on the server (DELETE); never throws. Returns the status or 0. */
  async stop() {
    this.stopped = true;
    this.pc.removeEventListener('icecandidate', this._onCandidate);
    const url = this.sessionUrl;
    this.sessionUrl = null;
    if (!url) return 0;
    try {
      const headers = {};
      if (this.token) headers.Authorization = `Bearer ${this.token}`;
      const resp = await fetch(url, { method: 'DELETE', headers, keepalive: true });
      return resp.status;
    } catch (_) {
      return 0;
    }
  }
}

/**
 * What both pages read from a getStats() report: the codecs by id (returned),
 * the transport (`out.transport`) and the selected pair's round trip (`out.rttMs`).
 */
export function readTransportStats(report, out) {
  const codecs = {};
  report.forEach((s) => {
    if (s.type === 'codec') codecs[s.id] = s;
    if (s.type === 'transport') {
      out.transport = {
        iceState: s.iceState,
        dtlsState: s.dtlsState,
        iceLocalUsernameFragment: s.iceLocalUsernameFragment,
        selectedCandidatePairChanges: s.selectedCandidatePairChanges,
        selectedCandidatePairId: s.selectedCandidatePairId,
      };
    }
  });
  const pairId = out.transport && out.transport.selectedCandidatePairId;
  const pair = pairId && report.get(pairId);
  if (pair && pair.currentRoundTripTime !== undefined) out.rttMs = pair.currentRoundTripTime * 1000;
  return codecs;
}

/**
 * Page helpers shared by broadcast.html and watch.html: the stream from the path,
 * the `/.proxy` prefix, the query, and the media token. A `?token=` is moved out of
 * the address bar (history.replaceState) into sessionStorage, so a screenshot or a
 * copied URL does not carry it while a reload of this tab still finds it.
 */
export function pageParams(kind) {
  // /broadcast/{stream} or /watch/{stream}, also under /.proxy (Discord Activities).
  const parts = location.pathname.split('/').filter(Boolean);
  const i = parts.lastIndexOf(kind);
  const stream = decodeURIComponent((i >= 0 && parts[i + 1]) || 'demo');
  const base = location.pathname.startsWith('/.proxy/') ? '/.proxy' : '';
  const q = new URLSearchParams(location.search);
  const key = `tandem.${kind}.token.${stream}`;
  let token = q.get('token') || '';
  if (token) {
    try {
      sessionStorage.setItem(key, token);
    } catch (_) {
      /* storage disabled: the token lives as long as the page */
    }
    q.delete('token');
    const rest = q.toString();
    history.replaceState(history.state, '', `${location.pathname}${rest ? `?${rest}` : ''}${location.hash}`);
  } else {
    try {
      token = sessionStorage.getItem(key) || '';
    } catch (_) {
      token = '';
    }
  }
  return { stream, base, q, token };
}

/**
 * GET `url` as JSON with an optional bearer credential. Resolves to
 * `{status, body, code, message, retryAfterSecs}` for any HTTP answer (body null
 * when not JSON); rejects only when the server could not be reached.
 */
export async function getJson(url, bearer, init = {}) {
  const headers = Object.assign({}, init.headers || {});
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const resp = await fetch(url, Object.assign({ cache: 'no-store' }, init, { headers }));
  let body = null;
  try {
    body = await resp.json();
  } catch (_) {
    body = null;
  }
  const err = body && body.error ? body.error : null;
  const ra = parseInt(resp.headers.get('Retry-After') || '', 10);
  return {
    status: resp.status,
    body,
    code: err ? err.code || '' : '',
    message: err ? err.message || err.code : `HTTP ${resp.status}`,
    retryAfterSecs: Number.isFinite(ra) ? ra : undefined,
  };
}

/** `GET /v1/media/streams/{stream}` with the page's media token. */
export function fetchStreamStatus(base, stream, token) {
  return getJson(`${base}/v1/media/streams/${encodeURIComponent(stream)}`, token);
}

/**
 * Why this page cannot use the camera, or null. Browsers offer getUserMedia only
 * in a secure context (HTTPS, or http://localhost); elsewhere
 * `navigator.mediaDevices` is undefined.
 */
export function cameraProblem() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return 'the camera needs HTTPS (or http://localhost): this page was opened over plain HTTP ' +
      `from ${location.host}, where browsers refuse the camera. See docs/DEPLOY.md for TLS.`;
  }
  return null;
}

/** A time as the reader's local date and time ("" for nothing). */
export function localTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export function formatBitrate(bps) {
  if (!Number.isFinite(bps)) return '–';
  if (bps >= 1e6) return `${(bps / 1e6).toFixed(2)} Mbit/s`;
  return `${Math.round(bps / 1e3)} kbit/s`;
}
