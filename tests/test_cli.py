"""`etf render` and `etf enroll` as a user runs them, good input and bad."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from engines.media.audio_io import save_wav
from engines.media.video_writer import probe_media
from server.cli import main


def test_render_builtin_face_and_sentence(tmp_path, capsys):
    out = tmp_path / "hello.mp4"
    assert main(["render", "--emotion", "happy", "--intensity", "high", "-q", "-o", str(out)]) == 0
    info = probe_media(out)
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert abs(info["video_duration_s"] - info["audio_duration_s"]) <= 1 / 25 + 1e-3
    assert info["width"] == 512 and info["height"] == 512 and info["fps"] == 25


def test_render_30fps_stereo_44k_input(tmp_path):
    t = np.arange(int(1.5 * 44100)) / 44100
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    wav = tmp_path / "tone.wav"
    import wave

    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes((np.repeat(tone[:, None], 2, axis=1) * 32767).astype("<i2").tobytes())
    out = tmp_path / "tone.mp4"
    assert main(["render", "--audio", str(wav), "--fps", "30", "-q", "-o", str(out)]) == 0
    info = probe_media(out)
    assert info["n_frames"] == 45
    assert abs(info["audio_duration_s"] - 1.5) < 1 / 30


def test_render_silent_and_empty_audio(tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    save_wav(silent, np.zeros(16000, np.float32), 16000)
    out = tmp_path / "silent.mp4"
    assert main(["render", "--audio", str(silent), "-q", "-o", str(out)]) == 0
    assert probe_media(out)["n_frames"] == 25
    empty = tmp_path / "empty.wav"
    save_wav(empty, np.zeros(0, np.float32), 16000)
    out2 = tmp_path / "empty.mp4"
    assert main(["render", "--audio", str(empty), "-q", "-o", str(out2)]) == 0
    assert probe_media(out2)["n_frames"] == 50
    assert "holds no audio" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--emotion", "joy"], "unknown emotion 'joy'"),
        (["--intensity", "1.5"], "outside 0..1"),
        (["--intensity", "loud"], "not a number"),
        (["--fps", "0"], "outside 1..60"),
        (["--audio", "/nonexistent/x.wav"], "no such file"),
        (["--identity", "/nonexistent/x.npz"], "no such identity file"),
    ],
)
def test_render_bad_arguments(tmp_path, capsys, args, message):
    code = main(["render", *args, "-q", "-o", str(tmp_path / "x.mp4")])
    assert code == 2
    assert message in capsys.readouterr().err


def test_render_corrupt_audio_and_faceless_photo(tmp_path, capsys):
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(bytes(range(256)) * 20)
    assert main(["render", "--audio", str(junk), "-q", "-o", str(tmp_path / "a.mp4")]) == 2
    assert "junk.mp3" in capsys.readouterr().err
    import cv2

    grey = tmp_path / "wall.png"
    cv2.imwrite(str(grey), np.full((300, 300, 3), 90, np.uint8))
    assert main(["render", "--image", str(grey), "-q", "-o", str(tmp_path / "b.mp4")]) == 2
    assert "no face" in capsys.readouterr().err


def test_enroll_then_render_identity(tmp_path, capsys):
    import cv2

    from engines.face.default_face import default_photo

    photo = tmp_path / "me.png"
    cv2.imwrite(str(photo), cv2.cvtColor(default_photo(), cv2.COLOR_RGB2BGR))
    ident = tmp_path / "me.npz"
    assert main(["enroll", str(photo), "-o", str(ident)]) == 0
    silent = tmp_path / "s.wav"
    save_wav(silent, np.zeros(8000, np.float32), 16000)
    out = tmp_path / "me.mp4"
    assert main(["render", "--identity", str(ident), "--audio", str(silent), "-q",
                 "-o", str(out)]) == 0
    assert probe_media(out)["n_frames"] == 13


@pytest.mark.parametrize("args,words", [
    (["--engine", "neural"], "needs --weights DIR"),
    (["--engine", "neural", "--weights", "WEIGHTS", "--backend", "cuda+turbo"],
     "unknown backend option"),
    (["--engine", "neural", "--weights", "WEIGHTS", "--max-batch", "0"], "--max-batch 0"),
    (["--engine", "neural", "--weights", "WEIGHTS"], "landmarks.pt does not exist"),
    (["--engine", "magic"], "--engine must be default or neural"),
])
def test_serve_neural_engine_bad_options(tmp_path, capsys, args, words):
    args = [str(tmp_path) if a == "WEIGHTS" else a for a in args]
    assert main(["serve", "--port", "0", *args]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("args,words", [
    (["--init", "MISSING"], "no such speech model"),
    (["--extra-corpus", "MISSING"], "no such folder"),
    (["--engines", "flite,mbrola"], "unknown ['mbrola']"),
    (["--device", "tpu"], "cpu, cuda or cuda:N"),
])
def test_train_speech_bad_options(tmp_path, capsys, args, words):
    pytest.importorskip("torch")
    args = [str(tmp_path / "missing") if a == "MISSING" else a for a in args]
    code = main(["train", "speech", "-o", str(tmp_path / "s.pt"), "--corpus",
                 str(tmp_path / "c"), "-q", *args])
    assert code == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before any synthesis


@pytest.mark.skipif(shutil.which("flite") is None, reason="needs Debian flite")
def test_speech_corpus_command(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["speech", "corpus", "--hours", str(12 / 3600), "--engines", "flite",
                 "--workers", "1", "-q", "-o", str(out)]) == 0
    summary = json.loads((out / "corpus.json").read_text())
    assert all(v.startswith("flite:") for v in summary["voices"])
    assert 12 <= summary["hours"] * 3600 < 40  # the one shard stops near --hours
    assert "corpus ready" in capsys.readouterr().out


def test_speech_calibrate_bad_inputs(tmp_path, capsys):
    pytest.importorskip("torch")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["speech", "calibrate", str(junk), "--pocketsphinx", str(tmp_path),
                 "-o", str(tmp_path / "out.pt")]) == 2
    assert "etf speech calibrate" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_serve_names_the_port_in_use_and_keeps_quiet_about_the_builtin_face(capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert main(["serve", "--port", "0", "--control-port", str(taken)]) == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{taken} (control WebSocket)" in err, err
    assert "--control-port" in err
    assert "photo" not in err, "the built-in face is not the user's photo"
