"""The HTTP side of ``etf serve``: the page, ``POST /offer``, ``/health``, ``/metrics``.

Each accepted offer gets one aiortc peer connection and one :class:`Session`; the control
channel (``server/control.py``) runs beside it on its own port. Everything a client can
send is validated here with a JSON error body (4xx), and a failure in one session never
touches another. The server writes no files: nothing a client sends reaches the disk.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from engines.face.identity import Identity
from server.control import ControlServer, token_ok
from server.session import CapacityError, Session, SessionConfig, SessionRegistry
from server.stats import prometheus_text

log = logging.getLogger("etf.server")

CLIENT_DIR = Path(__file__).resolve().parent.parent / "client_web"
MAX_OFFER_BYTES = 64 * 1024
MAX_SDP_CHARS = 32 * 1024


@dataclass(frozen=True)
class ServerConfig:
    """Server-wide settings (filled by ``etf serve``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    control_port: int | None = None  # default: port + 1 (any free port when port is 0)
    token: str | None = None
    max_sessions: int = 4
    workers: int = 0  # engine threads; 0 = one per CPU core
    #: Default engine: render each session in its own process (server.render_worker), so
    #: sessions do not share one GIL; False renders on the engine threads.
    render_processes: bool = True
    #: Refuse a newcomer unless the machine's free CPU exceeds one session's measured cost
    #: over this (render processes), or while a running session's p99 compute per frame is
    #: over this fraction of the frame period (render threads); 0 = never on these grounds.
    admit_headroom: float = 0.75
    #: Behind a reverse proxy: the public base of the control channel announced to clients
    #: (e.g. ``wss://avatar.example.com/etf-control``) and the page origins allowed on it.
    public_control_url: str | None = None
    allowed_origins: tuple[str, ...] = ()


class PortError(OSError):
    """A listening port could not be opened; the message names which one and why."""

    def __init__(self, host: str, port: int, what: str, option: str, cause: OSError) -> None:
        msg = f"cannot listen on {host}:{port} ({what}): {cause.strerror or cause}"
        if cause.errno == errno.EADDRINUSE:
            msg += f"; another program holds port {port}: choose another with {option}"
        super().__init__(cause.errno, msg)


#: Seconds a refused offer is told to wait (503 ``Retry-After``): the CPU meter's window,
#: after which a session that ended has left the measurement.
RETRY_AFTER_S = 5


def _error(status: int, code: str, message: str,
           retry_after: int | None = None) -> web.Response:
    body = {"error": code, "message": message}
    headers = {}
    if retry_after is not None:
        body["retry_after_s"] = retry_after
        headers["Retry-After"] = str(retry_after)
    return web.json_response(body, status=status, headers=headers)


class AvatarServer:
    """Owns the engines' shared state, the sessions, the peers and both listeners."""

    def __init__(self, identity: Identity, config: ServerConfig, session: SessionConfig,
                 warp=None, neural=None) -> None:
        self.config = config
        self.session_config = session
        workers = config.workers or max(2, os.cpu_count() or 2)
        if config.render_processes and neural is None:
            # each session's thread mostly waits on its render process
            workers = max(workers, config.max_sessions + 1)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="etf-engine")
        # neural: engines.neural.live.NeuralEngines (owned by the caller), else the default
        self.registry = SessionRegistry(identity, session, self.executor, config.max_sessions,
                                        warp=warp, neural=neural,
                                        admit_headroom=config.admit_headroom,
                                        render_processes=config.render_processes)
        self.identity = identity
        self.peers: dict[str, object] = {}
        self.control: ControlServer | None = None
        self.control_port: int | None = None
        self.http_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task] = set()
        #: the peers' closes, spawned as their sessions close (stop() waits for them)
        self._closing: set[asyncio.Task] = set()

    # ----- HTTP ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_OFFER_BYTES)
        app.router.add_get("/", self.index)
        app.router.add_post("/offer", self.offer)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        if CLIENT_DIR.is_dir():
            app.router.add_static("/static/", CLIENT_DIR, follow_symlinks=False)
        return app

    async def index(self, request: web.Request) -> web.StreamResponse:
        page = CLIENT_DIR / "index.html"
        if not page.is_file():
            return _error(404, "no_page", "client_web/index.html is missing from this install")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    def _authorised(self, request: web.Request, body_token: str | None = None) -> bool:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else body_token
        return token_ok(self.config.token, given)

    async def health(self, request: web.Request) -> web.Response:
        h, w = self.identity.photo.shape[:2]
        return web.json_response({
            "status": "ok",
            "sessions": len(self.registry.sessions),
            "max_sessions": self.registry.max_sessions,
            "token_required": bool(self.config.token),
            "fps": self.session_config.fps,
            "size": [w, h],
            "identity": self.identity.source,
        })

    async def metrics(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, "unauthorized", "send Authorization: Bearer <token>")
        text = prometheus_text(self.registry.server_stats(),
                               [s.stats(public=True) for s in self.registry.sessions.values()])
        from prometheus_client import CONTENT_TYPE_LATEST

        return web.Response(body=text.encode("utf-8"),
                            headers={"Content-Type": CONTENT_TYPE_LATEST,
                                     "X-Content-Type-Options": "nosniff"})

    async def offer(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from server.tracks import lean_audio_jitter_buffer

        if request.content_type != "application/json":
            return _error(415, "bad_content_type", "POST /offer takes application/json")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.registry.refused["too_large"] += 1
            return _error(413, "too_large", f"offers are limited to {MAX_OFFER_BYTES} bytes")
        try:
            params = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(400, "bad_json", f"the body is not valid JSON: {e}")
        if not isinstance(params, dict):
            return _error(400, "bad_json", "the body must be a JSON object")
        token = params.get("token")
        if not self._authorised(request, token if isinstance(token, str) else None):
            self.registry.refused["token"] += 1
            return _error(401, "unauthorized", "this server needs a valid token")
        sdp, kind = params.get("sdp"), params.get("type")
        if kind != "offer":
            return _error(400, "bad_offer", 'type must be "offer"')
        if not isinstance(sdp, str) or not sdp.strip():
            return _error(400, "bad_offer", "sdp must be a non-empty string")
        if len(sdp) > MAX_SDP_CHARS:
            return _error(413, "too_large", f"sdp is longer than {MAX_SDP_CHARS} characters")
        try:  # checked again by create(); here it spares parsing the SDP
            self.registry.check_capacity()
        except CapacityError as e:
            return _error(503, "at_capacity", str(e), RETRY_AFTER_S)
        overload = self.registry.overloaded()
        if overload:
            self.registry.refused["overloaded"] += 1
            return _error(503, "overloaded", overload, RETRY_AFTER_S)

        pc = RTCPeerConnection()
        remote_tracks = []
        pc.on("track", remote_tracks.append)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as e:  # aiortc raises many types for bad SDP
            await pc.close()
            self.registry.refused["bad_sdp"] += 1
            return _error(400, "bad_sdp", f"the offer's SDP was rejected: {e or type(e).__name__}")
        lean_audio_jitter_buffer(pc)
        transceivers = pc.getTransceivers()
        video = [t for t in transceivers if t.kind == "video"
                 and getattr(t, "_offerDirection", "sendonly") in ("sendonly", "sendrecv")]
        if not video:
            await pc.close()
            self.registry.refused["bad_sdp"] += 1
            return _error(400, "no_video", "the offer must ask to receive video "
                          "(a recvonly or sendrecv video m-line)")
        try:
            session = await self.registry.create()
        except CapacityError as e:
            await pc.close()
            return _error(503, "at_capacity", str(e), RETRY_AFTER_S)
        return await self._start_peer(pc, session, remote_tracks, request)

    async def _start_peer(self, pc, session: Session, remote_tracks, request) -> web.Response:
        from server.tracks import AvatarVideoTrack, DelayedAudioTrack, read_inbound_audio

        self.peers[session.id] = pc
        session.on_close.append(lambda s: self._spawn(self._close_peer(s.id), self._closing))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await session.close(f"peer connection {pc.connectionState}")

        try:
            session.video_sender = pc.addTrack(AvatarVideoTrack(session))
            if any(t.kind == "audio" and getattr(t, "_offerDirection", "sendonly")
                   in ("sendonly", "sendrecv") for t in pc.getTransceivers()):
                pc.addTrack(DelayedAudioTrack(session))
            for track in remote_tracks:
                if track.kind == "audio":
                    self._spawn(read_inbound_audio(track, session))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as e:
            await session.close("negotiation failed")
            return _error(400, "negotiation_failed", f"could not answer the offer: {e}")
        self._spawn(self._watchdog(session, pc))
        if self.config.public_control_url:
            base = self.config.public_control_url.rstrip("/")
        else:
            host = request.host.rsplit(":", 1)[0] if request.host else self.config.host
            base = f"{'wss' if request.secure else 'ws'}://{host}:{self.control_port}"
        return web.json_response({
            "sdp": pc.localDescription.sdp,
            "type": pc.localDescription.type,
            **session.describe(),
            "control_url": f"{base}/control/{session.id}",
        })

    async def _watchdog(self, session: Session, pc) -> None:
        """Close sessions whose peer never connects or stops sending anything."""
        last_rx, last_change = -1, time.monotonic()
        while not session.closed:
            await asyncio.sleep(WATCHDOG_S)
            now = time.monotonic()
            if pc.connectionState != "connected":
                if now - session.created > self.session_config.connect_timeout_s and \
                        session.t0 is None:
                    await session.close("peer never connected")
                continue
            rx = _packets_received(pc)
            if rx != last_rx:
                last_rx, last_change = rx, now
            elif now - last_change > self.session_config.idle_timeout_s:
                await session.close(
                    f"nothing received from the peer for {self.session_config.idle_timeout_s:g} s"
                )

    async def _close_peer(self, sid: str) -> None:
        pc = self.peers.pop(sid, None)
        if pc is not None:
            await pc.close()

    def _spawn(self, coro, also: set[asyncio.Task] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if also is not None:  # a group of tasks someone waits for (stop(): the peers' closes)
            also.add(task)
            task.add_done_callback(also.discard)

    # ----- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except OSError as e:
            raise PortError(self.config.host, self.config.port, "HTTP", "--port", e) from None
        self.http_port = site._server.sockets[0].getsockname()[1]
        self.control = ControlServer(self.registry, self.config.token, self.http_port,
                                     self.config.allowed_origins)
        want = self.config.control_port
        if want is None:  # beside the HTTP port; with an ephemeral one, any free port (the
            # next one up may be anyone's: a test run once found it taken)
            want = 0 if self.config.port == 0 else self.http_port + 1
        try:
            self.control_port = await self.control.start(self.config.host, want)
        except OSError as e:
            await self._runner.cleanup()
            raise PortError(self.config.host, want, "control WebSocket", "--control-port",
                            e) from None

    async def stop(self) -> None:
        await self.registry.close_all()
        # Each closed session spawned its peer's close: let those finish rather than
        # cancel them half-way (aiortc's transports then fail later, at exit), and close
        # each peer once: the ones no session closed are popped and closed here.
        await asyncio.gather(*self._closing, return_exceptions=True)
        while self.peers:
            await self.peers.popitem()[1].close()
        if self.control is not None:
            await self.control.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        for task in list(self._tasks):
            task.cancel()
        self.registry.shutdown()
        self.executor.shutdown(wait=False, cancel_futures=True)


#: How often a session's watchdog looks at its peer's packet count.
WATCHDOG_S = 0.5


def _packets_received(pc) -> int:
    """Packets the peer's DTLS transports have delivered (RTP, RTCP, data)."""
    total = 0
    for t in pc.getTransceivers():
        transport = t.receiver.transport
        if transport is None:
            continue
        for stat in transport._get_stats().values():
            total += getattr(stat, "packetsReceived", 0) or 0
    return total


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's malloc arenas (True if it took). glibc gives threads that allocate at
    the same time arenas of their own (up to 8 per core), and the server's threads (aiortc's
    encoders and decoders, the executors) come and go with sessions, so its memory grew in
    ~11 MB steps for minutes (benchmarks/live_soak.py, this 2-core AMD EPYC, one session and
    a peer killed every 10 s for 4 min: RSS +2.7% after the first minute, 502 MB; capped at
    two arenas: +0.4%, 451 MB, the same CPU). ``arenas``: default
    ``server.render_worker.MALLOC_ARENAS``, as the render processes. Other C libraries:
    nothing to do."""
    import ctypes

    from server.render_worker import MALLOC_ARENAS

    arenas = MALLOC_ARENAS if arenas is None else arenas

    try:
        return ctypes.CDLL(None).mallopt(-8, int(arenas)) == 1  # M_ARENA_MAX
    except (AttributeError, OSError):
        return False


async def serve_forever(identity: Identity, config: ServerConfig, session: SessionConfig,
                        ready: asyncio.Event | None = None, neural=None) -> None:
    """Run ``etf serve`` until cancelled (Ctrl-C)."""
    import signal

    limit_malloc_arenas()
    server = AvatarServer(identity, config, session, neural=neural)
    await server.start()
    plural = "s" if config.max_sessions != 1 else ""
    print(f"etf serve: open http://{config.host}:{server.http_port}/ "
          f"(control WebSocket on port {server.control_port}; "
          f"{'token required' if config.token else 'no token'}; "
          f"up to {config.max_sessions} session{plural} at {session.fps:g} fps)", flush=True)
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # systemd/docker stop: close sessions cleanly
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        await server.stop()


class BackgroundServer:
    """An :class:`AvatarServer` on its own event loop in a daemon thread.

    For tests, benchmarks and ``etf live`` (whose main thread owns the window):

        with BackgroundServer(identity, ServerConfig(port=0), SessionConfig()) as srv:
            url = srv.url
    """

    def __init__(self, identity: Identity, config: ServerConfig, session: SessionConfig,
                 warp=None, neural=None) -> None:
        import threading

        self.server = AvatarServer(identity, config, session, warp=warp, neural=neural)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="etf-server",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.server.config.host}:{self.server.http_port}"

    def call(self, coro, timeout: float = 30.0):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
