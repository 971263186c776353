"""The WebSocket control channel: protocol version 1, its validation, rate limiting, server.

A control connection belongs to one session: ``ws://HOST:CONTROL_PORT/control/<session>``
(``?token=...`` when the server requires a token). ``CONTROL_PORT`` is the HTTP port + 1
unless ``--control-port`` says otherwise; ``POST /offer`` returns the full URL. Every message
is one JSON object in a text frame, at most ``MAX_MESSAGE_BYTES`` bytes, carrying ``"v": 1``
and a ``"type"``; an optional ``"id"`` (string or integer) is echoed in the reply.

Client -> server:

- ``set_emotion``: ``emotion`` (one of ``EMOTIONS``) or ``mix`` (weights over them, e.g.
  ``{"happy": 0.6, "surprise": 0.3}``: each a number in 0..1, summing to at most 1, the rest
  neutral; the face shows the blend of their geometry and skin), optional ``intensity``
  (0..1, default unchanged; it scales a mix too) and ``transition_ms`` (0..10000, default
  250). Both ``emotion`` and ``mix``, neither, an unknown name, a weight outside 0..1 or
  weights summing over 1 are ``bad_field`` errors naming the problem. Replied with ``ack``
  (``emotion``: the dominant one; ``mix``: the mix, or null).
- ``set_intensity``: ``intensity`` and optional ``transition_ms``. Replied with ``ack``.
- ``get_stats``: replied with one ``stats`` message.
- ``subscribe_stats``: ``interval_ms`` (0 stops, else 200..60000); the server pushes ``stats``
  at that interval (1000 ms by default from the start of the connection).
- ``ping``: replied with ``pong``.

Speech from an agent (the session speaks it; a viewer that sends no microphone just watches):

- ``audio_start``: ``rate`` (integer Hz, 8000..48000), optional ``channels`` (1 or 2,
  interleaved), ``format`` (``"s16le"``, default, or ``"f32le"``), ``emotion``,
  ``intensity`` and ``transition_ms`` (shown from when this audio starts to play). Opens an
  utterance; replied with ``ack`` carrying its ``utterance`` number. Then **binary frames**
  carry its PCM, at most ``HARD_MAX_BYTES`` each (e.g. 20..500 ms chunks), as fast as the
  agent has them: they queue (up to 120 s) and play in order at real time, after anything
  queued before. Binary frames are not replied to; errors come at most once a second:
  ``no_audio_stream`` (no ``audio_start`` yet), ``bad_audio`` (not whole samples),
  ``queue_full``, ``rate_limited`` (more than ``AUDIO_FRAMES_PER_S`` frames/s).
- ``audio_end``: the utterance is complete (its tail is flushed); ``ack`` with
  ``queued_ms``. Optional, but without it a short final chunk waits for the next.
- ``say``: ``text`` (1..``MAX_SAY_CHARS`` characters), optional ``voice`` (see
  ``engines/audio/tts.py``: ``piper:joe`` when the voice extra is installed, else
  ``flite:slt``, ...), ``emotion``, ``intensity``, ``transition_ms``. Replied with ``ack``
  at once; when the speech is synthesised and queued, ``said`` (``queued``, ``utterance``,
  ``duration_ms``), or ``error`` ``tts_failed``.
- ``interrupt``: barge-in. Drops all queued speech and any ``say`` still being synthesised
  (its ``said`` reports ``queued: false``); ``ack`` with ``dropped_ms``. What already
  entered the pipeline (``pipeline_delay_ms``) plays out, audio and mouth together, so the
  mouth closes when the voice stops. An open ``audio_start`` stream stays open.

Server -> client: ``hello`` (on connect: session, emotions, current emotion and intensity,
fps, lookahead_ms, limits), ``ack``, ``stats``, ``pong``, ``said`` and ``error`` (``code``
and ``message``; the connection stays open). Error codes: ``bad_json``, ``not_object``,
``bad_version``, ``unknown_type``, ``bad_field``, ``too_large``, ``binary_not_supported``,
``no_audio_stream``, ``bad_audio``, ``queue_full``, ``tts_failed``, ``rate_limited``,
``session_closed``. More than ``RATE_PER_S`` messages per second (bursts
of ``RATE_BURST``) are dropped with one ``rate_limited`` error per second; a client that keeps
flooding for ``FLOOD_CLOSE_S`` seconds is disconnected with close code 1008. Messages above
``HARD_MAX_BYTES`` close the connection with code 1009 (the WebSocket library's own limit).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from engines.motion.emotion_state import parse_mix
from etf_models.emotions import EMOTIONS

if TYPE_CHECKING:
    from server.session import SessionRegistry

log = logging.getLogger("etf.control")

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 4096
MAX_SAY_CHARS = 1000
HARD_MAX_BYTES = 65536
RATE_PER_S = 20.0
RATE_BURST = 40
FLOOD_CLOSE_S = 10.0
DEFAULT_STATS_INTERVAL_MS = 1000
MESSAGE_TYPES = ("set_emotion", "set_intensity", "get_stats", "subscribe_stats", "ping",
                 "audio_start", "audio_end", "interrupt", "say")
#: Binary (audio) frames per second at most, bursts of twice that; a 20 ms chunking is 50/s.
AUDIO_FRAMES_PER_S = 200.0


class ControlError(Exception):
    """A message the server refuses; becomes an ``error`` reply."""

    def __init__(self, code: str, message: str, msg_id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.msg_id = msg_id

    def reply(self) -> dict:
        out = {"v": PROTOCOL_VERSION, "type": "error", "code": self.code, "message": self.message}
        if self.msg_id is not None:
            out["id"] = self.msg_id
        return out


@dataclass(frozen=True)
class Command:
    """A validated client message."""

    type: str
    id: Any = None
    emotion: str | None = None
    intensity: float | None = None
    transition_ms: float = 250.0
    interval_ms: int | None = None
    rate: int | None = None
    channels: int = 1
    format: str = "s16le"
    text: str | None = None
    voice: str | None = None
    mix: dict | None = None


def _number(obj: dict, key: str, lo: float, hi: float, msg_id: Any) -> float | None:
    if key not in obj:
        return None
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ControlError("bad_field", f"{key} must be a number, got {json.dumps(value)}", msg_id)
    if not lo <= value <= hi:
        raise ControlError("bad_field", f"{key} {value} is outside {lo:g}..{hi:g}", msg_id)
    return float(value)


def parse_message(data: str | bytes) -> Command:
    """Validate one received frame; raises :class:`ControlError` naming the problem."""
    if isinstance(data, bytes):
        raise ControlError("binary_not_supported", "send JSON text frames, not binary")
    if len(data.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise ControlError(
            "too_large", f"message is larger than {MAX_MESSAGE_BYTES} bytes"
        )
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ControlError("bad_json", f"not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ControlError("not_object", "a message must be a JSON object")
    msg_id = obj.get("id")
    if msg_id is not None and (
        isinstance(msg_id, bool) or not isinstance(msg_id, (str, int)) or len(str(msg_id)) > 64
    ):
        raise ControlError("bad_field", "id must be a string or integer of at most 64 chars")
    if "v" not in obj:
        raise ControlError("bad_version", f'missing "v" (protocol version {PROTOCOL_VERSION})',
                           msg_id)
    if obj["v"] != PROTOCOL_VERSION or isinstance(obj["v"], bool):
        raise ControlError(
            "bad_version", f"protocol version {json.dumps(obj['v'])} is not supported "
            f"(this server speaks {PROTOCOL_VERSION})", msg_id,
        )
    kind = obj.get("type")
    if kind not in MESSAGE_TYPES:
        raise ControlError(
            "unknown_type", f"unknown type {json.dumps(kind)}; expected one of "
            f"{', '.join(MESSAGE_TYPES)}", msg_id,
        )
    known = {"v", "type", "id"} | {
        "set_emotion": {"emotion", "mix", "intensity", "transition_ms"},
        "set_intensity": {"intensity", "transition_ms"},
        "subscribe_stats": {"interval_ms"},
        "audio_start": {"rate", "channels", "format", "emotion", "intensity", "transition_ms"},
        "say": {"text", "voice", "emotion", "intensity", "transition_ms"},
    }.get(kind, set())
    extra = sorted(set(obj) - known)
    if extra:
        raise ControlError("bad_field", f"unknown field(s) for {kind}: {', '.join(extra)}", msg_id)
    transition = _number(obj, "transition_ms", 0.0, 10000.0, msg_id)
    transition = 250.0 if transition is None else transition
    if kind in ("audio_start", "say"):
        emotion = obj.get("emotion")
        if emotion is not None and emotion not in EMOTIONS:
            raise ControlError(
                "bad_field", f"emotion {json.dumps(emotion)} is not one of {', '.join(EMOTIONS)}",
                msg_id,
            )
        intensity = _number(obj, "intensity", 0.0, 1.0, msg_id)
        if kind == "say":
            text, voice = obj.get("text"), obj.get("voice")
            if not isinstance(text, str) or not text.strip():
                raise ControlError("bad_field", "say needs text (a non-empty string)", msg_id)
            if len(text) > MAX_SAY_CHARS:
                raise ControlError("bad_field", f"text is longer than {MAX_SAY_CHARS} characters",
                                   msg_id)
            if voice is not None and (not isinstance(voice, str) or len(voice) > 64):
                raise ControlError("bad_field", "voice must be a voice name (a string)", msg_id)
            return Command(kind, msg_id, emotion=emotion, intensity=intensity,
                           transition_ms=transition, text=text, voice=voice)
        rate = _number(obj, "rate", 8000, 48000, msg_id)
        if rate is None or rate != int(rate):
            raise ControlError("bad_field", "audio_start needs rate (an integer, 8000..48000 Hz)",
                               msg_id)
        channels = obj.get("channels", 1)
        if channels not in (1, 2) or isinstance(channels, bool):
            raise ControlError("bad_field", "channels must be 1 or 2", msg_id)
        fmt = obj.get("format", "s16le")
        if fmt not in ("s16le", "f32le"):
            raise ControlError("bad_field", 'format must be "s16le" or "f32le"', msg_id)
        return Command(kind, msg_id, emotion=emotion, intensity=intensity,
                       transition_ms=transition, rate=int(rate), channels=channels, format=fmt)
    if kind == "set_emotion":
        emotion = obj.get("emotion")
        if "mix" in obj:
            if "emotion" in obj:
                raise ControlError("bad_field", "set_emotion takes emotion or mix, not both",
                                   msg_id)
            try:
                mix = parse_mix(obj["mix"])
            except ValueError as e:
                raise ControlError("bad_field", str(e), msg_id) from None
            return Command(kind, msg_id, mix=mix,
                           intensity=_number(obj, "intensity", 0.0, 1.0, msg_id),
                           transition_ms=transition)
        if emotion not in EMOTIONS:
            raise ControlError(
                "bad_field", f"emotion {json.dumps(emotion)} is not one of {', '.join(EMOTIONS)}",
                msg_id,
            )
        intensity = _number(obj, "intensity", 0.0, 1.0, msg_id)
        return Command(kind, msg_id, emotion=emotion, intensity=intensity,
                       transition_ms=transition)
    if kind == "set_intensity":
        intensity = _number(obj, "intensity", 0.0, 1.0, msg_id)
        if intensity is None:
            raise ControlError("bad_field", "set_intensity needs intensity (0..1)", msg_id)
        return Command(kind, msg_id, intensity=intensity, transition_ms=transition)
    if kind == "subscribe_stats":
        interval = _number(obj, "interval_ms", 0.0, 60000.0, msg_id)
        if interval is None or (0 < interval < 200):
            raise ControlError("bad_field", "interval_ms must be 0 (stop) or 200..60000", msg_id)
        return Command(kind, msg_id, interval_ms=int(interval))
    return Command(kind, msg_id)


class RateLimiter:
    """Token bucket: ``rate`` messages per second with bursts of ``burst``."""

    def __init__(self, rate: float = RATE_PER_S, burst: int = RATE_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def token_ok(expected: str | None, given: str | None) -> bool:
    """Constant-time token check; no token configured means open access."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


class ControlServer:
    """The ``websockets`` server for all sessions' control connections."""

    def __init__(self, registry: SessionRegistry, token: str | None,
                 http_port: int | None, allowed_origins: tuple[str, ...] = ()) -> None:
        """Browsers may connect from ``allowed_origins`` (exact ``scheme://host[:port]``),
        or, when none are given, from any page served on ``http_port``; with neither (no
        page, as in ``etf live``) browser origins are refused. Non-browser clients send no
        Origin and are not affected."""
        self.registry = registry
        self.token = token
        self.http_port = http_port
        self.allowed_origins = tuple(o.rstrip("/") for o in allowed_origins)
        self._server = None

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        from websockets.asyncio.server import serve

        self._server = await serve(
            self._handle, host, port, max_size=HARD_MAX_BYTES, max_queue=32,
            process_request=self._check_request, ping_interval=10, ping_timeout=10,
        )
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @staticmethod
    def _session_id(path: str) -> str | None:
        """The session id of a ``/control/<id>`` request path, or None for other paths."""
        parts = urlsplit(path).path.strip("/").split("/")
        return parts[1] if len(parts) == 2 and parts[0] == "control" else None

    def _check_request(self, connection, request):
        sid = self._session_id(request.path)
        if sid is None:
            return connection.respond(404, "use /control/<session id>\n")
        token = parse_qs(urlsplit(request.path).query).get("token", [None])[0]
        if not token_ok(self.token, token):
            return connection.respond(401, "missing or wrong token\n")
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_ok(origin):
            return connection.respond(403, f"origin {origin} is not this server's page\n")
        if self.registry.get(sid) is None:
            return connection.respond(404, "no such session (it may have ended)\n")
        return None

    def _origin_ok(self, origin: str) -> bool:
        if self.allowed_origins:
            return origin.rstrip("/") in self.allowed_origins
        return self.http_port is not None and urlsplit(origin).port == self.http_port

    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        session = self.registry.get(self._session_id(ws.request.path))
        if session is None:
            await ws.close(1008, "session ended")
            return
        limiter = RateLimiter()
        audio_limiter = RateLimiter(AUDIO_FRAMES_PER_S, int(2 * AUDIO_FRAMES_PER_S))
        last_audio_error = -math.inf
        says: set[asyncio.Task] = set()
        stats_every = [DEFAULT_STATS_INTERVAL_MS / 1000.0]
        flood_since: float | None = None
        last_rate_error = -math.inf

        async def send(obj: dict) -> None:
            await ws.send(json.dumps(obj, separators=(",", ":")))

        async def push_stats() -> None:
            while True:
                interval = stats_every[0]
                await asyncio.sleep(interval if interval > 0 else 0.5)
                if stats_every[0] > 0 and not session.closed:
                    await send({"v": PROTOCOL_VERSION, "type": "stats", "stats": session.stats()})

        await send({"v": PROTOCOL_VERSION, "type": "hello", **session.describe(),
                    "limits": {"max_message_bytes": MAX_MESSAGE_BYTES, "rate_per_s": RATE_PER_S,
                               "burst": RATE_BURST}})
        async def close_with_session() -> None:
            await session.wait_closed()
            await send(ControlError("session_closed", "the session has ended: "
                                    f"{session.close_reason}").reply())
            await ws.close(1000, "session ended")

        pusher = asyncio.create_task(push_stats())
        closed_watch = asyncio.create_task(close_with_session())
        try:
            async for data in ws:
                now = time.monotonic()
                if isinstance(data, bytes) and not session.closed:
                    error = self.audio(session, data, audio_limiter.allow(now))
                    if error is not None and now - last_audio_error >= 1.0:
                        last_audio_error = now  # one error a second at most, not one a frame
                        await send(error.reply())
                    continue
                if not limiter.allow(now):
                    flood_since = now if flood_since is None else flood_since
                    if now - flood_since > FLOOD_CLOSE_S:
                        await ws.close(1008, "message flood")
                        break
                    if now - last_rate_error >= 1.0:
                        last_rate_error = now
                        await send(ControlError(
                            "rate_limited", f"more than {RATE_PER_S:g} messages/s; "
                            "messages are being dropped").reply())
                    continue
                flood_since = None
                if session.closed:
                    await send(ControlError("session_closed", "the session has ended").reply())
                    await ws.close(1000, "session ended")
                    break
                cmd = None
                try:
                    cmd = parse_message(data)
                    reply = self.apply(session, cmd, stats_every)
                except ControlError as e:
                    reply = e.reply()
                await send(reply)
                if cmd is not None and cmd.type == "say" and reply.get("type") == "ack":
                    task = asyncio.create_task(self._say(session, cmd, send))
                    says.add(task)
                    task.add_done_callback(says.discard)
        except ConnectionClosed:
            pass
        finally:
            pusher.cancel()
            closed_watch.cancel()

    @staticmethod
    def audio(session, data: bytes, allowed: bool) -> ControlError | None:
        """One binary frame: PCM for the session's open utterance (see ``audio_start``)."""
        from engines.audio.speech_queue import QueueFull

        if not allowed:
            return ControlError("rate_limited", f"more than {AUDIO_FRAMES_PER_S:g} audio frames/s;"
                                " frames are being dropped (send larger chunks)")
        try:
            session.feed_speech(data)
        except QueueFull as e:
            return ControlError("queue_full", f"{e}; this audio was dropped")
        except ValueError as e:
            if "begin()" in str(e):
                return ControlError("no_audio_stream", "binary frames are audio: send "
                                    "audio_start (rate, channels, format) first")
            return ControlError("bad_audio", str(e))
        return None

    @staticmethod
    async def _say(session, cmd: Command, send) -> None:
        """Speak a ``say``: tell the client when it is queued (or why it failed)."""
        from engines.audio.tts import TTSError

        base: dict[str, Any] = {"v": PROTOCOL_VERSION}
        if cmd.id is not None:
            base["id"] = cmd.id
        try:
            uid, seconds = await session.say(cmd.text, cmd.voice, cmd.emotion, cmd.intensity,
                                             cmd.transition_ms / 1000.0)
        except TTSError as e:
            await send(ControlError("tts_failed", str(e), cmd.id).reply())
            return
        except Exception as e:  # the connection may be gone, or the session closed
            log.warning("say failed: %s", e)
            return
        if uid is None:
            await send({**base, "type": "said", "queued": False, "reason": "interrupted"})
        else:
            await send({**base, "type": "said", "queued": True, "utterance": uid,
                        "duration_ms": round(seconds * 1e3, 1)})

    @staticmethod
    def apply(session, cmd: Command, stats_every: list[float]) -> dict:
        """Carry out a validated command on a session; returns the reply."""
        base: dict[str, Any] = {"v": PROTOCOL_VERSION}
        if cmd.id is not None:
            base["id"] = cmd.id
        if cmd.type in ("set_emotion", "set_intensity"):
            session.set_emotion(cmd.emotion, cmd.intensity, cmd.transition_ms / 1000.0,
                                mix=cmd.mix)
            return {**base, "type": "ack", "for": cmd.type, "emotion": session.emotion.emotion,
                    "mix": session.emotion.mix, "intensity": session.emotion.intensity,
                    "transition_ms": cmd.transition_ms}
        if cmd.type == "audio_start":
            try:
                uid = session.begin_speech(cmd.rate, cmd.channels, cmd.format, cmd.emotion,
                                           cmd.intensity, cmd.transition_ms / 1000.0)
            except ValueError as e:
                raise ControlError("bad_field", str(e), cmd.id) from None
            return {**base, "type": "ack", "for": cmd.type, "utterance": uid}
        if cmd.type == "audio_end":
            queued = session.end_speech()
            return {**base, "type": "ack", "for": cmd.type, "queued_ms": round(queued * 1e3, 1)}
        if cmd.type == "interrupt":
            dropped = session.interrupt()
            return {**base, "type": "ack", "for": cmd.type, "dropped_ms": round(dropped * 1e3, 1)}
        if cmd.type == "say":
            from engines.audio.tts import TTSError, check

            try:
                check(cmd.text, cmd.voice)
            except TTSError as e:
                raise ControlError("bad_field", str(e), cmd.id) from None
            return {**base, "type": "ack", "for": cmd.type}
        if cmd.type == "get_stats":
            return {**base, "type": "stats", "stats": session.stats()}
        if cmd.type == "subscribe_stats":
            stats_every[0] = cmd.interval_ms / 1000.0
            return {**base, "type": "ack", "for": cmd.type, "interval_ms": cmd.interval_ms}
        return {**base, "type": "pong", "server_time": time.time()}
