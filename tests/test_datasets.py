"""Dataset readers: MEAD folders, CREMA-D and RAVDESS names (fake trees, empty files)."""

from __future__ import annotations

import pytest

from etf_models.datasets import detect_kind, scan


def _touch(root, *paths):
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"")


def test_mead_layout(tmp_path):
    _touch(tmp_path, "M003/video/front/happy/level_3/001.mp4",
           "M003/audio/happy/level_3/001.m4a",
           "M003/video/front/surprised/level_1/002.mp4",
           "M003/video/left_30/happy/level_3/001.mp4",  # another view: not taken
           "M003/video/front/contempt/level_2/003.mp4",
           "M003/video/front/happy/level_9/004.mp4",
           "W009/video/front/neutral/level_1/001.mp4",
           "W009/audio/neutral/level_1/001.m4a")
    assert detect_kind(tmp_path) == "mead"
    res = scan(tmp_path)
    got = {(c.speaker, c.emotion, round(c.intensity, 3), c.audio.endswith(".m4a"))
           for c in res.clips}
    assert got == {("M003", "happy", 1.0, True), ("M003", "surprise", 0.333, False),
                   ("W009", "neutral", 0.333, True)}
    assert res.skipped["contempt (not one of the seven emotions)"] == 1
    assert sum(res.skipped.values()) == 2
    assert len({c.clip_id for c in res.clips}) == 3
    # a single speaker's folder works as the root too
    assert len(scan(tmp_path / "M003", "mead").clips) == 2


def test_crema_d_names(tmp_path):
    _touch(tmp_path, "VideoFlash/1001_DFA_ANG_XX.flv", "AudioWAV/1001_DFA_ANG_XX.wav",
           "VideoFlash/1002_IEO_HAP_HI.flv", "VideoFlash/1003_IEO_XYZ_HI.flv",
           "VideoFlash/readme.mp4")
    assert detect_kind(tmp_path) == "crema-d"
    res = scan(tmp_path)
    by = {c.clip_id: c for c in res.clips}
    assert by["1001_DFA_ANG_XX"].emotion == "angry"
    assert by["1001_DFA_ANG_XX"].audio.endswith("AudioWAV/1001_DFA_ANG_XX.wav")
    assert by["1002_IEO_HAP_HI"].intensity == 1.0
    assert by["1002_IEO_HAP_HI"].audio == by["1002_IEO_HAP_HI"].video
    assert sum(res.skipped.values()) == 2


def test_ravdess_names(tmp_path):
    _touch(tmp_path, "Actor_12/01-01-06-02-01-01-12.mp4",  # fearful, strong
           "Actor_12/01-01-01-01-01-01-12.mp4",  # neutral
           "Actor_12/02-01-06-02-01-01-12.mp4",  # video only
           "Actor_12/01-02-03-01-01-01-12.mp4",  # song
           "Actor_12/01-01-02-01-01-01-12.mp4")  # calm
    res = scan(tmp_path, "ravdess")
    assert sorted((c.emotion, c.intensity, c.speaker) for c in res.clips) == [
        ("fear", 1.0, "actor12"), ("neutral", 0.5, "actor12")]
    assert sum(res.skipped.values()) == 3


def test_bad_roots(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        scan(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="no MEAD, CREMA-D or RAVDESS"):
        scan(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        scan(tmp_path, "voxceleb")


def test_talking_folder(tmp_path):
    _touch(tmp_path, "styletalk_Obama_clip1.mp4", "styletalk_Obama_clip1.wav",
           "styletalk_Obama_clip2.mp4", "styletalk_andrew_clip_1.mp4", "grid_bbaf2n.mpg",
           "mead_M030_sad_3_001.mp4", "notes.txt", "Ann/take_1.mov")
    res = scan(tmp_path, "talking")
    got = {c.clip_id: (c.speaker, c.emotion, c.intensity, c.audio.rsplit(".", 1)[1])
           for c in res.clips}
    assert got == {
        "styletalk_Obama_clip1": ("styletalk_Obama", "neutral", 0.0, "wav"),  # sidecar
        "styletalk_Obama_clip2": ("styletalk_Obama", "neutral", 0.0, "mp4"),  # own track
        "styletalk_andrew_clip_1": ("styletalk_andrew", "neutral", 0.0, "mp4"),
        "grid_bbaf2n": ("grid_bbaf2n", "neutral", 0.0, "mpg"),
        "mead_M030_sad_3_001": ("mead_M030_sad", "sad", 1.0, "mp4"),
        "Ann_take_1": ("Ann", "neutral", 0.0, "mov"),  # <speaker>/<clip>
    }
    assert scan(tmp_path / "Ann", "talking").clips[0].speaker == "take"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert scan(empty, "talking").skipped["no video files"] == 1
