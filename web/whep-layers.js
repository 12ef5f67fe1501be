// The WHEP extensions of a viewer's session (draft-ietf-wish-whep): which
// simulcast layer it receives and the choice of one (`layer`), and what the
// server says about the stream (`server-sent-events`: active, inactive,
// layers, viewercount, and tandem's `layer`). Used by the watch page; see
// docs/MEDIA.md "Simulcast".

const LAYER_REL = 'urn:ietf:params:whep:ext:core:layer';
const SSE_REL = 'urn:ietf:params:whep:ext:core:server-sent-events';

/** The URL of the `Link` header entry with relation `rel`, or null. */
export function linkOf(header, rel, base) {
  for (const part of (header || '').split(/,(?=\s*<)/)) {
    const m = part.match(/<([^>]+)>(.*)$/);
    if (m && new RegExp(`rel="?${rel.replace(/[.:]/g, '\\$&')}"?`).test(m[2])) {
      return new URL(m[1], base).toString();
    }
  }
  return null;
}

/** Reads a `text/event-stream` body, calling `onEvent(name, data)` per event. */
async function readEvents(body, onEvent, signal) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  while (!signal.aborted) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let name = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).trimStart());
      }
      if (!data.length) continue; // a keep-alive comment
      let parsed = null;
      try {
        parsed = JSON.parse(data.join('\n'));
      } catch (_) {
        parsed = data.join('\n');
      }
      onEvent(name, parsed);
    }
  }
}

/**
 * One viewer session's layer control. `onEvent(name, data)` gets every server
 * event; `select(rid)` pins a layer (null: automatic). Servers without the
 * extensions: `available` stays false and nothing is shown.
 */
export class LayerControl {
  constructor({ session, token, onEvent, log }) {
    this.token = token;
    this.onEvent = onEvent;
    this.log = log || (() => {});
    this.layerUrl = linkOf(session.links, LAYER_REL, session.sessionUrl);
    this.sseUrl = linkOf(session.links, SSE_REL, session.sessionUrl);
    this.available = !!(this.layerUrl && this.sseUrl);
    this.abort = new AbortController();
  }

  _headers(json) {
    const h = {};
    if (json) h['Content-Type'] = 'application/json';
    if (this.token) h.Authorization = `Bearer ${this.token}`;
    return h;
  }

  /** Subscribes to the events; returns when the stream ends (or on error). */
  async start() {
    if (!this.sseUrl) return;
    const { signal } = this.abort;
    try {
      const resp = await fetch(this.sseUrl, {
        method: 'POST',
        headers: this._headers(true),
        body: JSON.stringify(['active', 'inactive', 'layers', 'viewercount', 'layer']),
        signal,
      });
      if (resp.status !== 201) throw new Error(`events: HTTP ${resp.status}`);
      const location = new URL(resp.headers.get('Location'), this.sseUrl).toString();
      const stream = await fetch(location, { headers: this._headers(false), signal });
      if (!stream.ok || !stream.body) throw new Error(`events: HTTP ${stream.status}`);
      await readEvents(stream.body, (name, data) => this.onEvent(name, data), signal);
    } catch (e) {
      if (!signal.aborted) this.log(`server events stopped: ${e.message || e}`);
    }
  }

  /** Pins layer `rid`, or (null) returns to automatic selection. */
  async select(rid) {
    if (!this.layerUrl) return null;
    const resp = await fetch(this.layerUrl, {
      method: 'POST',
      headers: this._headers(true),
      body: JSON.stringify(rid ? { rid } : {}),
    });
    const body = await resp.json().catch(() => null);
    if (!resp.ok) throw new Error((body && body.error && body.error.message) || `HTTP ${resp.status}`);
    return body;
  }

  stop() {
    this.abort.abort();
  }
}
