// A small HLS player for recordings whose codec the browser reads from WebM but not
// from MP4: VP8 (Chromium's MP4 reader has no `vp08`, so neither hls.js nor its own
// HLS can play a VP8 recording; docs/RECORDING.md, "Replay page"). It reads the
// same playlists and fMP4 segments hls.js would, rewrites each segment's samples as
// WebM clusters (no decoding: the same frames, new boxes around them) and appends
// them to a `video/webm` SourceBuffer. Plain ES module, no build step.
//
//   const p = new WebmHlsPlayer(video, masterOrMediaUrl, { onError, onLive });
//   await p.start();  p.destroy();
//
// What it handles: a multivariant playlist (the first variant) or a media playlist;
// EXT-X-MAP; whole segments (LL-HLS parts and preload hints are ignored: while live
// it trails by one segment); EVENT playlists that grow, and ENDLIST. fMP4 boxes:
// moov/trak/tkhd/mdhd/hdlr/stsd (vp08, vp09, Opus with dOps), mvex/trex defaults,
// moof/traf/tfhd/tfdt/trun with default-base-is-moof or explicit offsets.

const WEBM_CODECS = { vp08: 'V_VP8', vp09: 'V_VP9', Opus: 'A_OPUS' };
const MSE_CODECS = { vp08: 'vp8', vp09: 'vp9', Opus: 'opus' };
/** Keep this much ahead of the play position buffered; drop what is this far behind. */
const AHEAD_S = 20;
const BEHIND_S = 60;

// ---- fMP4 reading ----

const fourcc = (d, o) => String.fromCharCode(d[o], d[o + 1], d[o + 2], d[o + 3]);

/** The boxes in d[start, end): [{type, start, end, body}] (body = first byte after the header). */
function boxes(d, start = 0, end = d.length) {
  const out = [];
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  let o = start;
  while (o + 8 <= end) {
    let size = v.getUint32(o);
    const type = fourcc(d, o + 4);
    let body = o + 8;
    if (size === 1) {
      size = Number(v.getBigUint64(o + 8));
      body = o + 16;
    } else if (size === 0) {
      size = end - o;
    }
    if (size < 8 || o + size > end) throw new Error(`fMP4: box ${type} at ${o} overruns its parent`);
    out.push({ type, start: o, end: o + size, body });
    o += size;
  }
  return out;
}
const child = (d, box, type) => boxes(d, box.body, box.end).find((b) => b.type === type);
const path = (d, box, ...types) => types.reduce((b, t) => (b ? child(d, b, t) : null), box);

/** Tracks of an init segment: [{id, timescale, kind, codec, width, height, channels, opusHead}]. */
export function parseInit(d) {
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const moov = boxes(d).find((b) => b.type === 'moov');
  if (!moov) throw new Error('fMP4: no moov in the init segment');
  const trex = {};
  const mvex = child(d, moov, 'mvex');
  if (mvex) {
    for (const b of boxes(d, mvex.body, mvex.end).filter((x) => x.type === 'trex')) {
      const o = b.body + 4;
      trex[v.getUint32(o)] = { duration: v.getUint32(o + 8), size: v.getUint32(o + 12), flags: v.getUint32(o + 16) };
    }
  }
  const tracks = [];
  for (const trak of boxes(d, moov.body, moov.end).filter((b) => b.type === 'trak')) {
    const tkhd = child(d, trak, 'tkhd');
    const mdhd = path(d, trak, 'mdia', 'mdhd');
    const hdlr = path(d, trak, 'mdia', 'hdlr');
    const stsd = path(d, trak, 'mdia', 'minf', 'stbl', 'stsd');
    if (!tkhd || !mdhd || !hdlr || !stsd) continue;
    const id = v.getUint32(tkhd.body + 4 + (d[tkhd.body] === 1 ? 16 : 8));
    const timescale = v.getUint32(mdhd.body + 4 + (d[mdhd.body] === 1 ? 16 : 8));
    const handler = fourcc(d, hdlr.body + 8);
    const entry = boxes(d, stsd.body + 8, stsd.end)[0];
    if (!entry) continue;
    const t = { id, timescale, kind: handler === 'vide' ? 'video' : handler === 'soun' ? 'audio' : handler, codec: entry.type, defaults: trex[id] || {} };
    if (t.kind === 'video') {
      t.width = v.getUint16(entry.body + 24);
      t.height = v.getUint16(entry.body + 26);
    } else if (t.kind === 'audio') {
      t.channels = v.getUint16(entry.body + 16);
      t.sampleRate = v.getUint32(entry.body + 24) >>> 16;
      const dops = boxes(d, entry.body + 28, entry.end).find((b) => b.type === 'dOps');
      if (dops) t.opusHead = opusHead(d, v, dops);
    }
    tracks.push(t);
  }
  return tracks;
}

/** WebM's CodecPrivate for Opus (RFC 7845 OpusHead, little-endian) from the MP4 dOps box (big-endian). */
function opusHead(d, v, dops) {
  const o = dops.body;
  const channels = d[o + 1];
  const family = d[o + 10];
  const table = family !== 0 ? d.subarray(o + 11, dops.end) : new Uint8Array(0);
  const head = new Uint8Array(19 + table.length);
  const w = new DataView(head.buffer);
  head.set([0x4f, 0x70, 0x75, 0x73, 0x48, 0x65, 0x61, 0x64], 0); // "OpusHead"
  head[8] = 1;
  head[9] = channels;
  w.setUint16(10, v.getUint16(o + 2), true); // pre-skip
  w.setUint32(12, v.getUint32(o + 4), true); // input sample rate
  w.setInt16(16, v.getInt16(o + 8), true); // output gain
  head[18] = family;
  head.set(table, 19);
  return head;
}

/** Samples of a media segment: [{track, time (s), data, key}], in file order per track. */
export function parseSegment(d, tracks) {
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const byId = Object.fromEntries(tracks.map((t) => [t.id, t]));
  const samples = [];
  for (const moof of boxes(d).filter((b) => b.type === 'moof')) {
    for (const traf of boxes(d, moof.body, moof.end).filter((b) => b.type === 'traf')) {
      const tfhd = child(d, traf, 'tfhd');
      if (!tfhd) continue;
      const tf = v.getUint32(tfhd.body) & 0xffffff;
      let o = tfhd.body + 4;
      const id = v.getUint32(o);
      o += 4;
      const track = byId[id];
      if (!track) continue;
      let base = moof.start; // default-base-is-moof, and the usual meaning without it
      if (tf & 0x1) { base = Number(v.getBigUint64(o)); o += 8; }
      if (tf & 0x2) o += 4;
      let defDur = track.defaults.duration || 0;
      let defSize = track.defaults.size || 0;
      let defFlags = track.defaults.flags || 0;
      if (tf & 0x8) { defDur = v.getUint32(o); o += 4; }
      if (tf & 0x10) { defSize = v.getUint32(o); o += 4; }
      if (tf & 0x20) { defFlags = v.getUint32(o); o += 4; }
      const tfdt = child(d, traf, 'tfdt');
      let dts = 0;
      if (tfdt) dts = d[tfdt.body] === 1 ? Number(v.getBigUint64(tfdt.body + 4)) : v.getUint32(tfdt.body + 4);
      let pos = base;
      for (const trun of boxes(d, traf.body, traf.end).filter((b) => b.type === 'trun')) {
        const version = d[trun.body];
        const f = v.getUint32(trun.body) & 0xffffff;
        let p = trun.body + 4;
        const count = v.getUint32(p);
        p += 4;
        if (f & 0x1) { pos = base + v.getInt32(p); p += 4; }
        let firstFlags = null;
        if (f & 0x4) { firstFlags = v.getUint32(p); p += 4; }
        for (let i = 0; i < count; i++) {
          let dur = defDur;
          let size = defSize;
          let flags = i === 0 && firstFlags !== null ? firstFlags : defFlags;
          let cto = 0;
          if (f & 0x100) { dur = v.getUint32(p); p += 4; }
          if (f & 0x200) { size = v.getUint32(p); p += 4; }
          if (f & 0x400) { flags = v.getUint32(p); p += 4; }
          if (f & 0x800) { cto = version === 0 ? v.getUint32(p) : v.getInt32(p); p += 4; }
          if (pos + size > d.length) throw new Error(`fMP4: a sample of track ${id} lies past the end of the segment`);
          const data = d.subarray(pos, pos + size);
          // sample_is_non_sync_sample; VP8 also says it in its first byte (bit 0 clear = key frame).
          let key = track.kind !== 'video' || !(flags & 0x10000);
          if (track.codec === 'vp08' && size > 0) key = (data[0] & 1) === 0;
          samples.push({ track, time: (dts + cto) / track.timescale, data, key });
          pos += size;
          dts += dur;
        }
      }
    }
  }
  return samples;
}

// ---- WebM writing ----

function vintSize(n) {
  // Sizes up to 2^56-2 in 1..8 bytes (all ones is "unknown").
  for (let len = 1; len <= 8; len++) {
    if (n < 2 ** (7 * len) - 1) {
      const out = new Uint8Array(len);
      let x = n;
      for (let i = len - 1; i >= 0; i--) { out[i] = x % 256; x = Math.floor(x / 256); }
      out[0] |= 1 << (8 - len);
      return out;
    }
  }
  throw new Error('WebM: element too large');
}
function idBytes(id) {
  const out = [];
  for (let x = id; x > 0; x = Math.floor(x / 256)) out.unshift(x % 256);
  return Uint8Array.from(out);
}
function concat(parts) {
  const n = parts.reduce((a, p) => a + p.length, 0);
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
const el = (id, ...body) => { const b = concat(body); return concat([idBytes(id), vintSize(b.length), b]); };
const uint = (id, n) => { const b = []; let x = n; do { b.unshift(x % 256); x = Math.floor(x / 256); } while (x > 0); return el(id, Uint8Array.from(b)); };
const str = (id, s) => el(id, new TextEncoder().encode(s));
const float = (id, x) => { const b = new Uint8Array(8); new DataView(b.buffer).setFloat64(0, x); return el(id, b); };

/** The WebM initialization segment (EBML header, Segment of unknown size, Info, Tracks). */
export function webmInit(tracks) {
  const ebml = el(0x1a45dfa3, uint(0x4286, 1), uint(0x42f7, 1), uint(0x42f2, 4), uint(0x42f3, 8),
    str(0x4282, 'webm'), uint(0x4287, 4), uint(0x4285, 2));
  const segmentHead = concat([idBytes(0x18538067), Uint8Array.from([0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])]);
  const info = el(0x1549a966, uint(0x2ad7b1, 1000000), str(0x4d80, 'tandem'), str(0x5741, 'tandem replay page'));
  const entries = tracks.map((t, i) => {
    const parts = [uint(0xd7, i + 1), uint(0x73c5, i + 1), uint(0x83, t.kind === 'video' ? 1 : 2), str(0x86, WEBM_CODECS[t.codec])];
    if (t.kind === 'video') parts.push(el(0xe0, uint(0xb0, t.width), uint(0xba, t.height)));
    if (t.kind === 'audio') {
      if (t.opusHead) parts.push(el(0x63a2, t.opusHead));
      parts.push(el(0xe1, float(0xb5, 48000), uint(0x9f, t.channels || 2)));
    }
    return el(0xae, ...parts);
  });
  return concat([ebml, segmentHead, info, el(0x1654ae6b, ...entries)]);
}

/** Clusters (absolute times in ms) holding `samples` as SimpleBlocks; a new cluster at each video key frame. */
export function webmClusters(samples, tracks) {
  const number = new Map(tracks.map((t, i) => [t, i + 1]));
  const sorted = samples.slice().sort((a, b) => a.time - b.time || (a.track.kind === 'video' ? -1 : 1));
  const clusters = [];
  let start = null;
  let blocks = [];
  const flush = () => {
    if (blocks.length) clusters.push(el(0x1f43b675, uint(0xe7, start), ...blocks));
    blocks = [];
  };
  for (const s of sorted) {
    const ms = Math.max(0, Math.round(s.time * 1000));
    if (start === null || (s.track.kind === 'video' && s.key) || ms - start > 30000 || ms < start) {
      flush();
      start = ms;
    }
    const head = new Uint8Array(4);
    head[0] = 0x80 | number.get(s.track);
    new DataView(head.buffer).setInt16(1, ms - start);
    head[3] = s.key ? 0x80 : 0;
    blocks.push(el(0xa3, head, s.data));
  }
  flush();
  return concat(clusters);
}

/** The MSE type for these tracks, or null when one of them has no WebM form. */
export function webmType(tracks) {
  const codecs = tracks.map((t) => MSE_CODECS[t.codec]);
  if (!codecs.length || codecs.some((c) => !c)) return null;
  return `${tracks.some((t) => t.kind === 'video') ? 'video' : 'audio'}/webm; codecs="${codecs.join(',')}"`;
}

// ---- playlists ----

async function fetchOk(url, as) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) {
    const e = new Error(`${as === 'text' ? 'playlist' : 'segment'} ${new URL(url).pathname.split('/').pop()}: HTTP ${r.status}`);
    e.status = r.status;
    throw e;
  }
  return as === 'text' ? r.text() : new Uint8Array(await r.arrayBuffer());
}

/** {init, segments: [{url, start, duration}], ended, target} of a media playlist. */
function parseMedia(text, url) {
  const out = { init: null, segments: [], ended: false, target: 2 };
  let t = 0;
  let dur = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#EXT-X-MAP:')) {
      const m = line.match(/URI="([^"]+)"/);
      if (m) out.init = new URL(m[1], url).toString();
    } else if (line.startsWith('#EXT-X-TARGETDURATION:')) {
      out.target = Number(line.split(':')[1]) || 2;
    } else if (line.startsWith('#EXTINF:')) {
      dur = parseFloat(line.slice(8));
    } else if (line === '#EXT-X-ENDLIST') {
      out.ended = true;
    } else if (line && !line.startsWith('#') && dur !== null) {
      out.segments.push({ url: new URL(line, url).toString(), start: t, duration: dur });
      t += dur;
      dur = null;
    }
  }
  return out;
}

export class WebmHlsPlayer {
  constructor(video, url, { onError = () => {}, onLive = () => {}, log = () => {} } = {}) {
    this.video = video;
    this.url = url;
    this.onError = onError;
    this.onLive = onLive;
    this.log = log;
    this.destroyed = false;
    this.next = 0;
    this.media = null;
    this.liveEdgeStart = true;
  }

  async start() {
    let text = await fetchOk(this.url, 'text');
    this.mediaUrl = this.url;
    if (text.includes('#EXT-X-STREAM-INF')) {
      const lines = text.split('\n').map((l) => l.trim());
      const i = lines.findIndex((l) => l.startsWith('#EXT-X-STREAM-INF'));
      const uri = lines.slice(i + 1).find((l) => l && !l.startsWith('#'));
      if (!uri) throw new Error('the multivariant playlist names no media playlist');
      this.mediaUrl = new URL(uri, this.url).toString();
      text = await fetchOk(this.mediaUrl, 'text');
    }
    this.media = parseMedia(text, this.mediaUrl);
    if (!this.media.init) throw new Error('the media playlist has no EXT-X-MAP (init segment)');
    this.tracks = parseInit(await fetchOk(this.media.init));
    this.type = webmType(this.tracks);
    if (!this.type) throw new Error(`no WebM form for the codecs ${this.tracks.map((t) => t.codec).join(', ')}`);
    if (!MediaSource.isTypeSupported(this.type)) throw new Error(`this browser does not play ${this.type} either`);
    this.onLive(!this.media.ended);
    this.ms = new MediaSource();
    this.video.src = URL.createObjectURL(this.ms);
    await new Promise((r) => this.ms.addEventListener('sourceopen', r, { once: true }));
    this.sb = this.ms.addSourceBuffer(this.type);
    await this.append(webmInit(this.tracks));
    this.setDuration();
    if (!this.media.ended) {
      // A late joiner starts a few segments behind the newest one.
      this.next = Math.max(0, this.media.segments.length - 2);
      const s = this.media.segments[this.next];
      if (s) this.video.currentTime = s.start;
    }
    this.onSeeking = () => this.seekTo(this.video.currentTime);
    this.video.addEventListener('seeking', this.onSeeking);
    this.loop().catch((e) => { if (!this.destroyed) this.onError(e); });
  }

  setDuration() {
    const segs = this.media.segments;
    const total = segs.length ? segs[segs.length - 1].start + segs[segs.length - 1].duration : 0;
    if (this.ms.readyState === 'open' && !this.sb.updating && total > 0 && total !== this.ms.duration) {
      this.ms.duration = total;
    }
  }

  seekTo(t) {
    const b = this.sb && this.sb.buffered;
    for (let i = 0; b && i < b.length; i++) if (t >= b.start(i) && t < b.end(i) - 0.5) return;
    const segs = this.media.segments;
    let i = segs.findIndex((s) => t < s.start + s.duration);
    if (i < 0) i = segs.length - 1;
    this.next = Math.max(0, i);
    this.wake && this.wake();
  }

  append(bytes) {
    return new Promise((resolve, reject) => {
      const done = () => { this.sb.removeEventListener('error', fail); resolve(); };
      const fail = () => { this.sb.removeEventListener('updateend', done); reject(new Error('the browser refused a WebM segment')); };
      this.sb.addEventListener('updateend', done, { once: true });
      this.sb.addEventListener('error', fail, { once: true });
      this.sb.appendBuffer(bytes);
    });
  }

  remove(from, to) {
    return new Promise((resolve) => {
      this.sb.addEventListener('updateend', resolve, { once: true });
      this.sb.remove(from, to);
    });
  }

  sleep(ms) {
    return new Promise((r) => {
      const timer = setTimeout(() => { this.wake = null; r(); }, ms);
      this.wake = () => { clearTimeout(timer); this.wake = null; r(); };
    });
  }

  bufferedAhead() {
    const b = this.sb.buffered;
    const t = this.video.currentTime;
    for (let i = 0; i < b.length; i++) if (t >= b.start(i) - 0.2 && t <= b.end(i)) return b.end(i) - t;
    return 0;
  }

  async loop() {
    let lastReload = performance.now();
    while (!this.destroyed) {
      const segs = this.media.segments;
      if (this.next < segs.length && this.bufferedAhead() < AHEAD_S) {
        const i = this.next;
        const bytes = await fetchOk(segs[i].url);
        if (this.destroyed) return;
        const t = this.video.currentTime;
        if (this.sb.buffered.length && this.sb.buffered.start(0) < t - BEHIND_S - 30) await this.remove(0, t - BEHIND_S);
        await this.append(webmClusters(parseSegment(bytes, this.tracks), this.tracks));
        if (this.next === i) this.next = i + 1; // unless a seek moved it meanwhile
        continue;
      }
      if (!this.media.ended && performance.now() - lastReload >= this.media.target * 1000) {
        lastReload = performance.now();
        this.media = parseMedia(await fetchOk(this.mediaUrl, 'text'), this.mediaUrl);
        this.setDuration();
        if (this.media.ended) this.onLive(false);
        continue;
      }
      if (this.media.ended && this.next >= segs.length && this.ms.readyState === 'open' && !this.sb.updating) {
        this.ms.endOfStream();
      }
      await this.sleep(this.media.ended ? 1000 : 250);
    }
  }

  /** The newest position a live viewer can play (the end of what is buffered or listed). */
  liveEdge() {
    const segs = this.media ? this.media.segments : [];
    return segs.length ? Math.max(0, segs[segs.length - 1].start + segs[segs.length - 1].duration - this.media.target) : null;
  }

  destroy() {
    this.destroyed = true;
    if (this.onSeeking) this.video.removeEventListener('seeking', this.onSeeking);
    this.wake && this.wake();
    if (this.video.src.startsWith('blob:')) {
      URL.revokeObjectURL(this.video.src);
      this.video.removeAttribute('src');
      this.video.load();
    }
  }
}
