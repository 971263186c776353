"""The web page (client_web/) in headless Firefox (Debian's firefox-esr) against ``etf serve``.

Playwright cannot drive a stock Firefox, so the browser is driven over Mozilla's Marionette
protocol (the ``marionette_driver`` package). Firefox's fake microphone plays a tone; the test
checks the whole path a Firefox user takes: getUserMedia -> WebRTC offer -> avatar video back
-> control WebSocket (emotion change, pushed stats) -> Stop.

Skipped when ``firefox-esr`` or ``marionette_driver`` is missing. Video frames grabbed in the
page (before and after an emotion change) and a page screenshot are copied to
/tmp/firefox_shots/.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from served import etf_server, gray, grey_diff, kept_shots, upper_face

FIREFOX = shutil.which("firefox-esr")
REPO = Path(__file__).resolve().parents[1]
SHOTS_COPY = Path("/tmp/firefox_shots")

if FIREFOX is None:
    pytest.skip("firefox-esr is not installed", allow_module_level=True)
marionette_mod = pytest.importorskip("marionette_driver.marionette",
                                     reason="marionette_driver is not installed",
                                     exc_type=ImportError)

pytestmark = pytest.mark.slow

#: A fresh profile: no first-run pages, telemetry, updates or other network services (only
#: localhost is reachable), media without prompts, and Marionette on a port Firefox picks and
#: writes to <profile>/MarionetteActivePort.
PREFS: dict[str, object] = {
    "marionette.port": 0,
    # Fake devices: the microphone is a tone; no permission prompt.
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    # The site holds the microphone permission, as after a user's "Allow". Without it Firefox
    # hides its host addresses behind mDNS names (<uuid>.local) that the server's ICE stack
    # does not resolve here, and the media connection fails.
    "permissions.default.microphone": 1,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.page": 0,
    "browser.startup.homepage": "about:blank",
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "about:blank",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.newtabpage.enabled": False,
    "browser.tabs.warnOnClose": False,
    "browser.sessionstore.resume_from_crash": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.auto": False,
    "app.update.checkInstallTime": False,
    "app.normandy.enabled": False,
    "extensions.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "browser.region.network.url": "",
    "browser.search.update": False,
    "services.settings.server": "data:,#remote-settings-off",
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "dom.push.connection.enabled": False,
}


def _wait(check: Callable[[], object], timeout: float, what: str,
          detail: Callable[[], str] = lambda: "") -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{detail()}")
        time.sleep(0.1)


def _stop_process(proc: subprocess.Popen, sig: int, group: bool = False) -> None:
    """Signal ``proc`` (its process group when ``group``), then kill it if it lingers."""
    if proc.poll() is not None:
        return
    send = (lambda s: os.killpg(proc.pid, s)) if group else proc.send_signal
    try:
        send(sig)
        proc.wait(8)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


# ----- the browser ----------------------------------------------------------------------


@contextmanager
def firefox(tmp: Path, timeout: float = 30.0):
    """Headless firefox-esr on a fresh profile and a Marionette session to it; Firefox and
    all its child processes are ended on exit, also on failure."""
    profile = tmp / "profile"
    profile.mkdir()
    (profile / "user.js").write_text(
        "".join(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in PREFS.items()))
    log = tmp / "firefox.log"
    env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_HEADLESS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", str(profile),
             "--width", "1280", "--height", "900", "about:blank"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    client = None
    try:
        def port() -> int:
            if proc.poll() is not None:
                pytest.fail(f"firefox exited with {proc.returncode}:\n"
                            + log.read_text(errors="replace")[-3000:])
            f = profile / "MarionetteActivePort"
            text = f.read_text().strip() if f.is_file() else ""
            return int(text) if text.isdigit() else 0

        active = _wait(port, timeout, "Marionette to listen",
                       lambda: log.read_text(errors="replace")[-3000:])
        client = marionette_mod.Marionette(host="127.0.0.1", port=active,
                                           startup_timeout=int(timeout))
        client.start_session(timeout=timeout)
        client.timeout.script = 20
        client.timeout.page_load = 20
        yield client
    finally:
        if client is not None and client.session is not None:
            try:
                client.delete_session()
            except Exception:  # the browser may already be gone
                pass
        _stop_process(proc, signal.SIGTERM, group=True)


class Page:
    """The page's globals (``window.etf``) through Marionette, with a console recorder."""

    RECORDER = """
        if (!window.__etfLog) {
          window.__etfLog = [];
          for (const level of ["info", "warn", "error", "log"]) {
            const orig = console[level].bind(console);
            console[level] = (...a) => { window.__etfLog.push(level + ": " + a.join(" "));
                                         orig(...a); };
          }
          window.addEventListener("error", (e) => window.__etfLog.push("pageerror: " +
                                                                          e.message));
          window.addEventListener("unhandledrejection", (e) => window.__etfLog.push(
            "unhandledrejection: " + e.reason));
        }
    """

    def __init__(self, client, server_log: Path) -> None:
        self.m = client
        self.server_log = server_log

    def js(self, body: str, *args):
        """Run ``body`` in the page's own global (sandbox=None: ``window.etf`` is visible)."""
        return self.m.execute_script(body, script_args=args, sandbox=None)

    def value(self, expr: str):
        return self.js(f"return ({expr});")

    def open(self, url: str) -> None:
        self.m.navigate(url)
        _wait(lambda: self.value("typeof window.etf === 'object'"), 10, "window.etf")
        self.js(self.RECORDER)

    def click(self, testid: str) -> None:
        self.js("document.querySelector(`[data-testid=\"${arguments[0]}\"]`).click();", testid)

    def detail(self) -> str:
        try:
            state = self.value("{state: window.etf.state, lastError: window.etf.lastError,"
                               " decoded: window.etf.framesDecoded(), log: window.__etfLog}")
        except Exception as e:  # the page or browser is gone
            state = f"<page unavailable: {e}>"
        server = self.server_log.read_text(errors="replace")[-2000:]
        return f"page: {state}\n--- server log ---\n{server}"

    def wait(self, expr: str, timeout: float, what: str | None = None):
        return _wait(lambda: self.value(expr), timeout, what or expr, self.detail)

    def grab(self, n: int, gap_s: float) -> list[bytes]:
        """``n`` PNG frames drawn from the <video> into a canvas, ``gap_s`` apart."""
        out = []
        for i in range(n):
            if i:
                time.sleep(gap_s)
            url = self.value("""(() => {
                const v = document.getElementById('avatar');
                const c = document.createElement('canvas');
                c.width = v.videoWidth; c.height = v.videoHeight;
                c.getContext('2d').drawImage(v, 0, 0);
                return c.toDataURL('image/png'); })()""")
            assert url.startswith("data:image/png;base64,"), url[:60]
            out.append(base64.b64decode(url.split(",", 1)[1]))
        return out


# ----- image comparison -----------------------------------------------------------------


def _face(pngs: list[bytes]) -> np.ndarray:
    return upper_face([gray(p) for p in pngs])


# ----- the test -------------------------------------------------------------------------


@pytest.fixture
def shots(tmp_path) -> Iterator[Path]:
    with kept_shots(tmp_path, SHOTS_COPY) as out:
        yield out


def test_firefox_live_session_emotion_stats_and_stop(tmp_path, shots):
    with etf_server(tmp_path) as server, firefox(tmp_path) as client:
        url, server_log = server.url, server.log
        width, height = server.health()["size"]
        page = Page(client, server_log)
        page.open(url)
        assert "Firefox" in page.value("navigator.userAgent")
        assert page.value("window.etf.state") == "idle"

        page.click("start")
        page.wait("window.etf.state === 'connected'", 20)
        page.wait("window.etf.framesDecoded() > 25", 15, "25 decoded frames")
        n0 = page.value("window.etf.framesDecoded()")
        time.sleep(1.0)
        n1 = page.value("window.etf.framesDecoded()")
        assert n1 - n0 >= 10, f"only {n1 - n0} frames decoded in 1 s\n{page.detail()}"
        size = page.value("[document.getElementById('avatar').videoWidth,"
                          " document.getElementById('avatar').videoHeight]")
        assert size == [width, height] and width == 512, size
        assert page.value("document.getElementById('status').textContent") == "Live"
        assert page.value("window.etf.lastError") is None, page.detail()

        # Stats pushed by the server over the control channel, and the browser's own.
        page.wait("parseFloat(document.getElementById('stat-fps').textContent) > 0", 10,
                  "a nonzero server fps in the stats panel")
        page.wait("parseFloat(document.getElementById('stat-rx-fps').textContent) > 0", 10,
                  "a nonzero received fps in the stats panel")
        server_fps = page.value("document.getElementById('stat-fps').textContent")

        # Emotion: the noise between two neutral sets first, then neutral -> surprise.
        page.wait("window.etf.confirmedEmotion === 'neutral'", 5)
        neutral_a = page.grab(3, 0.15)
        neutral_b = page.grab(3, 0.15)
        page.click("emotion-surprise")
        page.wait("window.etf.confirmedEmotion === 'surprise'", 5,
                  "the server's ack of 'surprise'")
        time.sleep(1.0)  # transition (250 ms) + pipeline delay + the jitter buffer
        surprise = page.grab(3, 0.15)
        (shots / "ff-1-neutral.png").write_bytes(neutral_a[0])
        (shots / "ff-2-surprise.png").write_bytes(surprise[0])
        face_a, face_b, face_s = _face(neutral_a), _face(neutral_b), _face(surprise)
        metrics = {"noise": grey_diff(face_a, face_b),
                   "noise_single_frames": grey_diff(_face(neutral_a[:1]), _face(neutral_a[1:2])),
                   "neutral_surprise": grey_diff(face_a, face_s)}
        (shots / "ff-emotion_metrics.json").write_text(json.dumps(metrics, indent=1))
        print("firefox face differences (grey levels):",
              {k: round(v, 2) for k, v in metrics.items()}, "server fps:", server_fps)
        assert metrics["neutral_surprise"] > max(2.5 * metrics["noise"], 6.0), metrics
        pressed = page.value("[...document.querySelectorAll("
                             "'#emotions button[aria-pressed=true]')].map(b => b.dataset.emotion)")
        assert pressed == ["surprise"]
        page.wait("document.getElementById('stat-emotion').textContent.startsWith('surprise')",
                  5, "the stats panel to show the server's emotion")
        (shots / "ff-3-page.png").write_bytes(client.screenshot(format="binary", full=True))

        page.click("stop")
        page.wait("window.etf.state === 'idle'", 5)
        assert page.value("document.getElementById('avatar').srcObject === null")
        assert page.value("!document.getElementById('start').disabled")
        # The server sees the session end (peer closed) within a few seconds.
        _wait(lambda: server.health()["sessions"] == 0, 10, "/health to report 0 sessions",
              page.detail)
