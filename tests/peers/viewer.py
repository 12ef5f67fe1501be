#!/usr/bin/env python3
"""An aiortc WHEP viewer: POSTs a recvonly offer (video + audio), decodes what
arrives and counts it, then DELETEs its session.

It stops when it has decoded --frames video frames and --audio-frames audio
frames and has run --min-seconds since its first video frame (or, with --hold,
when stdin closes after that), or when --duration passes (then "ok" is false).
--relay HOST:PORT points the answer's candidates at a relay in front of the
server (the loss test). --nack-retry-ms N makes the viewer ask again, every N ms,
for video packets that are still missing (see NackRetrier).

stdout, one JSON object per line:
  {"event": "answered", "location": ..., "etag": ..., "answer": <sdp>}
  {"event": "connected"}
  {"event": "first_frame", "after_s": seconds since the POST}
  {"event": "reached", "video_frames": n, "audio_frames": n}   (goals met)
  {"event": "done", "ok": bool, "error": ..., "delete_status": 200,
   "video_frames": n, "audio_frames": n, "first_frame_s": s, "max_gap_s": s,
   "frames_per_second": [n, ...], "width": w, "height": h, "codec": "video/VP8",
   "nacks_resent": sequence numbers asked for again (null without --nack-retry-ms),
   "sender_reports": [{"kind": "video", "packets_sent": n, "bytes_sent": n,
                       "age_s": seconds between the report's NTP time and now}, ...]}
"""

import argparse
import asyncio
import datetime
import time

import aiohttp
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from tandem_peer import (
    HttpError,
    Session,
    emit,
    first_codec,
    log,
    new_peer_connection,
    rewrite_candidates,
    stdin_closed,
    watch_state,
)


class Counter:
    def __init__(self):
        self.video_frames = 0
        self.audio_frames = 0
        self.first_video_at = None
        self.last_video_at = None
        self.max_gap = 0.0
        self.per_second = []
        self.width = None
        self.height = None
        self.progress = asyncio.Event()

    def video(self, frame, now):
        if self.first_video_at is None:
            self.first_video_at = now
        else:
            self.max_gap = max(self.max_gap, now - self.last_video_at)
        self.last_video_at = now
        second = int(now - self.first_video_at)
        while len(self.per_second) <= second:
            self.per_second.append(0)
        self.per_second[second] += 1
        self.video_frames += 1
        self.width, self.height = frame.width, frame.height
        self.progress.set()

    def audio(self, frame, now):
        self.audio_frames += 1
        self.progress.set()


async def consume(track, counter, on_first):
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        now = time.monotonic()
        if track.kind == "video":
            first = counter.first_video_at is None
            counter.video(frame, now)
            if first:
                on_first(now)
        else:
            counter.audio(frame, now)


class NackRetrier:
    """Re-sends NACKs for video packets still missing, as libwebrtc's NackRequester
    does (every round trip, at most MAX_RETRIES times per packet).

    aiortc NACKs a gap only when it first sees it, so a lost NACK or a lost
    retransmission leaves the packet missing until some later packet goes missing
    too; its 512-packet jitter buffer then holds every frame behind the hole. A
    browser viewer retries; this gives the loss test's aiortc viewer the same
    receiver behaviour, so that what the test measures is the SFU's repair. It
    reads aiortc's own missing-packet set (a private attribute of the receiver).
    """

    MAX_RETRIES = 10
    # aiortc's own state, read rather than duplicated (name-mangled privates).
    GENERATOR = "_RTCRtpReceiver__nack_generator"
    STREAMS = "_RTCRtpReceiver__remote_streams"

    def __init__(self, pc, interval_s):
        self.pc = pc
        self.interval_s = interval_s
        self.asked = {}  # (receiver id, seq) -> (last asked at, retries)
        self.resent = 0
        # Set when aiortc no longer looks as expected: the viewer then fails
        # instead of quietly running without retries.
        self.error = None

    async def run(self):
        try:
            while True:
                await asyncio.sleep(self.interval_s / 2)
                now = time.monotonic()
                for receiver in self.pc.getReceivers():
                    await self.retry(receiver, now)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            self.error = f"--nack-retry-ms: {e!r}"

    async def retry(self, receiver, now):
        if not (hasattr(receiver, self.GENERATOR) and hasattr(receiver, self.STREAMS)):
            raise RuntimeError(f"aiortc's RTCRtpReceiver has no {self.GENERATOR} / {self.STREAMS}")
        generator = getattr(receiver, self.GENERATOR)  # None for audio: no NACKs
        streams = getattr(receiver, self.STREAMS)
        if generator is None or not generator.missing or len(streams) != 1:
            return
        (media_ssrc,) = streams.keys()
        due = []
        for seq in sorted(generator.missing):
            key = (id(receiver), seq)
            if key not in self.asked:
                self.asked[key] = (now, 0)  # aiortc NACKed it when the gap appeared
                continue
            asked_at, retries = self.asked[key]
            if now - asked_at >= self.interval_s and retries < self.MAX_RETRIES:
                self.asked[key] = (now, retries + 1)
                due.append(seq)
        for key in [k for k in self.asked if k[0] == id(receiver) and k[1] not in generator.missing]:
            del self.asked[key]
        if due:
            self.resent += len(due)
            await receiver._send_rtcp_nack(media_ssrc, due)


async def run(args):
    pc = new_peer_connection()
    connected, failed = asyncio.Event(), asyncio.Event()
    watch_state(pc, connected, failed)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    counter = Counter()
    tasks = []
    posted_at = time.monotonic()

    def on_first(now):
        emit("first_frame", after_s=round(now - posted_at, 3))

    @pc.on("track")
    def on_track(track):
        log(f"track {track.kind}")
        tasks.append(asyncio.ensure_future(consume(track, counter, on_first)))

    result = {"ok": False, "error": None, "delete_status": None}
    retrier = None
    if args.nack_retry_ms > 0:
        retrier = NackRetrier(pc, args.nack_retry_ms / 1000)
        tasks.append(asyncio.ensure_future(retrier.run()))
    deadline = time.monotonic() + args.duration
    async with aiohttp.ClientSession() as http:
        session = Session(http, args.url, args.token)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            posted_at = time.monotonic()
            answer = await session.post(pc.localDescription.sdp)
            emit("answered", location=session.location, etag=session.etag, answer=answer)
            result["codec"] = first_codec(answer, "video")
            if args.relay:
                host, port = args.relay.rsplit(":", 1)
                answer = rewrite_candidates(answer, host, int(port))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

            def goals_met():
                if counter.video_frames < args.frames or counter.audio_frames < args.audio_frames:
                    return False
                return time.monotonic() - counter.first_video_at >= args.min_seconds

            while not goals_met():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"after {args.duration}s: {counter.video_frames} video frames "
                        f"(want {args.frames}), {counter.audio_frames} audio frames "
                        f"(want {args.audio_frames}), connection {pc.connectionState}"
                    )
                if failed.is_set():
                    raise ConnectionError(f"connection {pc.connectionState}")
                if retrier is not None and retrier.error:
                    raise RuntimeError(retrier.error)
                counter.progress.clear()
                try:
                    await asyncio.wait_for(counter.progress.wait(), timeout=min(left, 0.5))
                except asyncio.TimeoutError:
                    pass
            result["ok"] = True
            emit("reached", video_frames=counter.video_frames, audio_frames=counter.audio_frames)
            if args.hold:
                await stdin_closed()
        except HttpError as e:
            result["error"] = str(e)
            result["status"] = e.status
        except Exception as e:  # noqa: BLE001
            log(f"viewer failed: {e!r}")
            result["error"] = str(e) or repr(e)
        finally:
            result["sender_reports"] = await sender_reports(pc)
            if not args.no_delete:
                result["delete_status"] = await session.delete()
            for t in tasks:
                t.cancel()
            await pc.close()
    result.update(
        video_frames=counter.video_frames,
        audio_frames=counter.audio_frames,
        first_frame_s=None
        if counter.first_video_at is None
        else round(counter.first_video_at - posted_at, 3),
        max_gap_s=round(counter.max_gap, 3),
        frames_per_second=counter.per_second,
        width=counter.width,
        height=counter.height,
        nacks_resent=None if retrier is None else retrier.resent,
    )
    emit("done", **result)


async def sender_reports(pc):
    """What the server's RTCP sender reports said, as aiortc recorded them."""
    reports = []
    try:
        stats = await pc.getStats()
    except Exception as e:  # noqa: BLE001
        log(f"getStats failed: {e!r}")
        return reports
    now = datetime.datetime.now(datetime.timezone.utc)
    for s in stats.values():
        if s.type == "remote-outbound-rtp":
            reports.append(
                {
                    "kind": s.kind,
                    "packets_sent": s.packetsSent,
                    "bytes_sent": s.bytesSent,
                    "age_s": round((now - s.remoteTimestamp).total_seconds(), 3),
                }
            )
    return reports


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="WHEP endpoint, e.g. http://127.0.0.1:PORT/v1/whep/STREAM")
    p.add_argument("--token", default="")
    p.add_argument("--frames", type=int, default=60, help="video frames to decode")
    p.add_argument("--audio-frames", type=int, default=25, help="audio frames to decode")
    p.add_argument("--min-seconds", type=float, default=0.0, help="run at least this long after the first frame")
    p.add_argument("--duration", type=float, default=60.0, help="give up after this many seconds")
    p.add_argument("--relay", default=None, help="HOST:PORT to put in the answer's candidates")
    p.add_argument(
        "--nack-retry-ms",
        type=float,
        default=0,
        help="re-NACK video packets still missing after this many ms (0: aiortc's own NACKs only)",
    )
    p.add_argument("--hold", action="store_true", help="after the goals, wait for stdin to close")
    p.add_argument("--no-delete", action="store_true", help="leave the session for the caller to end")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
