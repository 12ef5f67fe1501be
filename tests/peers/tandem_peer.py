"""Shared parts of the aiortc test peers (publisher.py, viewer.py): the WHIP/WHEP
HTTP exchange, synthetic media tracks, and JSON-lines reporting on stdout.

Every line a peer prints on stdout is one JSON object with an "event" key; the
last one is {"event": "done", ...} with the peer's results. Diagnostics go to
stderr. The Rust tests (tests/common) read these lines.
"""

import asyncio
import fractions
import json
import array
import math
import re
import sys
import time

import aioice.ice

# aiortc gathers no loopback candidate by default, and loopback is all a test has.
aioice.ice.get_host_addresses = lambda *a, **k: ["127.0.0.1"]

import aiohttp  # noqa: E402
import av  # noqa: E402
from yarl import URL  # noqa: E402
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import VideoStreamTrack  # noqa: E402
from aiortc.rtcrtpsender import RTCRtpSender  # noqa: E402

T0 = time.monotonic()


def emit(event, **fields):
    fields = {"event": event, "t": round(time.monotonic() - T0, 3), **fields}
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def log(msg):
    sys.stderr.write(f"[{time.monotonic() - T0:7.3f}] {msg}\n")
    sys.stderr.flush()


class HttpError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status
        self.body = body


class Session:
    """One WHIP or WHEP session: POST the offer, keep Location/ETag, DELETE at the end."""

    def __init__(self, http, endpoint, token):
        self.http = http
        self.endpoint = endpoint
        self.token = token
        self.location = None
        self.etag = None

    def _auth(self):
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def post(self, offer_sdp):
        headers = {"Content-Type": "application/sdp", **self._auth()}
        async with self.http.post(self.endpoint, data=offer_sdp, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise HttpError(resp.status, body)
            loc = resp.headers.get("Location")
            if not loc:
                raise HttpError(resp.status, "201 without Location")
            self.location = str(resp.url.join(URL(loc)))
            self.etag = resp.headers.get("ETag")
            return body

    async def delete(self):
        if not self.location:
            return None
        try:
            async with self.http.delete(self.location, headers=self._auth()) as resp:
                await resp.read()
                return resp.status
        except Exception as e:  # noqa: BLE001
            log(f"DELETE failed: {e}")
            return None


def rewrite_candidates(sdp, host, port):
    """Points every candidate of an SDP at host:port (used to put a relay in between)."""

    def repl(m):
        parts = m.group(1).split(" ")
        # candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
        parts[4] = host
        parts[5] = str(port)
        return "a=" + " ".join(parts)

    return re.sub(r"a=(candidate:[^\r\n]+)", repl, sdp)


def first_codec(sdp, kind):
    """mime type of the first payload type of the first `kind` m-line (the one in use)."""
    m = re.search(r"^m=" + kind + r" \d+ \S+ (\d+)", sdp, re.M)
    if not m:
        return None
    rtpmap = re.search(r"^a=rtpmap:" + m.group(1) + r" ([^/\r\n]+)", sdp, re.M)
    return f"{kind}/{rtpmap.group(1)}" if rtpmap else None


def prefer_codec(pc, kind, mime):
    """Restricts the offer's codecs of `kind` to `mime` (e.g. video/H264), keeping rtx."""
    caps = RTCRtpSender.getCapabilities(kind)
    wanted = [c for c in caps.codecs if c.mimeType.lower() == mime.lower()]
    if not wanted:
        raise SystemExit(f"aiortc cannot do {mime}")
    rtx = [c for c in caps.codecs if c.mimeType.lower().endswith("/rtx")]
    for t in pc.getTransceivers():
        if t.kind == kind:
            t.setCodecPreferences(wanted + rtx)


class MovingPattern(VideoStreamTrack):
    """320x240 frames at 30 fps with a moving gradient, so the encoder has work to do."""

    def __init__(self, width=320, height=240):
        super().__init__()
        self.width = width
        self.height = height
        self.n = 0
        self.frames_sent = 0
        self.base = bytes((x + y) % 256 for y in range(height) for x in range(width))
        self.chroma = bytes([128]) * ((width // 2) * (height // 2))

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        self.n += 1
        shift = (self.n * 4) % 256
        table = bytes((v + shift) % 256 for v in range(256))
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        frame.planes[0].update(self.base.translate(table))
        frame.planes[1].update(bytes([(self.n * 3) % 256]) * len(self.chroma))
        frame.planes[2].update(self.chroma)
        frame.pts = pts
        frame.time_base = time_base
        self.frames_sent += 1
        return frame


class Tone(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames of 48 kHz mono s16, paced in real time."""

    kind = "audio"

    def __init__(self, rate=48000, ptime=0.02):
        super().__init__()
        self.rate = rate
        self.samples = int(rate * ptime)
        self.pts = 0
        self.start = None
        self.frames_sent = 0
        # One second of tone: 440 whole periods, so it loops seamlessly.
        pcm = array.array("h", (int(math.sin(2 * math.pi * 440 * i / rate) * 8000) for i in range(rate)))
        self.second = pcm.tobytes()

    async def recv(self):
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + self.pts / self.rate - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        offset = (self.pts % self.rate) * 2
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.samples)
        frame.planes[0].update(self.second[offset : offset + self.samples * 2])
        frame.sample_rate = self.rate
        frame.pts = self.pts
        frame.time_base = fractions.Fraction(1, self.rate)
        self.pts += self.samples
        self.frames_sent += 1
        return frame


async def stdin_closed():
    """Resolves when stdin reaches EOF (the test dropped its end): a stop signal."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):
        await asyncio.Event().wait()  # no usable stdin: never
    while True:
        line = await reader.readline()
        if not line or line.strip() == b"stop":
            return


def new_peer_connection():
    # No ICE servers: loopback only, and no outside traffic from tests.
    return RTCPeerConnection()


def watch_state(pc, connected: asyncio.Event, failed: asyncio.Event):
    @pc.on("connectionstatechange")
    def _():
        log(f"connection state {pc.connectionState}")
        if pc.connectionState == "connected":
            emit("connected")
            connected.set()
        elif pc.connectionState in ("failed", "closed"):
            failed.set()
