"""DeepSpeech features: TensorFlow-identical MFCC, the streaming model, per-frame windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.speech_frontend import DeepSpeechFrontend, VideoWindows, audio_to_windows  # noqa: E402
from etf_models.deepspeech import BLANK, DeepSpeech, DeepSpeechConfig, greedy_decode  # noqa: E402
from etf_models.speech_features import StreamingMfcc, context_windows, mfcc  # noqa: E402

# TensorFlow 2.21's tf.raw_ops.AudioSpectrogram(512, 320, magnitude_squared) + Mfcc(16000,
# upper 8000, lower 20, 40 channels, 26 coefficients) on the signal of _tone(), rows 0 and 3,
# first 8 coefficients (computed once with TensorFlow; CI has no TensorFlow).
TF_GOLDEN = np.array([
    [-61.4862, 24.2022, -0.5483, -6.2381, -8.1947, -2.8582, -1.1443, -1.6109],
    [-61.6159, 24.3311, -0.5003, -6.2245, -8.1641, -2.8290, -1.1048, -1.5840],
])


def _tone() -> np.ndarray:
    t = np.arange(1600 + 512) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1000 * t)).astype(
        np.float32)


def _speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    env = np.repeat(rng.uniform(0, 1, n // 800 + 1), 800)[:n]
    return (rng.standard_normal(n) * 0.1 * env).astype(np.float32)


def test_mfcc_matches_tensorflow():
    rows = mfcc(_tone())
    assert rows.shape == (6, 26)
    assert np.allclose(rows[[0, 3], :8], TF_GOLDEN, atol=2e-3)


def test_mfcc_streaming_equals_whole():
    audio = _speechlike(1.3)
    whole = mfcc(audio)
    s = StreamingMfcc()
    parts = [s.push(audio[i:i + 333]) for i in range(0, len(audio), 333)]
    assert np.array_equal(np.concatenate(parts), whole)
    assert len(whole) == 1 + (len(audio) - 512) // 320


def test_context_windows_pad_with_zero_frames():
    rows = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    w = context_windows(rows, 2)
    assert w.shape == (4, 5, 3)
    assert np.all(w[0, :2] == 0) and np.array_equal(w[0, 2], rows[0])
    assert np.array_equal(w[3, 2], rows[3]) and np.all(w[3, 3:] == 0)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return DeepSpeech(DeepSpeechConfig(n_hidden=32, n_cell=24, n_context=9))


def test_streaming_logits_equal_whole_utterance(small_model):
    audio = _speechlike(2.0, seed=1)
    fe = DeepSpeechFrontend(small_model)
    whole = fe.process(audio)
    fe.reset()
    parts = [fe.push(audio[i:i + 320]) for i in range(0, len(audio), 320)] + [fe.flush()]
    streamed = np.concatenate(parts)
    assert whole.shape == (len(mfcc(audio)), 29)
    assert np.allclose(streamed, whole, atol=1e-5)
    # Reference: the model run once on every window of the utterance.
    wins = context_windows(mfcc(audio), 9)
    with torch.inference_mode():
        ref = small_model(torch.from_numpy(wins)[None])[0].numpy()
    assert np.allclose(whole, ref, atol=1e-5)
    assert fe.lookahead_ms == pytest.approx(196.0)
    with pytest.raises(RuntimeError, match="reset"):
        fe.push(audio[:320])


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_video_windows_shapes_and_chunking(small_model, fps):
    audio = _speechlike(1.7, seed=2)
    fe = DeepSpeechFrontend(small_model)
    whole = audio_to_windows(fe, audio, fps)
    chunked = audio_to_windows(fe, audio, fps, chunk=320)
    assert whole.shape == (math.ceil(len(audio) / 16000 * fps), 6, 29)
    assert np.allclose(whole, chunked, atol=1e-5)
    # Frame k samples the 50 Hz rows (row r centred at 20 r + 16 ms) at k/fps + 20 ms *
    # (-2.5 .. 2.5), linearly interpolated.
    rows = fe.process(audio)
    row_t = 0.016 + 0.02 * np.arange(len(rows))
    for k in (0, 10, len(whole) // 2):
        t = k / fps + 0.02 * (np.arange(6) - 2.5)
        want = np.stack([np.interp(t, row_t, rows[:, c]) for c in range(29)], axis=1)
        assert np.allclose(whole[k], want, atol=1e-4), k


def test_video_windows_lookahead_is_declared():
    win = VideoWindows(25.0)
    assert win.lookahead_ms == pytest.approx(70.0)
    rows = np.random.default_rng(0).standard_normal((5, 29)).astype(np.float32)
    got = win.push(rows)  # rows up to 96 ms: frames whose window ends before it
    for k in range(len(got)):
        assert k / 25.0 + 0.05 <= 0.016 + 0.02 * 4 + 1e-9


def test_greedy_decode_collapses_repeats_and_blanks():
    ids = [8, 8, BLANK, 5, 12, 12, BLANK, 12, 15, BLANK, BLANK]
    logits = torch.full((len(ids), 29), -5.0)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 5.0
    assert greedy_decode(logits) == "hello"


def test_checkpoint_round_trip_and_cli(small_model, tmp_path, capsys):
    from engines.audio_io import save_wav
    from etf_models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from server.cli import main

    ckpt = tmp_path / "ds.pt"
    digest = save_checkpoint(ckpt, "deepspeech", small_model.config.to_dict(),
                             small_model.state_dict(), meta={"note": "test"})
    assert len(digest) == 64
    audio = _speechlike(1.0, seed=3)
    loaded = DeepSpeechFrontend.from_checkpoint(ckpt)
    assert np.allclose(loaded.process(audio), DeepSpeechFrontend(small_model).process(audio),
                       atol=1e-6)
    with pytest.raises(CheckpointError, match="not a 'gcn'|holds a 'deepspeech'"):
        load_checkpoint(ckpt, model="gcn")

    wav = tmp_path / "a.wav"
    save_wav(wav, audio, 16000)
    out = tmp_path / "f.npy"
    assert main(["speech", "features", str(wav), "-o", str(out), "--weights", str(ckpt),
                 "--fps", "30"]) == 0
    assert np.load(out).shape == (30, 6, 29)
    assert main(["speech", "transcribe", str(wav), "--weights", str(ckpt)]) == 0
    capsys.readouterr()
    assert main(["speech", "features", str(wav), "-o", str(out)]) == 0  # the shipped model
    assert np.load(out).shape == (25, 6, 29)
    capsys.readouterr()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    assert main(["speech", "transcribe", str(wav), "--weights", str(junk)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
