#!/usr/bin/env python3
"""A stand-in for tandem's replay API, to develop and check web/replay.html and
tests/peers/replay.js without a recorder: serves the page and its scripts from the
worktree's web/, `GET /v1/streams/{id}` and `GET /v1/streams/{id}/replay` answers
picked by the stream id, and an HLS folder (init.mp4, seg*.m4s or ffmpeg's
index*.m4s, index.m3u8) under `/v1/replay/{token}/`.

Stream ids: `vod` (finished recording), `live` (the same folder revealed one
segment per EXTINF seconds from the server's start, an EVENT playlist without
ENDLIST until the last), `enroll` (403 not_enrolled), `expired` (403
replay_expired), `none` (404 no_recording), `soon` (vod, window closes in 2 h:
the countdown), `broken` (hls_url points at a missing playlist), `nocodecs` (vod,
an answer without `codecs`).

usage: replay-devserver.py HLS_DIR [PORT]   (prints "listening PORT" when ready)
Not a test of the server: the real API's answers come from src/ (lead's tests).
"""
import datetime as dt
import http.server
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HLS = os.path.abspath(sys.argv[1])
START = time.time()


def iso(t):
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def media_playlist(live):
    text = open(os.path.join(HLS, 'index.m3u8')).read()
    if not live:
        return text
    out, shown, elapsed = [], 0.0, time.time() - START
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith('#EXTINF:'):
            d = float(line[8:].split(',')[0])
            if shown + d > elapsed:
                break
            out += [line, lines[i + 1]]
            shown += d
            i += 2
            continue
        if line.startswith('#EXT-X-ENDLIST'):
            out.append(line)
        elif line.startswith('#EXT-X-PLAYLIST-TYPE'):
            out.append('#EXT-X-PLAYLIST-TYPE:EVENT')
        else:
            out.append(line)
        i += 1
    return '\n'.join(out) + '\n'


class H(http.server.BaseHTTPRequestHandler):
    def send(self, status, body, ctype, extra=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        self.send_header('Cache-Control', 'no-cache')
        self.send_header('Access-Control-Allow-Origin', '*')
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def json(self, status, obj):
        self.send(status, json.dumps(obj), 'application/json')

    def err(self, status, code, message, **more):
        self.json(status, {'error': dict(code=code, message=message, **more)})

    def stream(self, sid):
        now = time.time()
        status = 'live' if sid == 'live' else 'ended'
        exp = now + (2 * 3600 if sid == 'soon' else -3600 if sid == 'expired' else 7 * 86400)
        return {
            'id': sid, 'title': f'Test class ({sid})', 'instructor': 'teacher-1', 'status': status,
            'scheduled_start': iso(START - 60), 'started_at': iso(START - 30),
            'ended_at': None if status == 'live' else iso(START), 'price_tokens': 10,
            'replay_expires_at': iso(exp), 'viewers': 0,
            'thumbnail_url': f'/v1/streams/{sid}/thumbnail.jpg',
            'recording': None if sid == 'none' else {'available': sid != 'expired', 'expires_at': iso(exp),
                                                     'duration_seconds': None if status == 'live' else 12.0},
        }

    def do_GET(self):
        path = self.path.split('?')[0]
        if re.fullmatch(r'/replay/[^/]+', path):
            return self.file(os.path.join(ROOT, 'web', 'replay.html'), 'text/html; charset=utf-8')
        if re.fullmatch(r'/watch/[^/]+', path):
            return self.file(os.path.join(ROOT, 'web', 'watch.html'), 'text/html; charset=utf-8')
        m = re.fullmatch(r'/web/([\w.-]+)', path)
        if m:
            return self.file(os.path.join(ROOT, 'web', m.group(1)), 'text/javascript; charset=utf-8' if m.group(1).endswith('.js') else 'text/css')
        m = re.fullmatch(r'/vendor/([\w.-]+)', path)
        if m:
            return self.file(os.path.join(ROOT, 'web', 'vendor', m.group(1)), 'text/javascript; charset=utf-8')
        m = re.fullmatch(r'/v1/streams/([\w-]+)(/replay|/thumbnail\.jpg)?', path)
        if m:
            sid, sub = m.group(1), m.group(2)
            if sub == '/thumbnail.jpg':
                thumb = os.path.join(HLS, 'thumbnail.jpg')
                return self.file(thumb, 'image/jpeg') if os.path.exists(thumb) else self.err(404, 'not_found', 'no thumbnail yet')
            if sub is None:
                return self.json(200, self.stream(sid))
            if not self.headers.get('Authorization', '').startswith('Bearer '):
                return self.err(401, 'unauthorized', 'missing bearer token')
            s = self.stream(sid)
            if sid == 'enroll':
                return self.err(403, 'not_enrolled', 'not enrolled in this stream')
            if sid == 'expired':
                return self.err(403, 'replay_expired', 'the replay window has closed', expires_at=s['replay_expires_at'])
            if sid == 'none':
                return self.err(404, 'no_recording', 'this stream was not recorded')
            host = self.headers.get('Host')
            name = 'missing.m3u8' if sid == 'broken' else 'master.m3u8'
            return self.json(200, {
                'hls_url': f'http://{host}/v1/replay/tok-{sid}/{name}', 'expires_at': s['replay_expires_at'],
                'duration_seconds': s['recording']['duration_seconds'], 'thumbnail_url': s['thumbnail_url'],
                'codecs': None if sid == 'nocodecs' else CODECS,
            })
        m = re.fullmatch(r'/v1/replay/tok-([\w-]+)/([\w.-]+)', path)
        if m:
            sid, name = m.groups()
            if name == 'master.m3u8':
                return self.send(200, f'#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n'
                                      f'#EXT-X-STREAM-INF:BANDWIDTH=1500000,CODECS="{",".join(CODECS)}"\nindex.m3u8\n',
                                 'application/vnd.apple.mpegurl')
            if name == 'index.m3u8':
                return self.send(200, media_playlist(sid == 'live'), 'application/vnd.apple.mpegurl')
            return self.file(os.path.join(HLS, name), 'video/mp4' if name.endswith('.mp4') else 'video/iso.segment')
        self.err(404, 'not_found', f'no route for GET {path}')

    def file(self, p, ctype):
        try:
            data = open(p, 'rb').read()
        except OSError:
            return self.err(404, 'not_found', 'no such file')
        self.send(200, data, ctype)

    def log_message(self, *a):
        pass


def codecs_of(folder):
    """RFC 6381 names from ffprobe, for the multivariant playlist and the API answer."""
    import subprocess
    out = subprocess.run(['ffprobe', '-v', 'error', '-show_entries', 'stream=codec_name,profile,level',
                          '-of', 'json', os.path.join(folder, 'init.mp4')], capture_output=True, text=True).stdout
    names = []
    for s in json.loads(out or '{}').get('streams', []):
        c = s.get('codec_name')
        names.append({'h264': 'avc1.64001f', 'vp8': 'vp08.00.41.08', 'vp9': 'vp09.00.10.08', 'opus': 'opus', 'av1': 'av01.0.04M.08'}.get(c, c))
    return names


CODECS = codecs_of(HLS)
srv = http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[2]) if len(sys.argv) > 2 else 0), H)
print('listening', srv.server_address[1], flush=True)
srv.serve_forever()
