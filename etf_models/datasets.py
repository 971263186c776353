"""Readers for the emotional talking-face datasets users bring: MEAD, CREMA-D, RAVDESS.

None can be downloaded here; each reader only walks the published layout and names and
returns ``ClipRecord``s (video, audio, speaker, emotion, intensity). Unknown files are
ignored; files whose names break the dataset's scheme are counted in ``ScanResult.skipped``
with a reason, never fatal.

- **MEAD** (``<speaker>/video/<view>/<emotion>/level_<n>/<clip>.mp4`` with
  ``<speaker>/audio/<emotion>/level_<n>/<clip>.m4a``; the speaker folder may be the root
  itself): emotions angry, disgusted, fear, happy, neutral, sad, surprised (contempt has no
  place among our seven and is skipped); levels 1-3 become intensity ``n / 3``; the
  ``front`` view by default.
- **CREMA-D** (``<actor>_<sentence>_<EMO>_<LEVEL>.flv|mp4`` in ``VideoFlash`` or anywhere,
  audio ``AudioWAV/<same stem>.wav`` when present, else the video's own track): ANG, DIS,
  FEA, HAP, NEU, SAD; LO / MD / HI = 1/3, 2/3, 1 (XX, unspecified, = 2/3).
- **talking** (any folder of talking-to-camera clips, e.g. ``../shared/data/talking``):
  every video (``.mp4 .mpg .avi .mov .mkv .flv``) with its speech in a ``.wav`` of the same
  stem beside it, else its own audio track. The speaker is the sub-folder for
  ``<speaker>/<clip>.mp4``, else the file name without clip numbering (``_clip2``,
  ``_001``, ``_short``, a trailing digit run); a name token that is one of the seven
  emotions (or MEAD's spelling) sets the emotion at full intensity, else neutral.
- **RAVDESS** (``MM-VV-EE-II-SS-RR-AA.mp4``): audio-visual (modality 01) speech (vocal
  channel 01) only; emotions 01 neutral, 03 happy, 04 sad, 05 angry, 06 fearful, 07
  disgust, 08 surprised (02 calm is skipped); intensity 01 normal = 0.5, 02 strong = 1.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from etf_models.emotions import EMOTIONS

VIDEO_EXT = (".mp4", ".flv", ".avi", ".mov", ".mkv")
TALKING_EXT = (*VIDEO_EXT, ".mpg", ".mpeg", ".webm")


@dataclass(frozen=True)
class ClipRecord:
    dataset: str
    speaker: str
    emotion: str  # one of etf_models.emotions.EMOTIONS
    intensity: float  # 0..1
    video: str
    audio: str  # a separate audio file, or the video itself
    clip_id: str  # unique within the dataset, used for shard names

    def __post_init__(self) -> None:
        if self.emotion not in EMOTIONS:
            raise ValueError(f"{self.video}: emotion {self.emotion!r} is not one of {EMOTIONS}")


@dataclass
class ScanResult:
    clips: list[ClipRecord] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1


# ------------------------------------------------------------------------------ MEAD

MEAD_EMOTIONS = {"angry": "angry", "disgusted": "disgust", "fear": "fear", "happy": "happy",
                 "neutral": "neutral", "sad": "sad", "surprised": "surprise"}
_MEAD_LEVEL = re.compile(r"level_(\d)")


def scan_mead(root: str | os.PathLike, view: str = "front") -> ScanResult:
    root = Path(root)
    res = ScanResult()
    video_dirs = sorted(root.glob(f"video/{view}")) + sorted(root.glob(f"*/video/{view}"))
    for vdir in video_dirs:
        speaker_dir = vdir.parent.parent
        speaker = speaker_dir.name if speaker_dir != root else root.name
        for mp4 in sorted(vdir.glob("*/level_*/*.mp4")):
            emo_name, level = mp4.parent.parent.name, mp4.parent.name
            if emo_name == "contempt":
                res.skip("contempt (not one of the seven emotions)")
                continue
            if emo_name not in MEAD_EMOTIONS:
                res.skip(f"unknown MEAD emotion folder {emo_name!r}")
                continue
            m = _MEAD_LEVEL.fullmatch(level)
            if not m or not 1 <= int(m.group(1)) <= 3:
                res.skip(f"unknown MEAD level folder {level!r}")
                continue
            audio = speaker_dir / "audio" / emo_name / level / (mp4.stem + ".m4a")
            res.clips.append(ClipRecord(
                "mead", speaker, MEAD_EMOTIONS[emo_name], int(m.group(1)) / 3.0, str(mp4),
                str(audio) if audio.is_file() else str(mp4),
                f"{speaker}_{view}_{emo_name}_{level}_{mp4.stem}"))
    return res


# ------------------------------------------------------------------------------ CREMA-D

CREMA_EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy",
                  "NEU": "neutral", "SAD": "sad"}
CREMA_LEVELS = {"LO": 1 / 3, "MD": 2 / 3, "HI": 1.0, "XX": 2 / 3}
_CREMA = re.compile(r"(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})")


def scan_crema_d(root: str | os.PathLike) -> ScanResult:
    root = Path(root)
    res = ScanResult()
    wavs = {p.stem: p for p in root.rglob("*.wav")}
    for video in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXT):
        m = _CREMA.fullmatch(video.stem)
        if not m:
            res.skip("name is not <actor>_<sentence>_<EMO>_<LEVEL>")
            continue
        actor, sentence, emo, level = m.groups()
        if emo not in CREMA_EMOTIONS or level not in CREMA_LEVELS:
            res.skip(f"unknown CREMA-D emotion or level {emo}_{level}")
            continue
        audio = wavs.get(video.stem, video)
        res.clips.append(ClipRecord("crema-d", actor, CREMA_EMOTIONS[emo], CREMA_LEVELS[level],
                                    str(video), str(audio), video.stem))
    return res


# ------------------------------------------------------------------------------ RAVDESS

RAVDESS_EMOTIONS = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry", "06": "fear",
                    "07": "disgust", "08": "surprise"}
_RAVDESS = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)")


def scan_ravdess(root: str | os.PathLike) -> ScanResult:
    root = Path(root)
    res = ScanResult()
    for video in sorted(root.rglob("*.mp4")):
        m = _RAVDESS.fullmatch(video.stem)
        if not m:
            res.skip("name is not MM-VV-EE-II-SS-RR-AA")
            continue
        modality, channel, emo, intensity, _stmt, _rep, actor = m.groups()
        if modality != "01":
            res.skip("not audio-visual (modality 02 has no audio)")
            continue
        if channel != "01":
            res.skip("song, not speech")
            continue
        if emo == "02":
            res.skip("calm (not one of the seven emotions)")
            continue
        if emo not in RAVDESS_EMOTIONS or intensity not in ("01", "02"):
            res.skip(f"unknown RAVDESS emotion or intensity {emo}/{intensity}")
            continue
        res.clips.append(ClipRecord("ravdess", f"actor{actor}", RAVDESS_EMOTIONS[emo],
                                    0.5 if intensity == "01" else 1.0, str(video), str(video),
                                    video.stem))
    return res


# ------------------------------------------------------------------------------ talking

_CLIP_NUMBER = re.compile(r"(?:[_-](?:clip[_-]?\d*|short|\d+))+$", re.IGNORECASE)


def talking_speaker(stem: str) -> str:
    """A clip's speaker from its file name, the clip numbering dropped:
    ``styletalk_Obama_clip2`` -> ``styletalk_Obama``, ``andrew_clip_1`` -> ``andrew``."""
    return _CLIP_NUMBER.sub("", stem) or stem


def person_of(speaker: str) -> str:
    """The person behind a talking clip's speaker name or a clip name, so a person under two
    sources (or in two MEAD clips) is one group when people are held out."""
    low = speaker.lower()
    for name in ("obama", "andrew", "feifeili", "reagan", "kristinoem"):
        if name in low:
            return name
    if low.startswith("grid"):
        return "grid"
    mead = re.search(r"mead_([mw]\d{3})", low)
    if mead:
        return mead.group(1).upper()
    return talking_speaker(speaker)


def scan_talking(root: str | os.PathLike) -> ScanResult:
    root = Path(root)
    res = ScanResult()
    words = {**{e: e for e in EMOTIONS}, **MEAD_EMOTIONS}
    for video in sorted(p for p in root.rglob("*") if p.suffix.lower() in TALKING_EXT):
        wav = video.with_suffix(".wav")
        rel = video.relative_to(root)
        speaker = rel.parts[0] if len(rel.parts) > 1 else talking_speaker(video.stem)
        tokens = [t.lower() for t in re.split(r"[_\-.]", video.stem)]
        emotion = next((words[t] for t in tokens if t in words), "neutral")
        clip_id = "_".join(rel.with_suffix("").parts)
        res.clips.append(ClipRecord("talking", speaker, emotion,
                                    0.0 if emotion == "neutral" else 1.0, str(video),
                                    str(wav if wav.exists() else video), clip_id))
    if not res.clips:
        res.skip("no video files")
    return res


SCANNERS = {"mead": scan_mead, "crema-d": scan_crema_d, "ravdess": scan_ravdess,
            "talking": scan_talking}


def detect_kind(root: str | os.PathLike) -> str:
    """Which dataset a folder holds, from its layout and names."""
    root = Path(root)
    if any(root.glob("video/*/*/level_*")) or any(root.glob("*/video/*/*/level_*")):
        return "mead"
    for p in root.rglob("*"):
        if _CREMA.fullmatch(p.stem):
            return "crema-d"
        if _RAVDESS.fullmatch(p.stem):
            return "ravdess"
    raise ValueError(f"{root}: no MEAD, CREMA-D or RAVDESS layout found (name the kind)")


def scan(root: str | os.PathLike, kind: str = "auto", view: str = "front") -> ScanResult:
    """The clips of a dataset folder (``view``: MEAD's camera)."""
    if not Path(root).is_dir():
        raise ValueError(f"{root}: not a folder")
    kind = detect_kind(root) if kind == "auto" else kind
    if kind not in SCANNERS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose {', '.join(SCANNERS)}")
    return scan_mead(root, view) if kind == "mead" else SCANNERS[kind](root)
