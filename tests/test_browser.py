"""The web page (client_web/) in headless Chromium against a real ``etf serve``.

Chromium's fake microphone plays a flite sentence, so the whole path runs as a user sees it:
getUserMedia -> WebRTC offer -> avatar video back -> control WebSocket (emotions, stats).
Skipped when /usr/bin/chromium or the ``playwright`` package is missing (no browser is ever
downloaded). Screenshots go to the test's tmp dir and are copied to /tmp/browser_shots/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import synth_speech
from served import INNER_FACE_BOX as INNER
from served import etf_server, gray, grey_diff, kept_shots, upper_face

CHROMIUM = Path("/usr/bin/chromium")
SHOTS_COPY = Path("/tmp/browser_shots")

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed",
                               exc_type=ImportError)

pytestmark = pytest.mark.slow

#: Chromium flags for a root user on a machine with no network, plus the fake media devices.
BASE_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    "--disable-dev-shm-usage",
]


# ----- the browser ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """A flite sentence as 16-bit PCM WAV (Chromium resamples the fake capture file itself;
    16 kHz works)."""
    from engines.media.audio_io import save_wav

    tmp = tmp_path_factory.mktemp("speech")
    pcm = synth_speech("Hello, I am a talking face. I can speak with many different emotions.",
                       tmp / "speech.wav", pad_s=0.3)
    path = tmp / "speech16k.wav"
    save_wav(path, pcm, 16000)
    return path


@pytest.fixture(scope="module")
def playwright():
    with sync_api.sync_playwright() as p:
        yield p


def _launch(playwright, *flags: str):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                      args=[*BASE_FLAGS, *flags])


@pytest.fixture(scope="module")
def browser(playwright, speech_wav):
    """Chromium whose microphone is granted and plays ``speech_wav`` in a loop."""
    b = _launch(playwright, "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={speech_wav}")
    yield b
    b.close()


@pytest.fixture
def shots(tmp_path) -> Iterator[Path]:
    with kept_shots(tmp_path, SHOTS_COPY) as out:
        yield out


@contextmanager
def open_page(browser, url: str):
    """A fresh page; on failure its console log is attached to the error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        page.goto(url)
        page.wait_for_function("window.etf !== undefined")
        yield page
    except Exception as e:
        raise AssertionError(f"{e}\n--- browser console ---\n" + "\n".join(console[-30:])) from e
    finally:
        context.close()


def _message(page) -> tuple[str, str]:
    """(code, text) of the visible message ('' when none is shown)."""
    box = page.get_by_test_id("message")
    if not box.is_visible():
        return "", ""
    return box.get_attribute("data-code") or "", box.inner_text()


def _wait_message(page, code: str, timeout_ms: float = 15000) -> str:
    page.wait_for_function(
        "code => { const m = document.getElementById('message');"
        " return !m.hidden && m.dataset.code === code; }", arg=code, timeout=timeout_ms)
    got, text = _message(page)
    assert got == code
    return text




def _grab(page, n: int, gap_s: float, shots: Path | None = None,
          name: str = "") -> list[np.ndarray]:
    video = page.get_by_test_id("avatar-video")
    out = []
    for i in range(n):
        png = video.screenshot()
        if shots is not None and i == 0:
            (shots / f"{name}.png").write_bytes(png)
        out.append(gray(png))
        time.sleep(gap_s)
    return out


def _choose(page, emotion: str) -> None:
    page.get_by_test_id(f"emotion-{emotion}").click()
    page.wait_for_function("e => window.etf.confirmedEmotion === e", arg=emotion, timeout=5000)
    # Transition (250 ms) + pipeline delay (~300 ms) + the browser's jitter buffer.
    time.sleep(1.0)


# ----- tests ----------------------------------------------------------------------------


def test_live_session_video_emotions_and_stats(tmp_path, browser, shots):
    with etf_server(tmp_path) as server, open_page(browser, server.url) as page:
        width, height = server.health()["size"]
        assert not page.get_by_test_id("token").is_visible()  # open server: no token field
        assert page.get_by_test_id("hear").is_checked() is False
        assert page.evaluate("document.getElementById('avatar').muted") is True
        page.get_by_test_id("hear").check()
        assert page.evaluate("document.getElementById('avatar').muted") is False
        page.get_by_test_id("hear").uncheck()

        page.get_by_test_id("start").click()
        page.wait_for_function("window.etf.state === 'connected'", timeout=20000)
        page.wait_for_function("window.etf.framesDecoded() >= 25", timeout=15000)
        n0 = page.evaluate("window.etf.framesDecoded()")
        time.sleep(1.0)
        n1 = page.evaluate("window.etf.framesDecoded()")
        assert n1 - n0 >= 10, f"only {n1 - n0} frames decoded in 1 s"
        size = page.evaluate("[document.getElementById('avatar').videoWidth,"
                             " document.getElementById('avatar').videoHeight]")
        assert size == [width, height]
        assert page.get_by_test_id("status").inner_text() == "Live"

        # Stats: pushed by the server over the control channel, and the browser's own.
        page.wait_for_function(
            "parseFloat(document.getElementById('stat-fps').textContent) > 0", timeout=10000)
        page.wait_for_function(
            "parseFloat(document.getElementById('stat-rx-fps').textContent) > 0", timeout=10000)
        # The fake microphone's sentence reaches the server's voice detector.
        page.wait_for_function(
            "document.getElementById('stat-speech').textContent === 'speaking'", timeout=10000)
        assert page.locator("#latency-body tr").count() >= 3

        # Emotions: noise between two neutral sets first, then neutral -> surprise -> angry.
        # Upper face only (the mouth moves with speech); the emotions learned from MEAD lift
        # the brows in happy too, so the contrast pair is surprise (brows up, forehead lines)
        # and angry (brows down, furrow).
        neutral_a = _grab(page, 5, 0.1, shots, "1-neutral")
        neutral_b = _grab(page, 5, 0.1)
        _choose(page, "surprise")
        surprise = _grab(page, 5, 0.1, shots, "2-surprise")
        _choose(page, "angry")
        angry = _grab(page, 5, 0.1, shots, "3-angry")
        face_a, face_b = upper_face(neutral_a, box=INNER), upper_face(neutral_b, box=INNER)
        face_s, face_h = upper_face(surprise, box=INNER), upper_face(angry, box=INNER)
        noise = grey_diff(face_a, face_b)
        single = grey_diff(upper_face(neutral_a[:1], box=INNER),
                           upper_face(neutral_a[1:2], box=INNER))
        to_surprise, to_angry = grey_diff(face_a, face_s), grey_diff(face_s, face_h)
        neutral_angry = grey_diff(face_a, face_h)
        metrics = {"noise": noise, "noise_single_frames": single, "neutral_surprise": to_surprise,
                   "surprise_angry": to_angry, "neutral_angry": neutral_angry}
        (shots / "emotion_metrics.json").write_text(json.dumps(metrics, indent=1))
        print("face differences (grey levels):", {k: round(v, 2) for k, v in metrics.items()})
        # Inside the hairline: in the wider FACE_BOX the head's own turns between the two
        # neutral sets moved the hair's edge enough to read 5-8 (CI: noise 5.2, neutral ->
        # surprise 12.9); here four runs read noise 4.1-6.0 against surprise 17.7-21.2
        # (an emotion that changed nothing would read ~1x the noise).
        floor = max(2.0 * noise, 6.0)
        assert to_surprise > floor, metrics
        assert to_angry > floor, metrics

        pressed = page.locator("#emotions button[aria-pressed=true]")
        assert pressed.count() == 1 and pressed.get_attribute("data-emotion") == "angry"
        page.wait_for_function(
            "document.getElementById('stat-emotion').textContent.startsWith('angry')",
            timeout=5000)

        # Dragging the intensity slider (100 input events) sends at most ~10 messages/s,
        # the final value last.
        before = page.evaluate("window.etf.sent.set_intensity || 0")
        drag_s = page.evaluate("""async () => {
            const s = document.getElementById('intensity');
            const t0 = performance.now();
            for (let i = 0; i <= 100; i++) {
                s.value = String(1 - i * 0.006);
                s.dispatchEvent(new Event('input', {bubbles: true}));
                await new Promise(r => setTimeout(r, 10));
            }
            return (performance.now() - t0) / 1000;
        }""")
        time.sleep(0.4)
        sent = page.evaluate("window.etf.sent.set_intensity || 0") - before
        assert 0.5 * drag_s <= sent <= 10 * drag_s + 2, f"{sent} messages in {drag_s:.2f} s"
        page.wait_for_function("Math.abs(window.etf.confirmedIntensity - 0.4) < 1e-6",
                               timeout=3000)
        assert page.get_by_test_id("intensity-value").inner_text() == "0.40"

        # A control error from the server is shown with its text; the session goes on.
        assert page.evaluate("window.etf.sendControl({type: 'set_emotion', emotion: 'bored'})")
        text = _wait_message(page, "control_error", 5000)
        assert "bored" in text and "bad_field" in text
        assert page.evaluate("window.etf.state") == "connected"

        # A healthy stream: the dropped / late counter is not red, or not for long (it turns
        # red for a stats interval with one late frame in 25, which a 2-core CI box running
        # the browser too shows now and then just after the burst of intensity messages).
        page.wait_for_function(
            "!document.getElementById('stat-dropped').classList.contains('bad')", timeout=4000)

        page.screenshot(path=str(shots / "4-page.png"))
        page.get_by_test_id("stop").click()
        page.wait_for_function("window.etf.state === 'idle'", timeout=5000)
        assert page.evaluate("document.getElementById('avatar').srcObject") is None
        # Stop clears the stats: nothing of the ended session stays on screen.
        time.sleep(1.5)
        for sid in ("stat-fps", "stat-rx-fps", "stat-sent", "stat-dropped", "stat-emotion"):
            assert page.get_by_test_id(sid).inner_text() == "–", sid
        assert page.locator("#latency-body td.empty").count() == 1
        assert page.get_by_test_id("start").is_enabled()
        # The server sees the session end (peer closed) within a few seconds.
        end = time.monotonic() + 10
        while server.health()["sessions"] and time.monotonic() < end:
            time.sleep(0.2)
        assert server.health()["sessions"] == 0


def test_token_refused_then_accepted_and_capacity(tmp_path, browser, speech_wav, shots):
    token = "s3cret-t0ken"
    with etf_server(tmp_path, "--token", token, "--max-sessions", "1") as server:
        with open_page(browser, server.url) as page:
            page.get_by_test_id("token").wait_for(state="visible", timeout=5000)
            page.get_by_test_id("start").click()
            text = _wait_message(page, "token_refused")
            assert "token" in text.lower() and "401" in text
            assert page.evaluate("window.etf.state") == "failed"
            assert page.evaluate("document.activeElement.id") == "token"
            page.screenshot(path=str(shots / "5-token-refused.png"))

            page.get_by_test_id("token").fill("wrong")
            page.get_by_test_id("start").click()
            page.wait_for_function("window.etf.state === 'failed'", timeout=15000)
            code, text = _message(page)
            assert code == "token_refused" and "did not accept" in text

        # The right token from the URL's fragment, and the "Speak a file" source.
        with open_page(browser, f"{server.url}#token={token}") as page:
            assert page.get_by_test_id("token").input_value() == token
            page.get_by_test_id("source-file").check()
            page.get_by_test_id("file").set_input_files(str(speech_wav))
            page.get_by_test_id("loop").check()
            page.get_by_test_id("emotion-sad").click()  # chosen before Start: sent on connect
            page.get_by_test_id("start").click()
            page.wait_for_function("window.etf.state === 'connected'", timeout=20000)
            page.wait_for_function("window.etf.framesDecoded() >= 10", timeout=15000)
            # The control channel got the token too: stats arrive and the emotion was applied.
            page.wait_for_function("window.etf.confirmedEmotion === 'sad'", timeout=5000)
            page.wait_for_function(
                "window.etf.serverStats && window.etf.serverStats.speech === true", timeout=10000)
            assert _message(page)[0] == ""
            # A second viewer is refused: the server takes one session only.
            with open_page(browser, f"{server.url}#token={token}") as second:
                second.get_by_test_id("start").click()
                assert "capacity" in _wait_message(second, "at_capacity")
            page.get_by_test_id("stop").click()
            page.wait_for_function("window.etf.state === 'idle'", timeout=5000)


def test_error_messages_microphone_and_unreachable(tmp_path, browser, playwright, shots):
    with etf_server(tmp_path) as server:
        # Permission prompts refused (no fake-UI flag: Playwright dismisses the prompt).
        denied = _launch(playwright, "--use-fake-device-for-media-stream")
        try:
            with open_page(denied, server.url) as page:
                page.get_by_test_id("start").click()
                assert "permission denied" in _wait_message(page, "mic_denied").lower()
        finally:
            denied.close()
        # No capture device at all.
        no_device = _launch(playwright, "--use-fake-ui-for-media-stream")
        try:
            with open_page(no_device, server.url) as page:
                page.get_by_test_id("start").click()
                assert "no microphone" in _wait_message(page, "no_mic").lower()
        finally:
            no_device.close()

        with open_page(browser, server.url) as page:
            page.wait_for_function("window.etf.state === 'idle'")
            server.stop()
            page.get_by_test_id("start").click()
            text = _wait_message(page, "server_unreachable")
            assert "Cannot reach the avatar server" in text
            assert page.evaluate("window.etf.state") == "failed"
            assert page.get_by_test_id("start").is_enabled()
            page.screenshot(path=str(shots / "6-unreachable.png"))


def test_watch_mode_say_and_interrupt(tmp_path, browser, shots):
    """No microphone: the page watches, types text, the face says it; Interrupt stops it."""
    import io

    from PIL import Image

    from engines.face.face_metrics import mouth_openings

    def mouths(n: int, gap_s: float) -> np.ndarray:
        video = page.get_by_test_id("avatar-video")
        frames = []
        for _ in range(n):
            png = video.screenshot()
            frames.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
            time.sleep(gap_s)
        return mouth_openings(frames)

    with etf_server(tmp_path) as server, open_page(browser, server.url) as page:
        page.get_by_test_id("source-watch").check()
        assert page.get_by_test_id("hear").is_checked(), "watching, the voice is heard"
        assert page.get_by_test_id("say").is_disabled()
        page.get_by_test_id("start").click()
        page.wait_for_function("window.etf.state === 'connected'", timeout=20000)
        page.wait_for_function("window.etf.framesDecoded() >= 25", timeout=15000)
        page.wait_for_function("!document.getElementById('say').disabled", timeout=5000)
        quiet = mouths(6, 0.1)
        page.get_by_test_id("say-text").fill(
            "Hello! I am reading the words you typed, and my mouth moves with them. "
            "This sentence is long enough to be interrupted half way through.")
        page.get_by_test_id("say").click()
        page.wait_for_function(
            "document.getElementById('say-status').textContent.startsWith('queued')",
            timeout=15000)
        page.wait_for_function(
            "document.getElementById('stat-speech').textContent === 'speaking'", timeout=10000)
        page.screenshot(path=str(shots / "watch-say.png"))
        talking = mouths(12, 0.08)
        # a second of speech sampled 12 times: real talking mouths' 90th percentile opening
        # is 0.06-0.22 (the default engine's amplitude follows them)
        assert np.nanmax(talking) > np.nanmax(quiet) + 0.05, (quiet, talking)
        stats = page.evaluate("window.etf.serverStats")
        assert stats["audio"]["received_s"] < 0.5, "watch mode must send no microphone"
        assert stats["speech_queue"]["utterances"] == 1
        page.get_by_test_id("interrupt").click()
        page.wait_for_function(
            "document.getElementById('say-status').textContent === 'interrupted'", timeout=5000)
        page.wait_for_function(
            "document.getElementById('stat-speech').textContent === 'silent'", timeout=5000)
        # the face closes its mouth once the stream catches up (the video and the browser's
        # jitter buffer lag the server's 'silent' by a few hundred ms, more under load),
        # and it stays closed
        closed_by = np.nanmax(quiet) + 0.05
        deadline = time.monotonic() + 3.0
        while np.nanmax(mouths(1, 0.0)) >= closed_by:
            assert time.monotonic() < deadline, "the mouth still moves 3 s after interrupt"
            time.sleep(0.1)
        after = mouths(6, 0.1)
        assert np.nanmax(after) < closed_by, (quiet, after)
        page.wait_for_function("window.etf.serverStats.speech_queue.interrupts === 1",
                               timeout=5000)
