"""Tests for :mod:`engines.audio.phone_stream` on speech synthesised by flite.

flite's ``-psdur`` prints each phone with its END time, which gives a frame-level
reference.  Both sides are mapped to four coarse mouth classes (silence, bilabial,
open vowel, other) and compared frame by frame.  Measured with the default settings
(150 ms lookahead, 20 ms chunks) on "Bob and Pam saw a big map" padded with 0.5 s of
silence: agreement 0.81 (slt), 0.85 (kal16), 0.77 (awb), 0.82 (rms); the same output
against flite labels shifted by 250 ms agrees only 0.44-0.47, so the 0.70 threshold
separates a working recognizer from a misaligned or broken one.
"""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from engines.audio.phone_stream import (
    PhoneSegment,
    StreamingPhoneRecognizer,
    StreamResampler,
    merge_segments,
    normalize_phone,
)

TEXT = "Bob and Pam saw a big map."
PAD_S = 0.5
AGREEMENT_THRESHOLD = 0.70
ARPABET = {
    "AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G",
    "HH", "IH", "IY", "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH",
    "T", "TH", "UH", "UW", "V", "W", "Y", "Z", "ZH", "SIL",
}  # fmt: skip

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="flite not installed")


def _synth(tmp: Path, voice: str = "slt") -> tuple[int, np.ndarray, list[tuple[str, float, float]]]:
    """Synthesise TEXT; return rate, padded float32 audio and (phone, start, end) labels."""
    wav = tmp / f"{voice}.wav"
    res = subprocess.run(
        ["flite", "-voice", voice, "-t", TEXT, "-o", str(wav), "-psdur"],
        capture_output=True,
        text=True,
        check=True,
    )
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32)
    audio /= 32768.0
    pad = np.zeros(int(PAD_S * rate), np.float32)
    labels = []
    prev = 0.0
    for tok in res.stdout.split():
        phone, end = tok.rsplit(":", 1)
        labels.append((phone, prev + PAD_S, float(end) + PAD_S))
        prev = float(end)
    return rate, np.concatenate([pad, audio, pad]), labels


def _coarse(phone: str) -> int:
    """0 silence, 1 bilabial, 2 open vowel, 3 other (accepts flite or ARPAbet names)."""
    p = phone.upper()
    if p in ("PAU", "SIL", "H#"):
        return 0
    if p == "AX":
        p = "AH"
    if p in ("P", "B", "M"):
        return 1
    if p in ("AA", "AE", "AH", "AO", "AW", "AY"):
        return 2
    return 3


def _frames(labels: list[tuple[str, float, float]], n: int, shift: float = 0.0) -> np.ndarray:
    """Coarse class per 10 ms frame (sampled at frame centres); default silence."""
    out = np.zeros(n, np.int8)
    t = (np.arange(n) + 0.5) * 0.01
    for phone, start, end in labels:
        out[(t >= start + shift) & (t < end + shift)] = _coarse(phone)
    return out


def _seg_labels(segs: list[PhoneSegment]) -> list[tuple[str, float, float]]:
    return [(s.phone, s.start_s, s.end_s) for s in segs]


def _stream(
    rec: StreamingPhoneRecognizer, audio: np.ndarray, chunks: list[int] | int
) -> list[PhoneSegment]:
    """Push audio in the given chunk size(s) (cycled), then flush; return all segments."""
    sizes = [chunks] if isinstance(chunks, int) else chunks
    segs: list[PhoneSegment] = []
    pos = k = 0
    while pos < audio.size:
        n = sizes[k % len(sizes)]
        new = rec.push(audio[pos : pos + n])
        pos += n
        k += 1
        if new:
            assert new[-1].end_s == pytest.approx(rec.final_until_s, abs=1e-9)
        segs += new
    segs += rec.flush()
    return segs


@pytest.fixture(scope="module")
def slt(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, np.ndarray, list]:
    return _synth(tmp_path_factory.mktemp("flite"), "slt")


@pytest.fixture(scope="module")
def slt_result(slt: tuple[int, np.ndarray, list]) -> list[PhoneSegment]:
    rate, audio, _ = slt
    rec = StreamingPhoneRecognizer(rate)
    return _stream(rec, audio, rate // 50)


def test_contiguous_ordered_and_covering(slt, slt_result):
    rate, audio, _ = slt
    segs = slt_result
    assert segs[0].start_s == 0.0
    for a, b in zip(segs, segs[1:], strict=False):
        assert b.start_s == pytest.approx(a.end_s, abs=1e-9)
    assert all(s.end_s > s.start_s for s in segs)
    assert segs[-1].end_s == pytest.approx(audio.size / rate, abs=1e-6)
    assert {s.phone for s in segs} <= ARPABET


def test_final_until_tracks_lookahead(slt):
    rate, audio, _ = slt
    rec = StreamingPhoneRecognizer(rate, lookahead_ms=150)
    chunk = rate // 50
    got: list[PhoneSegment] = []
    caught_up = False
    for pos in range(0, audio.size, chunk):
        got += rec.push(audio[pos : pos + chunk])
        # Whole 20 ms steps are decoded at once, so the guarantee is exact for them; a
        # trailing partial chunk waits for the rest of its step.
        pushed = (min(pos + chunk, audio.size) // chunk) * chunk / rate
        assert rec.final_until_s >= pushed - 0.150 - 1e-9
        assert rec.final_until_s <= pushed + 1e-9
        if got:
            assert got[-1].end_s == pytest.approx(rec.final_until_s, abs=1e-9)
        caught_up |= abs(rec.final_until_s - pushed) < 1e-9
    # At the trailing pause the utterance is ended, which finalises up to the audio edge.
    assert caught_up


def test_leading_silence_and_speech(slt, slt_result):
    _, _, labels = slt
    merged = merge_segments(slt_result)
    assert merged[0].phone == "SIL"
    assert merged[0].end_s >= PAD_S - 0.1
    speech_start = labels[0][2]  # end of flite's own leading pause
    speech_end = labels[-2][2]  # end of the last phone before the final pause
    n = int(speech_end * 100)
    frames = _frames(_seg_labels(slt_result), n)
    speech = frames[int(speech_start * 100) :]
    assert np.mean(speech == 0) < 0.15, "speech region should be mostly non-SIL"


def test_coarse_class_agreement_with_flite(slt, slt_result):
    rate, audio, labels = slt
    n = int(audio.size / rate * 100)
    hyp = _frames(_seg_labels(slt_result), n)
    agreement = float(np.mean(hyp == _frames(labels, n)))
    control = float(np.mean(hyp == _frames(labels, n, shift=0.25)))
    assert agreement > AGREEMENT_THRESHOLD, agreement
    # The metric must be able to fail: misaligned references score far lower.
    assert control < AGREEMENT_THRESHOLD - 0.1, control
    # Bilabial closures and open vowels are what the mouth needs most.
    ref = _frames(labels, n)
    assert np.mean(hyp[ref == 2] == 2) > 0.5
    assert np.mean(np.isin(hyp[ref == 1], (0, 1))) > 0.25


def test_chunking_is_exactly_invariant(slt, slt_result):
    """Decisions happen on fixed 20 ms internal steps, so chunking cannot matter."""
    rate, audio, _ = slt
    ref = merge_segments(slt_result)
    big = _stream(StreamingPhoneRecognizer(rate), audio, 1600)
    odd = _stream(StreamingPhoneRecognizer(rate), audio, [1, 777, 160, 4001, 95])
    assert merge_segments(big) == ref
    assert merge_segments(odd) == ref


def test_resampled_input_48k(slt):
    from scipy.signal import resample_poly

    rate, audio, labels = slt
    audio48 = resample_poly(audio, 3, 1).astype(np.float32)
    segs = _stream(StreamingPhoneRecognizer(48000), audio48, 960)
    assert segs[-1].end_s == pytest.approx(audio48.size / 48000, abs=1e-4)
    n = int(audio.size / rate * 100)
    hyp = _frames(_seg_labels(segs), n)
    assert np.mean(hyp == _frames(labels, n)) > AGREEMENT_THRESHOLD


def test_forced_restarts_keep_stream_consistent(slt):
    """Cut utterances every second (no pause restarts): still contiguous and accurate."""
    rate, audio, labels = slt
    long_audio = np.concatenate([audio] * 3)
    rec = StreamingPhoneRecognizer(rate, restart_sil_ms=1e6, max_utt_s=1.0)
    segs = _stream(rec, long_audio, 320)
    for a, b in zip(segs, segs[1:], strict=False):
        assert b.start_s == pytest.approx(a.end_s, abs=1e-9)
    assert segs[-1].end_s == pytest.approx(long_audio.size / rate, abs=1e-6)
    dur = audio.size / rate
    all_labels = [(p, s + k * dur, e + k * dur) for k in range(3) for p, s, e in labels]
    n = int(long_audio.size / rate * 100)
    hyp = _frames(_seg_labels(segs), n)
    assert np.mean(hyp == _frames(all_labels, n)) > AGREEMENT_THRESHOLD


def test_reset_reproduces_fresh_result(slt, slt_result):
    rate, audio, _ = slt
    rec = StreamingPhoneRecognizer(rate)
    _stream(rec, audio[: audio.size // 2], 320)
    rec.reset()
    assert rec.final_until_s == 0.0
    assert merge_segments(_stream(rec, audio, 320)) == merge_segments(slt_result)


def test_normalize_phone_and_validation():
    assert normalize_phone("+NSN+") == "SIL"
    assert normalize_phone("+SPN+") == "SIL"
    assert normalize_phone("<sil>") == "SIL"
    assert normalize_phone("aa1") == "AA"
    assert normalize_phone("P") == "P"
    with pytest.raises(ValueError):
        StreamingPhoneRecognizer(lookahead_ms=30)
    rec = StreamingPhoneRecognizer()
    assert rec.flush() == []
    out = rec.push(np.zeros(100, np.float32)) + rec.flush()
    assert out == [PhoneSegment("SIL", 0.0, 100 / 16000)]


class _Counting(StreamingPhoneRecognizer):
    """Counts the samples its decoder is given."""

    def reset(self) -> None:
        super().reset()
        self.decoded = 0
        rec, decoder = self, self._decoder

        class Proxy:
            def __getattr__(self, name):
                return getattr(decoder, name)

            def process_raw(self, data, *args):
                rec.decoded += len(data) // 2
                return decoder.process_raw(data, *args)

        self._decoder = Proxy()


class _Decoding(_Counting):
    SKIP_SILENCE = False


def test_digital_silence_between_utterances_is_not_decoded(slt):
    """Exact zeros between utterances (a closed VAD gate, a muted microphone) skip the
    decoder: a listening session's recogniser CPU. The phones come out as when the zeros
    were decoded, and the commit horizon still trails the audio by the lookahead."""
    rate, audio, _ = slt
    rate16 = 16000
    if rate != rate16:
        audio = StreamResampler(rate, rate16).process(audio)
    gap = np.zeros(4 * rate16, np.float32)
    x = np.concatenate([gap, audio, gap, audio, gap])
    chunk = rate16 // 25
    runs = {}
    for cls in (_Counting, _Decoding):
        rec = cls(rate16, lookahead_ms=100)
        segs = []
        for pos in range(0, x.size, chunk):
            segs += rec.push(x[pos:pos + chunk])
            pushed = min(pos + chunk, x.size) / rate16
            assert pushed - 0.1 - 0.02 - 1e-9 <= rec.final_until_s <= pushed + 1e-9
        segs += rec.flush()
        for a, b in zip(segs, segs[1:], strict=False):
            assert b.start_s == pytest.approx(a.end_s, abs=1e-9)
        assert segs[-1].end_s == pytest.approx(x.size / rate16, abs=1e-6)
        runs[cls] = (_frames(_seg_labels(segs), int(x.size / 160)), rec.decoded)
    (skipping, n_skip), (decoding, n_all) = runs[_Counting], runs[_Decoding]
    assert n_all >= x.size and n_skip < 0.6 * n_all, (n_skip, n_all)
    assert np.mean(skipping == decoding) > 0.97
    assert np.all(skipping[: 3 * 100] == 0)  # the leading silence is silence
