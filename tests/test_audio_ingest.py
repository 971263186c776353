"""The live jitter buffer and VAD gate (engines/audio/audio_ingest.py)."""

from __future__ import annotations

import numpy as np

from engines.audio.audio_ingest import NET_RATE, AudioIngest

TICK = NET_RATE // 25  # 40 ms


def tone(n: int, level: float = 0.3) -> np.ndarray:
    t = np.arange(n) / NET_RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_primes_then_streams_exact_chunks_in_order():
    ing = AudioIngest(target_ms=60, max_ms=300, use_vad=False)
    src = np.arange(NET_RATE, dtype=np.float32) / NET_RATE  # a ramp: order is visible
    out = []
    for i in range(0, NET_RATE, 960):  # 20 ms packets, two per tick
        ing.push(src[i:i + 960])
        if i // 960 % 2 == 1:
            chunk, speech = ing.take(TICK)
            assert chunk.size == TICK and speech.size == TICK // 3
            out.append(chunk)
    audio = np.concatenate(out)
    first = np.flatnonzero(audio)[0]
    assert first > 0, "it must prime (hand out silence) before the first audio"
    played = audio[first:]
    assert np.all(np.diff(played) > 0), "samples must come out once each, in order"
    assert ing.stats.underflows == 0 and ing.stats.dropped_s == 0


def test_speech_copy_trails_by_the_filter_half_length_and_holds_nothing_back():
    """The 16 kHz copy is the same resampler's output delayed by its 1 ms half length, so
    every 40 ms tick yields all 640 samples (none waiting for future input)."""
    from engines.audio.phone_stream import StreamResampler

    x = tone(12 * TICK) * np.linspace(0, 1, 12 * TICK, dtype=np.float32)
    plain = StreamResampler(NET_RATE, 16000)
    ref = np.concatenate([plain.process(x), plain.drain()])
    lagged = StreamResampler(NET_RATE, 16000)
    lag = lagged.lag_input()
    assert lag == 48
    parts = [lagged.process(x[i:i + TICK]) for i in range(0, x.size, TICK)]
    assert all(p.size == TICK // 3 for p in parts)
    out = np.concatenate(parts)
    shift = lag // 3
    np.testing.assert_allclose(out[shift:], ref[: out.size - shift], atol=1e-6)
    assert np.abs(out[:shift]).max() < 1e-6  # silence before the stream, filtered


def test_underflow_pads_silence_and_overflow_drops_to_target():
    ing = AudioIngest(target_ms=60, max_ms=300, use_vad=False)
    ing.push(tone(NET_RATE // 10))  # 100 ms, then nothing
    chunks = [ing.take(TICK)[0] for _ in range(5)]
    assert all(c.size == TICK for c in chunks)
    assert ing.stats.underflows == 1 and ing.stats.silence_padded_s > 0
    ing.push(tone(NET_RATE))  # a 1 s burst
    assert ing.buffered_ms <= 300 and ing.stats.dropped_s > 0.6


def test_a_lasting_excess_is_trimmed_in_a_pause():
    """After a stall and the late burst, the depth returns to the target within seconds."""
    ing = AudioIngest(target_ms=60, max_ms=400, use_vad=True)
    rng = np.random.default_rng(0)
    quiet = lambda n: (rng.standard_normal(n) * 1e-4).astype(np.float32)  # noqa: E731
    for _ in range(10):  # steady
        ing.push(quiet(TICK))
        ing.take(TICK)
    ing.push(quiet(6 * TICK))  # a burst of 240 ms that arrived late
    depths = []
    for _ in range(100):
        ing.push(quiet(TICK))
        ing.take(TICK)
        depths.append(ing.buffered_ms)
    assert max(depths[:5]) >= 250
    assert depths[-1] <= 100, depths[-10:]
    assert ing.stats.trims >= 1


def test_vad_gate_passes_speech_and_mutes_noise(tmp_path):
    from tests.conftest import synth_speech

    speech16 = synth_speech("The quick brown fox jumps over the lazy dog.", tmp_path / "s.wav")
    from engines.media.audio_io import load_audio, save_wav

    save_wav(tmp_path / "s16.wav", speech16, 16000)
    speech = load_audio(tmp_path / "s16.wav", NET_RATE)
    noise = (np.random.default_rng(1).standard_normal(NET_RATE) * 0.003).astype(np.float32)
    gate, plain = (AudioIngest(target_ms=0, max_ms=300, use_vad=v) for v in (True, False))
    gated, ungated = [], []
    for sig in (noise, speech):
        for i in range(0, len(sig) - TICK, TICK):
            for ing, out in ((gate, gated), (plain, ungated)):
                ing.push(sig[i:i + TICK])
                out.append(ing.take(TICK)[1])
    n = len(noise) // TICK - 1

    def rms(chunks):
        return float(np.sqrt(np.mean(np.concatenate(chunks) ** 2)))

    # WebRTC's VAD adapts to the noise floor over its first few hundred ms.
    assert rms(gated[12:n]) < 0.2 * rms(ungated[12:n]), "noise should be muted"
    assert rms(gated[n:]) > 0.9 * rms(ungated[n:]), "speech should pass"
