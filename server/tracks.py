"""aiortc media tracks of a session: the avatar video, the delayed audio, the inbound reader.

The tracks only wrap what :class:`server.session.Session` produces in PyAV frames; pacing
and timestamps come from the session's clock. Video pts are on a 90 kHz clock, audio pts at
48 kHz, both counting content time from the session's start, so a receiver that aligns them
by RTP timestamps (RTCP sender reports) sees them in sync.
"""

from __future__ import annotations

import asyncio
import logging
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from engines.audio.audio_ingest import NET_RATE
from server.session import AUDIO_FRAME, Session

log = logging.getLogger("etf.tracks")

VIDEO_CLOCK = 90000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = Fraction(1, NET_RATE)


class AvatarVideoTrack(MediaStreamTrack):
    """The animated face, one frame per tick, released on the session's clock."""

    kind = "video"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    async def recv(self) -> av.VideoFrame | av.Packet:
        """The next frame: I420 for aiortc to encode, or a VP8 frame the session's render
        process encoded (aiortc then only packetises it)."""
        if self.readyState != "live" or self.session.closed:
            raise MediaStreamError
        out = await self.session.next_video()
        if out.packet is not None:
            frame = av.Packet(out.packet)
        else:
            frame = av.VideoFrame.from_ndarray(out.yuv, format="yuv420p")
        frame.pts = int(round(out.index * VIDEO_CLOCK / self.session.config.fps))
        frame.time_base = VIDEO_TIME_BASE
        return frame


class DelayedAudioTrack(MediaStreamTrack):
    """The peer's own audio, delayed by exactly the video pipeline's delay (20 ms frames)."""

    kind = "audio"

    def __init__(self, session: Session) -> None:
        super().__init__()
        self.session = session

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live" or self.session.closed:
            raise MediaStreamError
        m, pcm = await self.session.next_audio()
        i16 = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(i16[None, :], format="s16", layout="mono")
        frame.sample_rate = NET_RATE
        frame.pts = m * AUDIO_FRAME
        frame.time_base = AUDIO_TIME_BASE
        return frame


async def read_inbound_audio(track: MediaStreamTrack, session: Session) -> None:
    """Decode the peer's microphone track into the session (until it ends)."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=NET_RATE)
    frames = 0
    try:
        while not session.closed:
            frame = await track.recv()
            frames += 1
            # the packet's end on the peer's RTP clock: lost packets and pauses in sending
            # then do not read as lateness to the jitter buffer
            end = (None if frame.pts is None or frame.time_base is None
                   else float((frame.pts + frame.samples) * frame.time_base))
            for out in resampler.resample(frame):
                session.push_audio(out.to_ndarray().reshape(-1), end)
    except MediaStreamError:
        log.info("session %s: inbound audio ended after %d frames", session.label, frames)
    except asyncio.CancelledError:
        raise
    except Exception:  # a broken packet stream ends the reader, never the server
        log.exception("session %s: inbound audio failed", session.label)


#: Audio packets aiortc's receiver holds after ours (see :func:`lean_audio_jitter_buffer`).
AUDIO_PREFETCH = 1


def lean_audio_jitter_buffer(pc) -> bool:
    """Make aiortc's inbound audio jitter buffer hold 1 packet instead of 4.

    aiortc releases an audio frame only once ``prefetch`` later packets have arrived (4 by
    default: 80 ms of added delay). The session's own jitter buffer (``AudioIngest``)
    already absorbs network jitter, so holding 4 more is pure latency. This replaces the
    buffer of each audio receiver that has not received anything yet; it relies on an aiortc
    internal, so when that is missing it changes nothing and returns False.
    """
    from aiortc.jitterbuffer import JitterBuffer

    changed = False
    for t in pc.getTransceivers():
        if t.kind != "audio":
            continue
        name = "_RTCRtpReceiver__jitter_buffer"
        old = getattr(t.receiver, name, None)
        if isinstance(old, JitterBuffer) and old._origin is None:
            setattr(t.receiver, name, JitterBuffer(capacity=16, prefetch=AUDIO_PREFETCH))
            changed = True
    return changed
