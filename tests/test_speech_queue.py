"""The queue of speech handed over ahead of time, and the in-process avatar API on top."""

from __future__ import annotations

import numpy as np
import pytest
from served import OPENED

from engines.audio.speech_queue import OUT_RATE, QueueFull, SpeechQueue, decode_pcm


def _tone(rate: int, seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _drain(q: SpeechQueue, n: int = 1920) -> tuple[np.ndarray, list]:
    out, tags = [], []
    while True:
        chunk, t = q.take(n)
        if chunk is None:
            return (np.concatenate(out) if out else np.zeros(0, np.float32)), tags
        out.append(chunk)
        tags += t


def test_any_rate_any_chunking_gives_the_same_48k_samples():
    tone = _tone(22050, 1.0)
    i16 = (tone * 32767).astype("<i2")
    whole, pieces = SpeechQueue(), SpeechQueue()
    whole.say(i16, 22050)
    pieces.begin(22050, 1, "s16le")
    for i in range(0, len(i16), 441):
        pieces.push(i16[i:i + 441].tobytes())
    pieces.end()
    a, _ = _drain(whole)
    b, _ = _drain(pieces)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # One second of speech at 48 kHz (the last tick padded with silence), same pitch.
    assert abs(np.count_nonzero(np.abs(a) > 1e-4) - OUT_RATE) < 200
    spectrum = np.abs(np.fft.rfft(a[:OUT_RATE]))
    assert abs(np.argmax(spectrum) - 220) <= 1


def test_stereo_float_and_bad_input():
    st = np.stack([_tone(16000, 0.1), -_tone(16000, 0.1)], axis=1)  # cancels to silence
    assert np.abs(decode_pcm(st.astype("<f4").tobytes(), 2, "f32le")).max() < 1e-6
    with pytest.raises(ValueError, match="whole number"):
        decode_pcm(b"\x00\x01\x02", 1, "s16le")
    nan = np.array([np.nan, 2.0, -np.inf], np.float32)
    assert np.all(np.isfinite(decode_pcm(nan.tobytes(), 1, "f32le")))
    q = SpeechQueue()
    with pytest.raises(ValueError, match="begin"):
        q.push(b"\x00\x00")
    for bad in ({"rate": 4000}, {"rate": 16000, "channels": 3},
                {"rate": 16000, "encoding": "mp3"}):
        with pytest.raises(ValueError):
            q.begin(**bad)


def test_order_tags_priming_interrupt_and_bound():
    q = SpeechQueue(max_s=3.0, prime_ms=80)
    assert q.take(1920) == (None, [])  # nothing queued: the caller uses its live input
    q.say(_tone(16000, 0.5, 200), 16000, tag="first")
    q.say(_tone(16000, 0.5, 400), 16000, tag="second")
    chunk, tags = q.take(1920)
    assert tags == ["first"] and chunk.size == 1920
    out, tags = _drain(q)
    assert tags == ["second"]
    assert abs(out.size + 1920 - OUT_RATE) <= 1920  # one second in all, in order

    # A stream that trickles in waits for prime_ms before it plays, then underflows pad.
    q.begin(48000)
    q.push(np.zeros(960, np.float32) + 0.1)  # 20 ms < 80 ms prime
    assert q.take(1920)[0] is None
    q.push(np.zeros(4800, np.float32) + 0.1)
    assert q.take(1920)[0] is not None

    # Barge-in drops everything queued; the open stream stays open for what follows.
    q.push(np.zeros(48000, np.float32) + 0.1)
    dropped = q.clear()
    assert 1.0 <= dropped <= 1.2 and q.queued_s == 0 and not q.active
    q.push(np.zeros(9600, np.float32) + 0.1)
    assert q.queued_s == pytest.approx(0.2)

    with pytest.raises(QueueFull):
        q.push(np.zeros(4 * OUT_RATE, np.float32))


def test_avatar_stream_pairs_frames_with_their_audio(identity):
    from engines.audio.audio_ingest import NET_RATE
    from engines.avatar import Avatar
    from engines.face.face_metrics import face_box, mouth_openings
    from engines.media.audio_io import load_audio
    from server.cli import builtin_sentence

    avatar = Avatar(identity)
    stream = avatar.stream(fps=25.0, emotion="neutral")
    speech = load_audio(builtin_sentence(), 24000)
    for _ in range(10):  # 0.4 s of idle first
        assert all(np.all(f.audio == 0) for f in stream.advance())
    uid = stream.push_speech((speech * 32767).astype(np.int16), rate=24000, emotion="happy")
    assert uid >= 1 and stream.queued_s > 0
    frames = []
    for _ in range(int(len(speech) / 24000 * 25) + 20):
        frames += [(f.index, f.pts, f.image.copy(), f.audio) for f in stream.advance()]
    idx = np.array([f[0] for f in frames])
    assert np.all(np.diff(idx) == 1)
    assert np.allclose([f[1] for f in frames], idx / 25.0)
    assert all(f[3].size == NET_RATE // 25 for f in frames)
    # The audio a frame carries is the speech of its own 40 ms: the pushed sentence,
    # resampled, starting at the frame whose pts is when it started to play.
    audio = np.concatenate([f[3] for f in frames])
    ref = load_audio(builtin_sentence(), NET_RATE)
    start = int(np.argmax(np.abs(audio) > 1e-3))
    ref_start = int(np.argmax(np.abs(ref) > 1e-3))
    seg = audio[start - ref_start:start - ref_start + len(ref)]
    assert np.corrcoef(seg, ref)[0, 1] > 0.99
    assert stream.emotion.emotion == "happy", "the utterance's emotion applies when it plays"
    # The mouth moves while its own audio is loud, and not before the utterance plays (from
    # then on the happy smile it carries parts the lips a little, as MEAD's smiles do).
    mouth = mouth_openings([f[2] for f in frames], face_box(identity.landmarks_photo))
    rms = np.array([np.sqrt(np.mean(f[3] ** 2)) for f in frames])
    assert np.nanmax(mouth[rms > 0.05]) > OPENED
    plays = (start - ref_start) // (NET_RATE // 25)
    assert np.nanmax(mouth[: max(1, plays - 1)]) < 0.12
    # 0.38-0.40 here depending on the head's idle motion (dlib reads a moving face with a
    # little noise); real talking mouths against their own loudness: median 0.26 over 13
    # people (benchmarks/lipsync_talking.json)
    assert np.corrcoef(np.nan_to_num(mouth), rms)[0, 1] > 0.3
