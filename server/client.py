"""A Python WebRTC client of ``etf serve``: send speech from a file, receive the avatar.

Used by the tests and the latency benchmarks, and by anyone who wants to drive the server
from a program: it sends audio paced in real time (20 ms frames), records when each frame
left, records every received video and audio frame with its arrival time, and talks to the
control channel.

    async with AvatarClient("http://127.0.0.1:8080", audio=pcm48) as c:
        await c.control({"v": 1, "type": "set_emotion", "emotion": "happy"})
        await asyncio.sleep(3)
    c.video  # list of ReceivedFrame
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from server.tracks import AUDIO_PREFETCH, lean_audio_jitter_buffer

RATE = 48000
FRAME = 960  # 20 ms


@dataclass
class ReceivedFrame:
    """A decoded frame and when it reached this client.

    ``arrival`` (time.monotonic) is when the frame's packets reached the client: aiortc's
    receiver hands a frame on only once a packet of a later frame has arrived, so that wait
    (one frame period for video, ``AUDIO_PREFETCH`` packets of 20 ms for audio) is taken off
    the moment the decoded frame came out.
    """

    arrival: float
    pts: int
    image: np.ndarray | None  # RGB [H,W,3] (video) or mono float32 samples (audio)


class FileAudioTrack(MediaStreamTrack):
    """Mono 48 kHz float32 samples sent as 20 ms frames in real time, then silence (or,
    with ``loop``, the samples again from the start, without end).

    ``sent[m]`` is the monotonic time frame ``m`` (samples ``m*960 ...``) was handed to the
    encoder: the sender's clock for glass-to-glass measurements.
    """

    kind = "audio"

    def __init__(self, pcm: np.ndarray, tail_silence: bool = True, loop: bool = False) -> None:
        super().__init__()
        self.pcm = np.asarray(pcm, np.float32)
        self.tail_silence = tail_silence
        self.loop = loop and self.pcm.size > 0
        self.sent: list[float] = []
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        m = len(self.sent)
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + m * FRAME / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.loop:  # the samples over and over, for as long as the session runs
            at = np.arange(m * FRAME, (m + 1) * FRAME) % self.pcm.size
            chunk = self.pcm[at]
        else:
            chunk = self.pcm[m * FRAME:(m + 1) * FRAME]
        if chunk.size < FRAME:
            if not self.tail_silence and chunk.size == 0:
                self.stop()
                raise MediaStreamError
            chunk = np.concatenate([chunk, np.zeros(FRAME - chunk.size, np.float32)])
        i16 = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(i16[None, :], format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = m * FRAME
        frame.time_base = Fraction(1, RATE)
        self.sent.append(time.monotonic())
        return frame


@dataclass
class AvatarClient:
    """One WebRTC session against a running server (an async context manager)."""

    base_url: str
    audio: np.ndarray | None = None  # mono 48 kHz float32 to send; None sends no audio
    loop_audio: bool = False  # send ``audio`` over and over (soak runs)
    token: str | None = None
    keep_images: bool = True
    video: list[ReceivedFrame] = field(default_factory=list)
    audio_in: list[ReceivedFrame] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    answer: dict = field(default_factory=dict)

    async def __aenter__(self) -> AvatarClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        import aiohttp

        self.pc = RTCPeerConnection()
        self.sender_track = (FileAudioTrack(self.audio, loop=self.loop_audio)
                             if self.audio is not None else None)
        if self.sender_track is not None:
            self.pc.addTrack(self.sender_track)
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        lean_audio_jitter_buffer(self.pc)
        self._tasks: list[asyncio.Task] = []
        self._ws = None

        @self.pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        body = {"sdp": self.pc.localDescription.sdp, "type": "offer"}
        if self.token:
            body["token"] = self.token
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base_url}/offer", json=body) as resp:
                self.answer = await resp.json()
                if resp.status != 200:
                    await self.pc.close()
                    raise ConnectionError(f"offer refused ({resp.status}): {self.answer}")
        await self.pc.setRemoteDescription(
            RTCSessionDescription(sdp=self.answer["sdp"], type=self.answer["type"])
        )

    async def _consume(self, track) -> None:
        store = self.video if track.kind == "video" else self.audio_in
        hold = None
        try:
            while True:
                frame = await track.recv()
                if hold is None:
                    rate = self.answer.get("fps", 25.0)
                    hold = 1.0 / rate if track.kind == "video" else AUDIO_PREFETCH * FRAME / RATE
                now = time.monotonic() - hold
                if track.kind == "video":
                    data = frame.to_ndarray(format="rgb24") if self.keep_images else None
                else:
                    data = frame.to_ndarray().astype(np.float32).reshape(-1, len(
                        frame.layout.channels)).mean(axis=1) / 32768.0
                store.append(ReceivedFrame(now, frame.pts, data))
        except MediaStreamError:
            pass

    @property
    def session(self) -> str:
        return self.answer["session"]

    async def open_control(self, url: str | None = None) -> None:
        """Connect the control WebSocket and start collecting its messages."""
        from websockets.asyncio.client import connect

        url = url or self.answer["control_url"]
        if self.token:
            url += f"?token={self.token}"
        self._ws = await connect(url, max_size=2**20)
        self._tasks.append(asyncio.ensure_future(self._read_control()))

    async def _read_control(self) -> None:
        await _collect_messages(self._ws, self.messages)

    async def control(self, obj: dict | str) -> float:
        """Send one control message (dict as JSON, or a raw string); returns its send time."""
        if self._ws is None:
            await self.open_control()
        await self._ws.send(obj if isinstance(obj, str) else json.dumps(obj))
        return time.monotonic()

    async def wait_message(self, pred, timeout: float = 5.0) -> dict:
        """The first collected control message matching ``pred`` (waits for it)."""
        return await _first_message(self.messages, pred, timeout)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self.pc.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class AvatarAgent:
    """An agent's own control connection to a session: pushes speech, says text, interrupts.

    The viewer (a browser, or :class:`AvatarClient`) owns the session; the agent connects to
    its ``control_url`` (plus ``?token=`` when the server needs one)::

        async with AvatarAgent(control_url) as agent:
            await agent.push(pcm_int16, rate=24000, emotion="happy")   # queued, in order
            await agent.say("Hello there!")
            await agent.interrupt()
    """

    def __init__(self, control_url: str, token: str | None = None) -> None:
        self.url = control_url + (f"?token={token}" if token else "")
        self.messages: list[dict] = []
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._next_id = 0

    async def __aenter__(self) -> AvatarAgent:
        from websockets.asyncio.client import connect

        self._ws = await connect(self.url, max_size=2**20)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        await self._ws.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read(self) -> None:
        await _collect_messages(self._ws, self.messages)

    async def request(self, obj: dict, timeout: float = 10.0) -> dict:
        """Send a JSON message and wait for the reply carrying its id."""
        self._next_id += 1
        mid = f"a{self._next_id}"
        await self._ws.send(json.dumps({"v": 1, **obj, "id": mid}))
        return await self.wait(lambda m: m.get("id") == mid, timeout)

    async def wait(self, pred, timeout: float = 10.0) -> dict:
        """The first received message matching ``pred`` (waits for it)."""
        return await _first_message(self.messages, pred, timeout)

    async def push(self, pcm: np.ndarray, rate: int, chunk_ms: float = 100.0,
                   emotion: str | None = None, intensity: float | None = None) -> float:
        """Queue one utterance (int16 or float mono samples at ``rate``), sent in chunks as
        fast as the socket takes them; returns the send time of its first chunk."""
        start = {"type": "audio_start", "rate": int(rate), "format": "s16le"}
        if emotion is not None:
            start["emotion"] = emotion
        if intensity is not None:
            start["intensity"] = intensity
        ack = await self.request(start)
        if ack["type"] != "ack":
            raise RuntimeError(f"audio_start refused: {ack}")
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            pcm = (np.clip(pcm, -1.0, 1.0) * 32767.0).astype(np.int16)
        step = max(1, int(rate * chunk_ms / 1000.0))
        first = time.monotonic()
        for i in range(0, len(pcm), step):
            await self._ws.send(pcm[i:i + step].astype("<i2").tobytes())
        await self.request({"type": "audio_end"})
        return first

    async def say(self, text: str, **kw) -> dict:
        """Say ``text`` (``voice``, ``emotion``, ``intensity``); returns the ``said`` event."""
        ack = await self.request({"type": "say", "text": text, **kw})
        if ack["type"] != "ack":
            raise RuntimeError(f"say refused: {ack}")
        return await self.wait(lambda m: m.get("id") == ack["id"] and m["type"] != "ack", 30.0)

    async def interrupt(self) -> dict:
        return await self.request({"type": "interrupt"})


async def _collect_messages(ws, store: list[dict]) -> None:
    """Append every JSON message of a control connection, with its arrival time."""
    from websockets.exceptions import ConnectionClosed

    try:
        async for msg in ws:
            store.append({**json.loads(msg), "_arrival": time.monotonic()})
    except ConnectionClosed:
        pass


async def _first_message(store: list[dict], pred, timeout: float) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for m in store:
            if pred(m):
                return m
        await asyncio.sleep(0.01)
    raise TimeoutError(f"no matching control message in {timeout} s: {store[-5:]}")
