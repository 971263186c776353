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
    assert ing.stats.underflows == 0
    # priming saw 120 ms at its tick (two packets a tick), one packet over target + tick:
    # that one is dropped so the depth is the target, and nothing after it
    assert ing.stats.dropped_s == 0.02
    assert played[0] == src[960]


def test_the_depth_after_priming_is_the_target_whatever_the_packet_phase():
    """Packets are 20 ms and ticks 40: depending on when packets land, priming sees 100 or
    120 ms; the depth after each take must be the 60 ms target either way (it used to stay
    80 for good in one phase of two: 20 ms of latency no trim removed)."""
    for phase in (0, 1):
        ing = AudioIngest(target_ms=60, max_ms=300, use_vad=False)
        depths = []
        for i in range(40):
            ing.push(tone(960))
            if i % 2 == phase:
                ing.take(TICK)
                if not ing._priming:
                    depths.append(ing.buffered_ms)
        assert depths and all(d == 60.0 for d in depths), (phase, depths[:5])


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


def _simulate(ing: AudioIngest, seconds: float, late_ms, media: bool = True,
              silent=lambda t: False) -> dict:
    """20 ms packets sent on time, each arriving ``late_ms(rng)`` late (in order), taken
    by a 40 ms tick; returns the depth after each take, the underflows per second and the
    target per second."""
    rng = np.random.default_rng(1)
    arrivals, prev = [], 0.0
    for k in range(int(seconds * 50)):
        sent = (k + 1) * 0.02  # the packet's media end
        if silent(sent):
            continue  # the sender paused (DTX): nothing on the wire, media time runs on
        prev = max(prev, sent + late_ms(rng) / 1e3)
        arrivals.append((prev, sent))
    i, depths, under, targets = 0, [], [], []
    for n in range(int((seconds - 0.2) * 25)):  # the last packets arrive before the end
        tick = 0.05 + (n + 1) * 0.04
        while i < len(arrivals) and arrivals[i][0] <= tick:
            now, end = arrivals[i]
            ing.push(tone(960), media_end_s=end if media else None, now=now)
            i += 1
        before = ing.stats.underflows
        ing.take(TICK)
        depths.append(ing.buffered_ms)
        under.append(ing.stats.underflows - before)
        targets.append(ing.target_ms)
    per_s = lambda x: np.add.reduceat(np.array(x), np.arange(0, len(x), 25))  # noqa: E731
    return {"depths": np.array(depths), "under": per_s(under),
            "targets": np.array(targets)[24::25]}


def test_adaptive_target_falls_to_its_floor_on_a_smooth_link():
    """Loopback-like arrivals (0-3 ms late): the buffer settles at the 20 ms floor instead
    of the 60 ms it started with, and nothing underflows."""
    ing = AudioIngest(target_ms=60, max_ms=300, use_vad=False, adaptive=True)
    sim = _simulate(ing, 20, lambda r: r.uniform(0, 3))
    assert sim["targets"][-1] == 20.0
    assert sim["depths"][-100:].max() <= 20.0 + 1e-6
    assert sim["under"].sum() == 0
    assert ing.stats.trims >= 1


def test_adaptive_target_grows_on_a_jittery_link_and_stops_underflowing():
    """One packet in five up to 90 ms late: starting from the 20 ms floor it underflows at
    first, then the target follows the lateness (its 98th percentile, ~88 ms, + 10 ms)
    and nothing underflows after that."""
    late = lambda r: r.uniform(0, 90) if r.random() < 0.2 else r.uniform(0, 10)  # noqa: E731
    ing = AudioIngest(target_ms=20, max_ms=300, use_vad=False, adaptive=True)
    sim = _simulate(ing, 30, late)
    assert sim["under"][:3].sum() >= 1
    assert 85 <= sim["targets"][-1] <= 100, sim["targets"]
    assert sim["under"][3:].sum() == 0, sim["under"]


def test_a_higher_target_is_reached_with_silence_in_a_pause():
    ing = AudioIngest(target_ms=20, max_ms=300, use_vad=False)
    depths = []
    for i in range(300):  # 20 ms packets on time, a take every other one
        ing.push(tone(960))
        if i % 2:
            ing.take(TICK)
            depths.append(ing.buffered_ms)
        if i == 100:
            ing.target = 60 * NET_RATE // 1000  # what the adaptive target does on jitter
    assert depths[40] == 20.0 and depths[-1] == 60.0
    assert ing.stats.grows == 1 and abs(ing.stats.padded_s - 0.04) < 1e-9
    assert ing.stats.underflows == 0
