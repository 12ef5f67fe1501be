#!/usr/bin/env python3
"""An aiortc WHIP publisher with synthetic video (moving pattern, 30 fps) and audio
(440 Hz tone): POSTs its offer, sends media until stdin closes (or a line "stop"
arrives) or --duration passes, then DELETEs its session.

stdout, one JSON object per line:
  {"event": "answered", "location": ..., "etag": ..., "answer": <sdp>}
  {"event": "connected"}
  {"event": "done", "ok": bool, "error": ..., "delete_status": 200,
   "video_frames_sent": n, "audio_frames_sent": n, "codec": "video/VP8"}
"""

import argparse
import asyncio

import aiohttp
from aiortc import RTCSessionDescription

from tandem_peer import (
    HttpError,
    MovingPattern,
    Session,
    Tone,
    emit,
    first_codec,
    log,
    new_peer_connection,
    prefer_codec,
    rewrite_candidates,
    stdin_closed,
    watch_state,
)


async def run(args):
    pc = new_peer_connection()
    connected, failed = asyncio.Event(), asyncio.Event()
    watch_state(pc, connected, failed)
    video, audio = MovingPattern(), Tone()
    if not args.no_video:
        pc.addTransceiver(video, direction="sendonly")
    if not args.no_audio:
        pc.addTransceiver(audio, direction="sendonly")
    if args.codec:
        prefer_codec(pc, "video", f"video/{args.codec}")
    result = {"ok": False, "error": None, "delete_status": None}
    async with aiohttp.ClientSession() as http:
        session = Session(http, args.url, args.token)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await session.post(pc.localDescription.sdp)
            emit("answered", location=session.location, etag=session.etag, answer=answer)
            result["codec"] = first_codec(answer, "video")
            if args.relay:
                host, port = args.relay.rsplit(":", 1)
                answer = rewrite_candidates(answer, host, int(port))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            stop = asyncio.ensure_future(stdin_closed())
            waits = [stop, asyncio.ensure_future(failed.wait())]
            done, _ = await asyncio.wait(waits, timeout=args.duration, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if failed.is_set() and not stop.done():
                result["error"] = f"connection {pc.connectionState}"
            else:
                result["ok"] = connected.is_set()
                if not connected.is_set():
                    result["error"] = "never connected"
        except HttpError as e:
            result["error"] = str(e)
            result["status"] = e.status
        except Exception as e:  # noqa: BLE001
            log(f"publisher failed: {e!r}")
            result["error"] = repr(e)
        finally:
            result["delete_status"] = await session.delete()
            result["video_frames_sent"] = video.frames_sent
            result["audio_frames_sent"] = audio.frames_sent
            await pc.close()
    emit("done", **result)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="WHIP endpoint, e.g. http://127.0.0.1:PORT/v1/whip/STREAM")
    p.add_argument("--token", default="")
    p.add_argument("--codec", choices=["VP8", "H264"], default=None)
    p.add_argument("--duration", type=float, default=300.0, help="stop after this many seconds at most")
    p.add_argument("--relay", default=None, help="HOST:PORT to put in the answer's candidates")
    p.add_argument("--no-video", action="store_true")
    p.add_argument("--no-audio", action="store_true")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
