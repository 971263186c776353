"""Tests for engines.media: audio_io (decoding, resampling) and video_writer (MP4 muxing)."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from engines.media.audio_io import AudioError, audio_duration_s, load_audio, save_wav
from engines.media.video_writer import Mp4Writer, probe_media

FRAME_S = 0.04  # one video frame at 25 fps


def _sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    """Return a float64 sine wave."""
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2.0 * np.pi * freq * t)


def _dominant_hz(samples: np.ndarray, rate: int) -> float:
    """Return the frequency of the strongest FFT bin."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum)) * rate / samples.size


def _write_pcm_wav(path: Path, signal: np.ndarray, rate: int, channels: int, width: int) -> None:
    """Write ``signal`` (mono float) repeated on ``channels`` as integer PCM of ``width`` bytes."""
    frames = np.repeat(signal[:, None], channels, axis=1)
    if width == 1:
        raw = np.round(frames * 127.0 + 128.0).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(frames * (2**23 - 1)).astype("<i4")
        raw = ints.view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        dtype = {2: "<i2", 4: "<i4"}[width]
        raw = np.round(frames * (2 ** (8 * width - 1) - 1)).astype(dtype).tobytes()
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(raw)


def _write_float_wav(path: Path, signal: np.ndarray, rate: int, channels: int) -> None:
    """Write an IEEE-float (format tag 3) 32-bit wav; the ``wave`` module cannot."""
    data = np.repeat(signal[:, None], channels, axis=1).astype("<f4").tobytes()
    block = 4 * channels
    fmt = struct.pack("<HHIIHH", 3, channels, rate, rate * block, block, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


# -- load_audio ------------------------------------------------------------------------


def test_stereo_44k_wav_resampled_to_16k_mono(tmp_path: Path) -> None:
    path = tmp_path / "sine.wav"
    _write_pcm_wav(path, _sine(440.0, 44100, 1.0), rate=44100, channels=2, width=2)

    samples = load_audio(path, sample_rate=16000)

    assert samples.dtype == np.float32
    assert samples.ndim == 1
    assert abs(samples.size - 16000) <= 32
    assert abs(_dominant_hz(samples, 16000) - 440.0) <= 2.0
    # Identical channels downmix without gain change or clipping.
    assert 0.45 < float(np.max(np.abs(samples))) < 0.55


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_integer_pcm_wav_bit_depths(tmp_path: Path, width: int) -> None:
    path = tmp_path / f"pcm{8 * width}.wav"
    _write_pcm_wav(path, _sine(1000.0, 22050, 0.5), rate=22050, channels=1, width=width)

    samples = load_audio(str(path), sample_rate=16000)

    assert abs(samples.size - 8000) <= 32
    assert abs(_dominant_hz(samples, 16000) - 1000.0) <= 4.0
    assert 0.45 < float(np.max(np.abs(samples))) < 0.55


def test_float32_wav(tmp_path: Path) -> None:
    path = tmp_path / "float.wav"
    _write_float_wav(path, _sine(300.0, 48000, 0.5), rate=48000, channels=2)

    samples = load_audio(path)

    assert samples.dtype == np.float32
    assert abs(samples.size - 8000) <= 32
    assert abs(_dominant_hz(samples, 16000) - 300.0) <= 4.0
    assert 0.45 < float(np.max(np.abs(samples))) < 0.55


def test_many_channels_downmix_does_not_clip(tmp_path: Path) -> None:
    path = tmp_path / "six.wav"
    _write_pcm_wav(path, _sine(440.0, 16000, 0.25, amplitude=0.9), 16000, channels=6, width=2)

    samples = load_audio(path)

    assert abs(samples.size - 4000) <= 32
    assert float(np.max(np.abs(samples))) <= 0.95


def test_output_rate_is_respected(tmp_path: Path) -> None:
    path = tmp_path / "sine.wav"
    save_wav(path, _sine(440.0, 16000, 1.0), 16000)

    samples = load_audio(path, sample_rate=8000)

    assert abs(samples.size - 8000) <= 16
    assert abs(_dominant_hz(samples, 8000) - 440.0) <= 2.0


def test_save_wav_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "mono16.wav"
    signal = _sine(440.0, 16000, 0.5)
    save_wav(path, signal, 16000)

    with wave.open(str(path), "rb") as handle:
        assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (
            1,
            2,
            16000,
        )
    samples = load_audio(path, sample_rate=16000)
    assert samples.size == signal.size
    np.testing.assert_allclose(samples, signal, atol=2e-4)


def test_empty_wav_returns_empty_array(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    save_wav(path, np.zeros(0, dtype=np.float32), 16000)

    samples = load_audio(path)

    assert samples.dtype == np.float32
    assert samples.shape == (0,)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")


def test_corrupt_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(1234).bytes(8192))

    with pytest.raises(AudioError, match="could not decode") as info:
        load_audio(path)
    assert "noise.wav" in str(info.value)


def test_zero_byte_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "zero.mp3"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="could not decode"):
        load_audio(path)


def test_video_without_audio_raises(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with Mp4Writer(path, 32, 32, fps=25) as writer:
        for _ in range(3):
            writer.write(np.zeros((32, 32, 3), dtype=np.uint8))

    with pytest.raises(AudioError, match="no audio stream"):
        load_audio(path)


def test_audio_duration_s() -> None:
    assert audio_duration_s(np.zeros(24000, dtype=np.float32), 16000) == pytest.approx(1.5)
    assert audio_duration_s(np.zeros(0, dtype=np.float32), 16000) == 0.0
    with pytest.raises(AudioError):
        audio_duration_s(np.zeros(10), 0)


# -- Mp4Writer / probe_media --------------------------------------------------------------


def _moving_frames(n: int, height: int, width: int) -> list[np.ndarray]:
    """Return ``n`` RGB frames with a bar moving across a gradient."""
    base = np.zeros((height, width, 3), dtype=np.uint8)
    base[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    frames = []
    for i in range(n):
        frame = base.copy()
        x = (i * 3) % width
        frame[:, x : x + 4, 0] = 255
        frames.append(frame)
    return frames


def test_mp4_with_audio_durations_match(tmp_path: Path) -> None:
    path = tmp_path / "talk.mp4"
    audio = _sine(440.0, 16000, 2.0).astype(np.float32)
    with Mp4Writer(path, 128, 96, fps=25, audio=audio, audio_rate=16000) as writer:
        for frame in _moving_frames(50, 96, 128):
            writer.write(frame)

    info = probe_media(path)
    assert info["video_streams"] == 1
    assert info["audio_streams"] == 1
    assert info["n_frames"] == 50
    assert info["fps"] == pytest.approx(25.0)
    assert (info["width"], info["height"]) == (128, 96)
    assert info["video_duration_s"] == pytest.approx(2.0, abs=FRAME_S)
    assert info["audio_duration_s"] == pytest.approx(2.0, abs=FRAME_S)
    assert info["video_start_s"] == pytest.approx(0.0, abs=1e-3)
    assert info["audio_start_s"] == pytest.approx(0.0, abs=1e-3)
    assert info["audio_channels"] == 1

    decoded = load_audio(path, sample_rate=16000)
    assert audio_duration_s(decoded, 16000) == pytest.approx(2.0, abs=FRAME_S)
    assert abs(_dominant_hz(decoded, 16000) - 440.0) <= 2.0


def test_mp4_audio_is_in_sync_with_video(tmp_path: Path) -> None:
    path = tmp_path / "sync.mp4"
    rate = 16000
    audio = np.zeros(2 * rate, dtype=np.float32)
    audio[rate : rate + 160] = 0.9  # a 10 ms click at exactly 1.0 s
    with Mp4Writer(path, 64, 48, fps=25, audio=audio, audio_rate=rate) as writer:
        for i in range(50):
            writer.write(np.full((48, 64, 3), 255 if i == 25 else 0, dtype=np.uint8))

    decoded = load_audio(path, sample_rate=rate)
    click_s = float(np.argmax(np.abs(decoded))) / rate
    assert click_s == pytest.approx(1.0, abs=0.015)


def test_mp4_unsupported_audio_rate_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "odd_rate.mp4"
    rate = 11111  # not an AAC sampling rate
    audio = _sine(500.0, rate, 0.4)
    with Mp4Writer(path, 33, 17, fps=25, audio=audio, audio_rate=rate) as writer:
        for frame in _moving_frames(10, 17, 33):
            writer.write(frame)

    info = probe_media(path)
    assert writer.encoded_audio_rate == 48000
    assert info["audio_rate"] == 48000
    # Odd sizes are padded to even ones for yuv420p.
    assert (info["width"], info["height"]) == (34, 18)
    assert info["n_frames"] == 10
    assert info["audio_duration_s"] == pytest.approx(0.4, abs=FRAME_S)


def test_mp4_empty_audio_writes_video_only(tmp_path: Path) -> None:
    path = tmp_path / "video_only.mp4"
    with Mp4Writer(path, 32, 32, fps=10, audio=np.zeros(0, dtype=np.float32)) as writer:
        assert not writer.has_audio
        for frame in _moving_frames(5, 32, 32):
            writer.write(frame)

    info = probe_media(path)
    assert (info["video_streams"], info["audio_streams"]) == (1, 0)
    assert info["n_frames"] == 5
    assert info["video_duration_s"] == pytest.approx(0.5, abs=0.1)
    assert info["audio_duration_s"] is None


def test_mp4_writer_rejects_bad_frames(tmp_path: Path) -> None:
    with Mp4Writer(tmp_path / "bad.mp4", 32, 32) as writer:
        with pytest.raises(ValueError, match="shape"):
            writer.write(np.zeros((32, 31, 3), dtype=np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            writer.write(np.zeros((32, 32, 3), dtype=np.float32))
        writer.write(np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(RuntimeError, match="closed"):
        writer.write(np.zeros((32, 32, 3), dtype=np.uint8))
