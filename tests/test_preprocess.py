"""etf preprocess on a fake MEAD dataset rendered by our own engine, then G_L training."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(shutil.which("flite") is None, reason="needs Debian flite")


def _speech_model(path):
    from etf_models.checkpoint import save_checkpoint
    from etf_models.deepspeech import DeepSpeech, DeepSpeechConfig

    torch.manual_seed(0)
    cfg = DeepSpeechConfig(n_hidden=32, n_cell=32, n_context=3)
    save_checkpoint(path, "deepspeech", cfg.to_dict(), DeepSpeech(cfg).state_dict())
    return str(path)


@pytest.fixture(scope="module")
def fake_mead(tmp_path_factory):
    """M001 (happy level_3, surprised level_2, neutral level_1) and a corrupt clip."""
    import subprocess

    import av

    from server.cli import main

    root = tmp_path_factory.mktemp("mead")
    wav = root / "say.wav"
    subprocess.run(["flite", "-voice", "slt", "-t", "a quick test of the face", "-o",
                    str(wav)], check=True)
    for emo, level in (("happy", 3), ("surprised", 2), ("neutral", 1)):
        d = root / "M001" / "video" / "front" / emo / f"level_{level}"
        d.mkdir(parents=True)
        ours = {"surprised": "surprise"}.get(emo, emo)
        assert main(["render", "--audio", str(wav), "--emotion", ours, "-q",
                     "-o", str(d / "001.mp4")]) == 0
    # MEAD keeps the audio apart: give the neutral clip an .m4a
    a = root / "M001" / "audio" / "neutral" / "level_1"
    a.mkdir(parents=True)
    with av.open(str(d / "001.mp4")) as src, av.open(str(a / "001.m4a"), "w", "ipod") as dst:
        out = dst.add_stream("aac", rate=48000)
        for frame in src.decode(audio=0):
            frame.pts = None
            for p in out.encode(frame):
                dst.mux(p)
        for p in out.encode(None):
            dst.mux(p)
    bad = root / "M001" / "video" / "front" / "sad" / "level_2"
    bad.mkdir(parents=True)
    (bad / "001.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    return root


def test_preprocess_and_train_landmarks(fake_mead, tmp_path, capsys):
    from etf_models.shards import decode_crops, load_landmark_frames
    from server.cli import main

    weights = _speech_model(tmp_path / "speech.pt")
    out = tmp_path / "pre"
    assert main(["preprocess", str(fake_mead), "-o", str(out), "--workers", "1",
                 "--speech-weights", weights, "-q"]) == 0
    said = capsys.readouterr().out
    assert "3 written" in said and "1 skipped" in said and "unreadable video" in said
    shards = sorted((out / "shards").glob("*.npz"))
    assert len(shards) == 3
    with np.load(shards[0]) as z:
        t = len(z["landmarks"])
        assert 30 <= t <= 60 and z["windows"].shape == (t, 6, 29)
        assert z["affine"].shape == (t, 2, 3) and np.isfinite(z["landmarks"]).all()
        crops = decode_crops(z, np.array([0, t - 1]))
        assert crops.shape == (2, 256, 256, 3)
        # the canonical crop puts the eyes where the landmarks say (aligned frames)
        eyes = z["landmarks"][0, 36:48].mean(0)
        assert 100 < eyes[1] < 116 and 120 < eyes[0] < 136
    # the happy clip smiles: its mouth corners sit higher than the neutral clip's
    frames = load_landmark_frames(out)
    assert frames.neutral.shape[1:] == (68, 2)
    happy = frames.emotion[:, 1] == 1
    neutral = frames.emotion[:, 0] == 1
    corners = frames.target[:, [48, 54], 1].mean(1)
    assert corners[happy].mean() < corners[neutral].mean() - 1.0
    # resumable: a second run writes nothing new
    assert main(["preprocess", str(fake_mead), "-o", str(out), "--workers", "1",
                 "--speech-weights", weights, "-q"]) == 0
    assert "0 written, 3 already done" in capsys.readouterr().out

    gl = tmp_path / "gl.pt"
    assert main(["train", "landmarks", "--data", str(out), "-o", str(gl), "--steps", "40",
                 "--lr", "1e-3", "--save-every", "20", "--log-every", "20",
                 "--threads", "1"]) == 0
    from etf_models.landmark_train import load_landmark_model

    meta = torch.load(gl, weights_only=True)["meta"]
    assert meta["steps"] == 40
    # it learns on the fake MEAD frames: the vertex loss falls
    assert meta["history"][-1]["ver"] < 0.7 * meta["history"][0]["ver"], meta["history"]
    assert load_landmark_model(gl).config.n_points == 68
    assert main(["train", "landmarks", "--data", str(out), "-o", str(gl), "--steps", "60",
                 "--save-every", "20", "--threads", "1"]) == 0
    assert "resumed" in capsys.readouterr().out


def test_preprocess_bad_roots(tmp_path, capsys):
    from server.cli import main

    assert main(["preprocess", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    (tmp_path / "M002" / "video" / "front" / "contempt" / "level_1").mkdir(parents=True)
    assert main(["preprocess", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "no usable clips" in capsys.readouterr().err


def test_texture_training_and_one_shot(fake_mead, tmp_path):
    from engines.recordings.preprocess import preprocess
    from etf_models.datasets import scan
    from etf_models.texture_flow import TextureFlowConfig
    from etf_models.texture_train import (
        TextureFrames,
        TextureTrainConfig,
        TextureTrainer,
        Vgg16Features,
        adapt,
        load_texture_model,
    )

    out = tmp_path / "pre"
    preprocess(scan(fake_mead).clips, out, workers=1,
               speech_weights=_speech_model(tmp_path / "speech.pt"))
    data = TextureFrames(out)
    src, src_lm, tgt, tgt_lm, emo, inten = data.sample(2, np.random.default_rng(0))
    assert src.shape == tgt.shape == (2, 3, 256, 256) and src.min() >= -1
    assert emo.shape == (2, 7) and emo.sum() == 2
    tiny = TextureFlowConfig(enc=(8, 12, 16), motion=(16, 24, 32), disc=(8, 16, 32))
    said: list[str] = []
    trainer = TextureTrainer(tiny, TextureTrainConfig(batch=2), log=said.append)
    assert "substitute" in said[0]  # no VGG16 weights: the log says what is used instead
    hist = trainer.fit(data, 4, log_every=2, log=said.append)
    assert all(np.isfinite(h["total"]) for h in hist) and trainer.steps == 4
    path = tmp_path / "gt.pt"
    trainer.save(path)
    again = TextureTrainer(tiny, TextureTrainConfig(batch=2), log=said.append)
    again.resume(path)
    assert again.steps == 4
    g = load_texture_model(path)

    # one-shot adaptation: 5 steps on the photo itself, only encoder and decoder move
    from etf_models.shards import decode_crops

    shard = np.load(sorted((out / "shards").glob("*.npz"))[0])
    photo, lm = decode_crops(shard, np.array([0]))[0], shard["landmarks"][0]
    motion_before = [p.clone() for p in g.motion.parameters()]
    enc_before = [p.clone() for p in g.encoder.parameters()]
    res = adapt(g, photo, lm, iterations=5, lr=1e-3)
    assert res["l1_after"] < res["l1_before"] and res["seconds"] > 0
    assert all(torch.equal(a, b) for a, b in zip(motion_before, g.motion.parameters(),
                                                 strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(enc_before, g.encoder.parameters(),
                                                     strict=True))
    assert all(p.requires_grad for p in g.parameters())
    with pytest.raises(ValueError, match="1 to 5"):
        adapt(g, photo, lm, iterations=6)

    # the perceptual loss takes the user's torchvision VGG16 file
    vgg_file = tmp_path / "vgg16.pth"
    ref = Vgg16Features()
    torch.save({k: v for k, v in ref.state_dict().items() if k.startswith("features.")}
               | {"classifier.0.weight": torch.zeros(2, 2)}, vgg_file)
    vgg = Vgg16Features.from_file(vgg_file)
    feats = vgg(src)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    assert TextureTrainer(tiny, TextureTrainConfig(), vgg=vgg, log=said.append).perceptual \
        == "vgg16"
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable VGG16"):
        Vgg16Features.from_file(tmp_path / "junk.pth")


def test_render_with_neural_engines(fake_mead, tmp_path, capsys):
    import av

    from server.cli import main

    weights = tmp_path / "weights"
    weights.mkdir()
    speech = _speech_model(weights / "speech.pt")
    out = tmp_path / "pre"
    assert main(["preprocess", str(fake_mead), "-o", str(out), "--workers", "1",
                 "--speech-weights", speech, "-q"]) == 0
    assert main(["train", "landmarks", "--data", str(out), "-o",
                 str(weights / "landmarks.pt"), "--steps", "20", "--threads", "1"]) == 0
    assert main(["train", "texture", "--data", str(out), "-o", str(weights / "texture.pt"),
                 "--steps", "2", "--batch", "1", "--channels", "tiny", "--threads", "1"]) == 0
    said = capsys.readouterr().out
    assert "perceptual loss: discriminator feature matching" in said

    wav = tmp_path / "say.wav"
    from engines.media.audio_io import save_wav

    save_wav(wav, np.zeros(16000, np.float32), 16000)
    video = tmp_path / "neural.mp4"
    assert main(["render", "--audio", str(wav), "--landmarks", "gcn", "--texture", "flow",
                 "--weights", str(weights), "--adapt", "2", "--emotion", "happy", "-q",
                 "-o", str(video)]) == 0
    assert "one-shot adaptation: 2 iterations" in capsys.readouterr().out
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 25 and frames[0].shape == (512, 512, 3)
    # the per-frame graphs export to ONNX, checked against PyTorch
    assert main(["export", "--weights", str(weights), "-o", str(tmp_path / "onnx")]) == 0
    said = capsys.readouterr().out
    assert said.count("max |diff|") == 2
    assert (tmp_path / "onnx" / "landmarks.onnx").is_file()
    assert (tmp_path / "onnx" / "texture.onnx").is_file()
    assert main(["export", "--weights", str(tmp_path), "-o", str(tmp_path / "o2")]) == 2
    # G_L with the mesh warp, too
    assert main(["render", "--audio", str(wav), "--landmarks", "gcn", "--weights",
                 str(weights), "-q", "-o", str(tmp_path / "gcn_warp.mp4")]) == 0

    # one-shot adaptation stored next to the identity file, then used by render
    import cv2

    from engines.face.default_face import default_photo

    photo = tmp_path / "me.png"
    cv2.imwrite(str(photo), cv2.cvtColor(default_photo(), cv2.COLOR_RGB2BGR))
    ident = tmp_path / "me.npz"
    assert main(["enroll", str(photo), "-o", str(ident)]) == 0
    assert main(["adapt", "--identity", str(ident), "--weights", str(weights),
                 "--iterations", "2"]) == 0
    assert (tmp_path / "me.texture.pt").is_file()
    capsys.readouterr()
    assert main(["render", "--identity", str(ident), "--audio", str(wav), "--texture", "flow",
                 "--weights", str(weights), "-q", "-o", str(tmp_path / "adapted.mp4")]) == 0
    assert "using the one-shot adaptation stored in" in capsys.readouterr().out
    assert main(["adapt", "--identity", str(ident), "--weights", str(weights),
                 "--iterations", "9"]) == 2
    # an adaptation of another G_T is refused
    assert main(["train", "texture", "--data", str(out), "-o", str(weights / "texture.pt"),
                 "--steps", "3", "--batch", "1", "--channels", "tiny", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["render", "--identity", str(ident), "--audio", str(wav), "--texture", "flow",
                 "--weights", str(weights), "-q", "-o", str(tmp_path / "adapted.mp4")]) == 2
    assert "adapts another texture model" in capsys.readouterr().err

    capsys.readouterr()
    assert main(["render", "--landmarks", "gcn", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "needs trained weights" in capsys.readouterr().err
    assert main(["render", "--texture", "flow", "--weights", str(tmp_path),
                 "-o", str(tmp_path / "x.mp4")]) == 2
    assert "texture.pt does not exist" in capsys.readouterr().err
    assert main(["render", "--adapt", "3", "-o", str(tmp_path / "x.mp4")]) == 2
    assert "needs --texture flow" in capsys.readouterr().err


def test_torchrun_ddp_on_two_cpu_processes(fake_mead, tmp_path):
    """Multi-GPU training path, exercised with 2 CPU processes on gloo."""
    import subprocess
    import sys

    from engines.recordings.preprocess import preprocess
    from etf_models.datasets import scan

    out = tmp_path / "pre"
    speech = _speech_model(tmp_path / "speech.pt")
    preprocess(scan(fake_mead).clips, out, workers=1, speech_weights=speech)
    for kind, extra in (("landmarks", []), ("texture", ["--channels", "tiny", "--batch", "1"])):
        ckpt = tmp_path / f"{kind}.pt"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "server.cli", "train", kind, "--data", str(out),
               "-o", str(ckpt), "--steps", "4", "--save-every", "4", "--log-every", "2",
               "--threads", "1", "--device", "cpu", *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "on cpu, 2 process(es)" in r.stdout
        assert "ddp: 2 ranks, parameters in sync" in r.stdout
        assert r.stdout.count(f"etf train {kind}: 4 steps") == 1  # rank 0 speaks and saves
        assert torch.load(ckpt, weights_only=True)["meta"]["steps"] == 4


def test_teardown_frees_ddp_before_the_group_goes(tmp_path):
    """DDP modules sit in reference cycles; teardown must free them (and their reducers'
    work) while the group and the interpreter live, not leave them to Python's exit, where
    freeing them could abort the process."""
    import subprocess
    import sys

    code = f"""
import gc, weakref, torch
from etf_models import distributed as dist
gc.disable()  # only an explicit collection may free the cycle
torch.distributed.init_process_group("gloo", init_method="file://{tmp_path / 'store'}",
                                     rank=0, world_size=1)
ddp = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
ddp(torch.randn(2, 4)).sum().backward()
ref = weakref.ref(ddp)
del ddp
assert ref() is not None, "DDP is no longer in a cycle: this test proves nothing"
dist.teardown()
assert ref() is None, "teardown left the DDP module alive"
assert not torch.distributed.is_initialized()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_neural_engines_refuse_foreign_files(tmp_path):
    from engines.neural.networks import FlowTextureEngine, GCNLandmarkEngine, NeuralWeightsError

    junk = tmp_path / "landmarks.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(NeuralWeightsError, match="cannot use landmark model"):
        GCNLandmarkEngine(junk)
    with pytest.raises(NeuralWeightsError, match="cannot use texture model"):
        FlowTextureEngine(_speech_model(tmp_path / "speech.pt"))  # a speech model, not G_T
