"""DeepSpeech features: TensorFlow-identical MFCC, the streaming model, per-frame windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.audio.speech_frontend import DeepSpeechFrontend, VideoWindows, audio_to_windows  # noqa: E402
from etf_models.deepspeech import BLANK, DeepSpeech, DeepSpeechConfig, greedy_decode  # noqa: E402
from etf_models.speech_features import (  # noqa: E402
    StreamingMfcc,
    context_windows,
    mfcc,
    v01_mfcc,
    v01_windows,
)

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


# ------------------------------------------------------------------------------------------
# DeepSpeech 0.1.x (bidirectional, python_speech_features MFCC, utterance whitening): offline
# ------------------------------------------------------------------------------------------

def test_v01_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(4)
    for n in (5, 400, 401, 16000, 16123):  # one short frame, exact fits, a padded last frame
        pcm = (rng.standard_normal(n) * 3000).astype(np.int16)
        ours = v01_mfcc(pcm)
        theirs = psf.mfcc(pcm, samplerate=16000, numcep=26)
        assert ours.shape == theirs.shape == (1 if n <= 400 else 1 + math.ceil((n - 400) / 160),
                                              26)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    silent = np.zeros(1000)  # zero energy: the package's eps floors
    np.testing.assert_allclose(v01_mfcc(silent), psf.mfcc(silent, 16000, numcep=26),
                               rtol=1e-5, atol=1e-4)


def test_v01_windows_follow_the_released_recipe():
    """int16 samples, every second 10 ms row, 9 zero frames each side, whitened by the whole
    matrix's one mean and deviation: DeepSpeech 0.1.x's audiofile_to_input_vector."""
    audio = _speechlike(1.3, seed=5)
    pcm = np.trunc(audio.astype(np.float64) * 32768)
    rows = v01_mfcc(pcm)[::2]
    padded = np.concatenate([np.zeros((9, 26)), rows, np.zeros((9, 26))])
    ref = np.stack([padded[i:i + 19] for i in range(len(rows))])
    ref = (ref - ref.mean()) / ref.std()
    got = v01_windows(audio)
    assert got.shape == (len(rows), 19, 26) == (65, 19, 26)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert abs(got.mean()) < 1e-5 and got.std() == pytest.approx(1.0, abs=1e-5)
    # the scale of the input does not matter once whitened except through log energy
    assert not np.allclose(v01_windows(audio * 0.5), got, atol=1e-3)


def test_bidirectional_model_runs_offline_only():
    torch.manual_seed(1)
    cfg = DeepSpeechConfig(n_hidden=32, n_cell=20, n_hidden_3=40, n_context=9,
                           forget_bias=1.0, bidirectional=True, features="v01")
    model = DeepSpeech(cfg).eval()
    assert not cfg.streaming and model.layer_5.in_features == 40
    audio = _speechlike(1.5, seed=6)
    fe = DeepSpeechFrontend(model)
    assert fe.lookahead_ms == math.inf and fe.row_centre_s == pytest.approx(0.0125)
    assert fe.push(audio[:8000]).shape == (0, 29)  # nothing before the utterance ends
    assert fe.push(audio[8000:]).shape == (0, 29)
    rows = fe.flush()
    with torch.inference_mode():
        ref = model(torch.from_numpy(v01_windows(audio))[None])[0].numpy()
    np.testing.assert_allclose(rows, ref, atol=1e-6)
    assert rows.shape == (75, 29)
    # backward in time: the first row depends on the end of the utterance
    changed = audio.copy()
    changed[-4000:] *= 3
    assert not np.allclose(fe.process(changed)[0], rows[0], atol=1e-6)
    # per-frame windows: same whole or chunked, row r centred at 20 r + 12.5 ms
    whole = audio_to_windows(fe, audio, 25.0)
    assert whole.shape == (38, 6, 29)
    np.testing.assert_allclose(audio_to_windows(fe, audio, 25.0, chunk=320), whole, atol=1e-6)
    row_t = 0.0125 + 0.02 * np.arange(len(rows))
    t = 10 / 25.0 + 0.02 * (np.arange(6) - 2.5)
    want = np.stack([np.interp(t, row_t, rows[:, c]) for c in range(29)], axis=1)
    np.testing.assert_allclose(whole[10], want, atol=1e-5)
    with pytest.raises(RuntimeError, match="whole utterance"):
        model.step(torch.zeros(1, 1, 19, 26), model.initial_state())
    with pytest.raises(ValueError, match="unknown speech features"):
        DeepSpeechConfig(features="mel")


def test_greedy_decode_collapses_repeats_and_blanks():
    ids = [8, 8, BLANK, 5, 12, 12, BLANK, 12, 15, BLANK, BLANK]
    logits = torch.full((len(ids), 29), -5.0)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 5.0
    assert greedy_decode(logits) == "hello"


def test_checkpoint_round_trip_and_cli(small_model, tmp_path, capsys):
    from engines.media.audio_io import save_wav
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
