"""The ``etf`` command line: ``etf enroll``, ``render``, ``serve`` and ``live``.

Errors a user can cause (a bad photo, unreadable audio, an unknown emotion) print one clear
line and exit with status 2; nothing prints a traceback for them.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib import resources

import numpy as np

EXIT_USAGE = 2
#: Rendering empty audio gives this much idle, blinking face instead of an empty file.
EMPTY_AUDIO_S = 2.0


def builtin_sentence() -> str:
    """Path of the built-in sentence (synthetic speech shipped with the package)."""
    return str(resources.files("engines.audio.assets").joinpath("hello.wav"))


def _fail(msg: str) -> int:
    print(f"etf: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _load_identity(args):
    from engines.face.default_face import default_identity
    from engines.face.enrollment import EnrollOptions, enroll
    from engines.face.identity import Identity

    if args.identity:
        return Identity.load(args.identity)
    if args.image:
        return enroll(args.image, EnrollOptions(refuse_multiple=args.single_face))
    return default_identity()


def _photo_warnings(args, identity) -> None:
    """What enrollment corrected in the user's photo (nothing for the built-in face)."""
    if args.identity or args.image:
        for w in identity.warnings:
            print(f"warning: {w}", file=sys.stderr)


def cmd_enroll(args) -> int:
    from engines.face.enrollment import EnrollOptions, enroll

    t = time.perf_counter()
    identity = enroll(args.photo, EnrollOptions(refuse_multiple=args.single_face))
    identity.save(args.output)
    for w in identity.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"enrolled {args.photo} -> {args.output} in {time.perf_counter() - t:.2f} s")
    return 0


def cmd_render(args) -> int:
    from tqdm import tqdm

    from engines.media.audio_io import load_audio
    from engines.media.video_writer import Mp4Writer
    from engines.motion.emotion_state import EmotionState, parse_intensity
    from engines.render.pipeline import FaceAnimator

    intensity = parse_intensity(args.intensity)
    if ":" in args.emotion:  # a mix: happy:0.6,surprise:0.3 (validated, errors named)
        emotion = EmotionState(intensity=intensity, mix=args.emotion)
    else:
        emotion = EmotionState(args.emotion, intensity)  # validates the name
    if not 1 <= args.fps <= 60:
        return _fail(f"--fps {args.fps} is outside 1..60")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        return _fail(f"output folder {out_dir} does not exist")
    audio_path = args.audio or builtin_sentence()
    audio = load_audio(audio_path, 16000)
    mux_audio = load_audio(audio_path, 48000)
    if len(audio) == 0:
        print(f"warning: {audio_path} holds no audio; rendering {EMPTY_AUDIO_S:.0f} s of an "
              "idle face", file=sys.stderr)
        audio = np.zeros(int(EMPTY_AUDIO_S * 16000), np.float32)
        mux_audio = np.zeros(int(EMPTY_AUDIO_S * 48000), np.float32)
    identity = _load_identity(args)
    _photo_warnings(args, identity)
    if args.adapt and args.texture != "flow":
        return _fail("--adapt fine-tunes G_T: it needs --texture flow")
    if args.landmarks == "default" and args.texture == "warp":
        animator = FaceAnimator(identity, fps=args.fps, emotion=emotion, seed=args.seed)
        images = (frame.image for frame in animator.render_all(audio))
    else:
        from engines.animators import NeuralAnimator
        from engines.neural.networks import adapted_path

        stored = adapted_path(args.identity) if args.identity else None
        stored = stored if stored is not None and stored.is_file() and not args.adapt else None
        neural = NeuralAnimator(identity, args.fps, emotion, landmarks=args.landmarks,
                                texture=args.texture, weights=args.weights, seed=args.seed,
                                adapt_iterations=args.adapt,
                                adapted=stored if args.texture == "flow" else None)
        if stored is not None and args.texture == "flow":
            print(f"using the one-shot adaptation stored in {stored}")
        elif neural.adaptation:
            print(f"one-shot adaptation: {neural.adaptation['iterations']} iterations in "
                  f"{neural.adaptation['seconds']:.2f} s (L1 {neural.adaptation['l1_before']:.4f}"
                  f" -> {neural.adaptation['l1_after']:.4f})")
        images = (image for image, _ in neural.render_all(audio))
    h, w = identity.photo.shape[:2]
    n_frames = int(np.ceil(len(audio) / 16000 * args.fps - 1e-6))
    t0 = time.perf_counter()
    with Mp4Writer(args.output, w, h, fps=args.fps, audio=mux_audio, audio_rate=48000) as out:
        bar = tqdm(total=n_frames, unit="frame", desc="render", disable=args.quiet)
        for image in images:
            out.write(image)
            bar.update(1)
        bar.close()
    dt = time.perf_counter() - t0
    print(f"wrote {args.output}: {n_frames} frames ({n_frames / args.fps:.2f} s) "
          f"in {dt:.1f} s ({n_frames / max(dt, 1e-9):.0f} fps)")
    return 0


def cmd_adapt(args) -> int:
    from engines.face.identity import Identity
    from engines.neural.networks import TEXTURE_FILE, FlowTextureEngine, adapted_path, weights_file

    if not 1 <= args.iterations <= 5:
        return _fail("--iterations must be 1 to 5 (the paper's one-shot adaptation)")
    identity = Identity.load(args.identity)
    engine = FlowTextureEngine(weights_file(args.weights, TEXTURE_FILE, "etf adapt",
                                            "etf train texture"))
    model, report = engine.adapt(identity, args.iterations)
    out = args.output or str(adapted_path(args.identity))
    engine.save_adapted(model, report, identity, out)
    print(f"adapted G_T to {args.identity} in {report['seconds']:.2f} s "
          f"({args.iterations} iterations, L1 {report['l1_before']:.4f} -> "
          f"{report['l1_after']:.4f}) -> {out}")
    return 0


def cmd_export(args) -> int:
    _need_torch()
    from engines.neural.networks import LANDMARKS_FILE, TEXTURE_FILE
    from etf_models.export import check_onnx, export_gl, export_gt, gl_example, gt_example
    from etf_models.landmark_gcn import PerFrameGL
    from etf_models.landmark_train import load_landmark_model
    from etf_models.texture_flow import PerFrameGT
    from etf_models.texture_train import load_texture_model

    os.makedirs(args.output, exist_ok=True)
    jobs = [(LANDMARKS_FILE, load_landmark_model, export_gl, gl_example, PerFrameGL),
            (TEXTURE_FILE, load_texture_model, export_gt, gt_example, PerFrameGT)]
    done = 0
    for name, load, export, example, per_frame in jobs:
        src = os.path.join(args.weights, name)
        if not os.path.isfile(src):
            continue
        model = load(src)
        dst = os.path.join(args.output, name.replace(".pt", ".onnx"))
        data = export(model, dst)
        err = check_onnx(data, per_frame(model), example(model, batch=2, seed=1))
        if err > 1e-3:
            return _fail(f"{dst}: ONNX Runtime differs from PyTorch by {err:.2e} (> 1e-3)")
        print(f"wrote {dst} ({len(data) / 1e6:.1f} MB); ONNX Runtime vs PyTorch max "
              f"|diff| {err:.1e}")
        done += 1
    if not done:
        return _fail(f"{args.weights}: no {LANDMARKS_FILE} or {TEXTURE_FILE} to export")
    return 0


def cmd_serve(args) -> int:
    import asyncio

    from engines.motion.emotion_state import parse_intensity
    from server.app import ServerConfig, serve_forever
    from server.session import SessionConfig

    if args.fps not in (25.0, 30.0):
        return _fail(f"--fps must be 25 or 30, got {args.fps:g}")
    if not 1 <= args.max_sessions <= 256:
        return _fail(f"--max-sessions {args.max_sessions} is outside 1..256")
    if not 0.0 <= args.admit_headroom <= 1.0:
        return _fail(f"--admit-headroom {args.admit_headroom:g} is outside 0..1")
    if not 64 <= args.max_side <= 2048:
        return _fail(f"--max-side {args.max_side} is outside 64..2048")
    token = args.token or os.environ.get("ETF_TOKEN") or None
    session = SessionConfig(
        fps=args.fps, emotion=args.emotion, intensity=parse_intensity(args.intensity),
        phone_lookahead_ms=args.lookahead_ms, coart_future_ms=args.coart_ms,
        jitter_ms=args.jitter_ms, jitter_min_ms=args.jitter_min_ms,
        jitter_adaptive=not args.jitter_fixed, compute_budget_ms=args.compute_budget_ms,
    )
    identity = _load_identity(args).for_video(args.max_side)
    _photo_warnings(args, identity)
    config = ServerConfig(host=args.host, port=args.port, control_port=args.control_port,
                          token=token, max_sessions=args.max_sessions, workers=args.workers,
                          public_control_url=args.public_control_url,
                          allowed_origins=tuple(args.allow_origin or ()),
                          admit_headroom=args.admit_headroom,
                          render_processes=args.render_in == "processes")
    neural = None
    if args.engine == "neural":
        neural = _neural_engines(args, identity)
        if isinstance(neural, int):
            return neural
    elif args.engine != "default":
        return _fail(f"--engine must be default or neural, got {args.engine!r}")
    try:
        asyncio.run(serve_forever(identity, config, session, neural=neural))
    except OSError as e:  # server.app.PortError names the port and what it was for
        return _fail(e.strerror or str(e))
    finally:
        if neural is not None:
            neural.close()
    return 0


def _neural_engines(args, identity):
    """The live neural engines for ``etf serve --engine neural``, or an exit status."""
    from engines.neural.backends import BackendSpec, BackendUnavailable
    from engines.neural.live import NeuralConfig, NeuralEngines
    from engines.neural.networks import NeuralWeightsError

    if args.weights is None:
        return _fail("--engine neural needs --weights DIR (landmarks.pt and texture.pt from "
                     "'etf train landmarks' and 'etf train texture')")
    try:
        BackendSpec.parse(args.backend)
    except ValueError as e:
        return _fail(str(e))
    if not 1 <= args.max_batch <= 256:
        return _fail(f"--max-batch {args.max_batch} is outside 1..256")
    if not 0.0 <= args.batch_wait_ms <= 20.0:
        return _fail(f"--batch-wait-ms {args.batch_wait_ms} is outside 0..20")
    config = NeuralConfig(weights=args.weights, backend=args.backend,
                          max_batch=min(args.max_batch, args.max_sessions),
                          max_wait_ms=args.batch_wait_ms, capacity=args.max_sessions)
    t = time.perf_counter()
    try:
        engines = NeuralEngines(identity, config, identity_file=args.identity)
    except (NeuralWeightsError, BackendUnavailable) as e:
        return _fail(str(e))
    print(f"etf serve: neural engines ready on {args.backend} in "
          f"{time.perf_counter() - t:.1f} s (G_L {engines.gl.build_s:.2f} s, "
          f"G_T {engines.gt.build_s:.2f} s to build)", file=sys.stderr)
    return engines


def cmd_live(args) -> int:
    from engines.motion.emotion_state import parse_intensity
    from server.live import LiveConfig, LiveError, run_live
    from server.session import SessionConfig

    if args.fps not in (25.0, 30.0):
        return _fail(f"--fps must be 25 or 30, got {args.fps:g}")
    if args.duration is not None and args.duration <= 0:
        return _fail("--duration must be positive")
    session = SessionConfig(fps=args.fps, emotion=args.emotion,
                            intensity=parse_intensity(args.intensity),
                            phone_lookahead_ms=args.lookahead_ms,
                            coart_future_ms=args.coart_ms, jitter_ms=args.jitter_ms,
                            jitter_min_ms=args.jitter_min_ms,
                            jitter_adaptive=not args.jitter_fixed,
                            compute_budget_ms=args.compute_budget_ms)
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    config = LiveConfig(output=args.output, window=args.window, audio_file=args.audio,
                        device=device, duration_s=args.duration, host=args.host,
                        control_port=args.control_port,
                        token=args.token or os.environ.get("ETF_TOKEN") or None)
    identity = _load_identity(args).for_video(args.max_side)
    try:
        stats = run_live(identity, config, session)
    except LiveError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(f"cannot listen on {args.host}:{args.control_port}: {e.strerror or e}")
    print(f"etf live: {stats.get('frames_sent', 0)} frames, "
          f"{stats.get('frames_dropped', 0)} dropped, "
          f"compute p99 {stats.get('latency_ms', {}).get('tick', {}).get('p99', 0):.1f} ms")
    return 0


def _need_torch() -> None:
    from engines.audio.speech_frontend import SpeechModelError

    try:
        import torch  # noqa: F401
    except ImportError:
        raise SpeechModelError("etf speech needs PyTorch: pip install 'etf-avatar[train]' "
                               "(CPU: torch==2.13.0)") from None


def _speech_frontend(args):
    from engines.audio.speech_frontend import DeepSpeechFrontend

    _need_torch()
    if not args.weights:
        return DeepSpeechFrontend.default()
    return DeepSpeechFrontend.from_checkpoint(args.weights)


def cmd_speech_features(args) -> int:
    from engines.audio.speech_frontend import audio_to_windows
    from engines.media.audio_io import load_audio

    if args.fps not in (25.0, 30.0):
        return _fail(f"--fps must be 25 or 30, got {args.fps:g}")
    frontend = _speech_frontend(args)
    audio = load_audio(args.audio, 16000)
    windows = audio_to_windows(frontend, audio, args.fps)
    np.save(args.output, windows)
    print(f"wrote {args.output}: {windows.shape[0]} frames x 6 x 29 at {args.fps:g} fps "
          + (f"(lookahead {frontend.lookahead_ms + 70:.0f} ms)" if frontend.streaming
             else "(an offline model: it read the whole utterance)"))
    return 0


def cmd_speech_transcribe(args) -> int:
    import torch

    from engines.media.audio_io import load_audio
    from etf_models.deepspeech import greedy_decode

    frontend = _speech_frontend(args)
    logits = frontend.process(load_audio(args.audio, 16000))
    print(greedy_decode(torch.from_numpy(logits)))
    return 0


def cmd_speech_import(args) -> int:
    _need_torch()
    from etf_models.speech_import import import_to_checkpoint

    summary = import_to_checkpoint(args.source, args.output)
    print(f"imported {args.source} -> {args.output}: "
          + ", ".join(f"{k} {v}" for k, v in summary.items() if k != "source"))
    if not summary["streaming"]:
        print("note: a bidirectional (0.1.x) model needs the whole utterance: etf speech "
              "features / transcribe and etf render use it; live serving refuses it")
    return 0


def _build_speech_corpus(args, folder: str) -> dict | int:
    """Build (or finish) the synthetic corpus ``folder`` for ``--hours`` / ``--seed`` /
    ``--engines``; the summary, or an exit code after a message."""
    from tqdm import tqdm

    from etf_models.speech_corpus import ENGINES, build_corpus, voice_catalogue

    voices = voice_catalogue()
    if args.engines:
        wanted = set(args.engines.split(","))
        if wanted - set(ENGINES):
            return _fail(f"--engines: unknown {sorted(wanted - set(ENGINES))} "
                         f"({', '.join(ENGINES)})")
        voices = [v for v in voices if v.engine in wanted]
    print(f"corpus: {folder} ({args.hours:g} h of synthetic speech, resumable)")
    try:
        with tqdm(total=round(args.hours * 3600), unit="s audio", disable=args.quiet) as bar:
            summary = build_corpus(folder, args.hours, seed=args.seed, workers=args.workers,
                                   voices=voices, vtlp=not args.no_vtlp,
                                   progress=lambda s: bar.update(round(s)))
    except (FileNotFoundError, RuntimeError) as e:
        return _fail(str(e))
    print(f"corpus ready: {summary['hours']} h, {summary['utterances']} utterances, "
          f"{len(summary.get('voices', []))} voices")
    return summary


def _default_corpus(hours: float, seed: int) -> str:
    return os.path.join(os.path.expanduser("~/.cache/etf"),
                        f"speech-corpus-{hours:g}h-seed{seed}")


def cmd_speech_real_corpus(args) -> int:
    from tqdm import tqdm

    from etf_models.speech_real import build_real_corpus

    print(f"real-speech corpus: {args.speech} -> {args.output}")
    try:
        with tqdm(unit="utt", disable=args.quiet) as bar:
            summary = build_real_corpus(args.speech, args.output, copies=args.copies,
                                        seed=args.seed, threads=args.threads,
                                        progress=bar.update)
    except (FileNotFoundError, RuntimeError) as e:
        return _fail(str(e))
    print(f"corpus ready: {summary['hours']} h to train on ({summary['copies']} copies), "
          f"{summary['utterances']['train']} utterances; held out "
          f"{summary['utterances']['heldout']} ({summary['heldout_hours']} h); labels: "
          + ", ".join(f"{k} {v['labels']}" for k, v in summary["by_source"].items()))
    return 0


def cmd_speech_corpus(args) -> int:
    done = _build_speech_corpus(args, args.output or _default_corpus(args.hours, args.seed))
    return done if isinstance(done, int) else 0


def cmd_train_speech(args) -> int:
    _need_torch()
    from etf_models.speech_train import SpeechTrainConfig, resolve_device, train_speech

    try:
        resolve_device(args.device)
    except ValueError as e:
        return _fail(str(e))
    if args.init and not os.path.isfile(args.init):
        return _fail(f"--init {args.init}: no such speech model")
    missing = [d for d in args.extra_corpus if not os.path.isdir(os.path.expanduser(d))]
    if missing:
        return _fail(f"--extra-corpus {missing[0]}: no such folder")
    cfg = SpeechTrainConfig(corpus_hours=args.hours, corpus_seed=args.seed,
                            n_hidden=args.hidden, n_context=args.context, epochs=args.epochs,
                            batch_frames=args.batch_frames, threads=args.threads,
                            seed=args.seed, lr=args.lr, warmup_steps=args.warmup_steps,
                            init=args.init or "", precision=args.precision,
                            extra_corpora=[os.path.abspath(os.path.expanduser(d))
                                           for d in args.extra_corpus])
    from etf_models.speech_real import is_real_corpus

    corpus = args.corpus or _default_corpus(args.hours, args.seed)
    work = args.work or args.output + ".work"
    if not is_real_corpus(corpus):  # a real one is built by 'etf speech real-corpus'
        done = _build_speech_corpus(args, corpus)
        if isinstance(done, int):
            return done
    evals = []
    if args.eval_pocketsphinx:
        evals.append(_commands_eval(args.eval_pocketsphinx))
    for folder in (corpus, *cfg.extra_corpora):
        if is_real_corpus(folder):
            evals.append(_heldout_eval(folder))
    real_eval = (lambda m: {k: v for ev in evals for k, v in ev(m).items()}) if evals else None
    try:
        meta = train_speech(corpus, work, args.output, cfg, real_eval=real_eval,
                            minutes=args.minutes, device=args.device)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    print(f"etf train speech: {meta['steps']} steps, synthetic validation CER "
          f"{meta['synthetic_val_cer']:.3f}, sha256 {meta['sha256']}")
    return 0


def cmd_speech_calibrate(args) -> int:
    _need_torch()
    from etf_models.checkpoint import CheckpointError, sha256_of
    from etf_models.deepspeech import load_deepspeech, save_deepspeech
    from etf_models.speech_evalsets import DatasetError
    from etf_models.speech_train import calibrate_blank

    try:
        model, meta = load_deepspeech(args.model, with_meta=True)
        run = _commands_eval(args.pocketsphinx)
    except (CheckpointError, TypeError, RuntimeError, DatasetError, OSError) as e:
        return _fail(f"etf speech calibrate: {e}")
    model, report = calibrate_blank(model, lambda m: run(m)["commands_cer"])
    meta = {**meta, "blank_calibration": {**report, "on": "pocketsphinx command clips",
                                          "from_sha256": sha256_of(args.model)}}
    sha = save_deepspeech(args.output, model, meta)
    print(f"blank offset {report['offset']:g}: command-clip CER "
          f"{report['cer'][0]:.3f} -> {min(report['cer']):.3f}; wrote {args.output} "
          f"(sha256 {sha})")
    return 0


def _heldout_eval(folder: str):
    """CER per source on a real corpus's held-out speakers (greedy, whole utterance; their
    labels may be pseudo-labels: see its corpus.json)."""
    from etf_models.speech_real import read_heldout
    from etf_models.speech_train import evaluate

    held = read_heldout(folder)

    def run(model) -> dict:
        out: dict = {}
        for source in sorted({h[3] for h in held}):
            mine = [h for h in held if h[3] == source]
            res = evaluate(model, [h[0] for h in mine], [h[1] for h in mine])
            out[f"heldout_{source}_cer"] = round(res["cer"], 4)
        return out

    return run


def _commands_eval(src: str):
    """Validation on the real command clips of a pocketsphinx source tree (not LibriVox,
    which is kept for the final report)."""
    from engines.audio.speech_frontend import DeepSpeechFrontend
    from etf_models.speech_evalsets import decode_streaming, load_eval_sets, score

    clips = load_eval_sets(src, ("commands",))["commands"]

    def run(model) -> dict:
        frontend = DeepSpeechFrontend(model)
        hyps = [decode_streaming(frontend, c.audio)[0] for c in clips]
        res = score(clips, hyps)
        return {"commands_cer": res["cer"], "example": hyps[-1]}

    return run


def cmd_preprocess(args) -> int:
    _need_torch()
    from tqdm import tqdm

    from engines.recordings.preprocess import preprocess
    from etf_models.datasets import scan

    found = scan(args.root, args.kind, args.view)
    if not found.clips:
        return _fail(f"{args.root}: no usable clips found"
                     + (f" (skipped: {dict(found.skipped)})" if found.skipped else ""))
    print(f"{len(found.clips)} clips"
          + (f"; ignored by name: {dict(found.skipped)}" if found.skipped else ""))
    with tqdm(total=len(found.clips), unit="clip", disable=args.quiet) as bar:
        summary = preprocess(found.clips, args.output, fps=args.fps, workers=args.workers,
                             speech_weights=args.speech_weights, progress=bar.update)
    print(f"etf preprocess: {summary['written']} written, {summary['already_done']} already "
          f"done, {summary['skipped']} skipped {summary['skip_reasons'] or ''} -> "
          f"{args.output}")
    return 0


def cmd_fit_emotions(args) -> int:
    from engines.recordings.emotion_fit import find_mead_clips, fit, save

    clips = find_mead_clips(args.root)
    if not clips:
        return _fail(f"{args.root}: no MEAD front clips (mead_<speaker>_front_<emotion>_level<k>"
                     "_001.mp4) with a neutral clip")
    print(f"{len(clips)} speakers: {', '.join(sorted(clips))}"
          + (f" (holding out {args.hold_out})" if args.hold_out else ""))
    model = fit(args.root, hold_out=args.hold_out)
    gains = None
    if args.gains_from:
        with np.load(args.gains_from) as z:
            gains = np.asarray(z["instrument_gain"], np.float32)
        print(f"read-back gains from {args.gains_from} (not measured again)")
    elif not args.no_calibrate:
        from engines.motion.emotion_model import EmotionModel
        from engines.recordings.emotion_fit import neutral_still
        from engines.render.emotion_calibration import instrument_gains

        print("calibrating: rendering each emotion on the speakers' neutral faces and "
              "reading it back")
        stills = {s: neutral_still(clips[s]["neutral"]) for s in model["speakers"]}
        measured = EmotionModel(model["fields"], model["ratio"].astype(np.float32),
                                model["template"], str(model["source"]), "unsaved")
        gains = instrument_gains(measured, stills)
    if gains is not None:
        from engines.render.emotion_calibration import calibrate

        model["measured_fields"] = model["fields"]
        model["instrument_gain"] = gains
        model["fields"] = calibrate(model["fields"], gains)
    digest = save(model, args.output)
    print(f"etf fit-emotions: {args.output} sha256 {digest}")
    return 0


def cmd_fit_mesh68(args) -> int:
    from pathlib import Path

    from engines.recordings.mesh68_fit import run

    hold = [p for p in (args.hold_out or "").split(",") if p]
    result = run(Path(args.talking), Path(args.emotion), Path(args.output), hold)
    print(f"etf fit-mesh68: {args.output}: {result['n_train_frames']} frames of "
          f"{result['n_people']} people; held-out error (inter-ocular distances) "
          f"{result['heldout_error_iod']}")
    return 0


def cmd_fit_mouth(args) -> int:
    from pathlib import Path

    from engines.recordings.mouth_fit import run

    hold = [p for p in (args.hold_out or "").split(",") if p]
    result = run(Path(args.talking), Path(args.emotion), Path(args.output),
                 Path(args.report), hold, steps=args.steps)
    print(f"etf fit-mouth: {args.output} sha256 {result['sha256']}; {result['n_train_frames']}"
          f" frames; held out (L1 of log colour, model vs flat colour): {result['heldout']}")
    return 0


def cmd_models_fetch(args) -> int:
    from engines.face import mesh_models

    try:
        paths = mesh_models.fetch(wheel=args.wheel)
    except mesh_models.MeshModelsMissing as e:
        return _fail(str(e))
    print(f"etf models fetch: {len(paths)} face-mesh models (mediapipe "
          f"{mesh_models.MEDIAPIPE_VERSION}, Apache-2.0) in {mesh_models.models_dir()}")
    return 0


def cmd_train_landmarks(args) -> int:
    _need_torch()
    import torch

    from etf_models import distributed as dist
    from etf_models.landmark_gcn import face_graph
    from etf_models.landmark_train import LandmarkTrainConfig, LandmarkTrainer
    from etf_models.shards import load_landmark_frames

    torch.set_num_threads(args.threads)
    device = dist.setup(args.device)
    data = load_landmark_frames(args.data)
    graph = face_graph(np.median(data.neutral, axis=0))
    trainer = LandmarkTrainer(graph, LandmarkTrainConfig(
        batch=args.batch, lr=args.lr, seed=args.seed, window_noise=args.window_noise,
        adv_start=args.adv_start), device=device)
    _train_loop(trainer, data, args, f"{len(data)} frames; G_L")
    return 0


def _train_loop(trainer, data, args, what: str) -> None:
    """Resume, train with periodic saves, report (rank 0 speaks under torchrun)."""
    from etf_models import distributed as dist

    say = print if dist.is_main() else (lambda *a, **k: None)
    if os.path.exists(args.output) and not args.restart:
        trainer.resume(args.output)
        say(f"resumed {args.output} at step {trainer.steps}")
    say(f"{what} {sum(p.numel() for p in trainer.g.parameters())} parameters on "
        f"{trainer.device}, {dist.world_size()} process(es)")
    step = trainer.steps
    while step < args.steps:
        step = min(args.steps, step + args.save_every)
        trainer.fit(data, step, log_every=args.log_every)
        trainer.save(args.output)
    if dist.world_size() > 1:
        synced = dist.in_sync(trainer.g)
        say(f"ddp: {dist.world_size()} ranks, parameters {'in sync' if synced else 'DIFFER'}")
        trainer.unwrap()
        dist.teardown()
    say(f"etf train {args.train_command}: {trainer.steps} steps -> {args.output}")


#: G_T channel widths for ``etf train texture --channels``: the paper's, and narrower ones
#: that train on a CPU.
TEXTURE_WIDTHS = {
    "paper": {},
    "small": {"enc": (32, 64, 128), "motion": (128, 256, 256), "disc": (32, 64, 128, 256)},
    "tiny": {"enc": (8, 12, 16), "motion": (16, 24, 32), "disc": (8, 16, 32)},
}


def cmd_train_texture(args) -> int:
    _need_torch()
    import torch

    from etf_models import distributed as dist
    from etf_models.texture_flow import TextureFlowConfig
    from etf_models.texture_train import (
        TextureFrames,
        TextureTrainConfig,
        TextureTrainer,
        Vgg16Features,
    )

    torch.set_num_threads(args.threads)
    device = dist.setup(args.device)
    data = TextureFrames(args.data)
    vgg = Vgg16Features.from_file(args.vgg16) if args.vgg16 else None
    trainer = TextureTrainer(TextureFlowConfig(**TEXTURE_WIDTHS[args.channels]),
                             TextureTrainConfig(batch=args.batch, lr=args.lr, seed=args.seed),
                             vgg=vgg, device=device)
    _train_loop(trainer, data, args, f"{len(data.shards)} clips; perceptual loss: "
                f"{trainer.perceptual}; G_T")
    return 0


def _add_live_args(p: argparse.ArgumentParser) -> None:
    """Options shared by serve and live."""
    p.add_argument("--fps", type=float, default=25.0, help="25 or 30")
    p.add_argument("--emotion", default="neutral", help="initial emotion")
    p.add_argument("--intensity", default="1.0", help="initial intensity, 0..1 or low/high")
    p.add_argument("--max-side", type=int, default=720,
                   help="scale the photo down so the video's longer side is at most this")
    p.add_argument("--lookahead-ms", type=float, default=60.0,
                   help="phone recogniser commit delay, 60 ms or more (more: surer phones, "
                   "more latency)")
    p.add_argument("--coart-ms", type=float, default=0.0,
                   help="how far the mouth's coarticulation looks ahead, 0..100 ms (more: "
                   "smoother transitions, more latency)")
    p.add_argument("--jitter-ms", type=float, default=60.0,
                   help="audio jitter buffer target at the start (ms); it then follows how "
                   "late the peer's packets arrive, within --jitter-min-ms and 150 ms")
    p.add_argument("--jitter-min-ms", type=float, default=20.0,
                   help="the adaptive jitter buffer's smallest target (ms)")
    p.add_argument("--jitter-fixed", action="store_true",
                   help="keep the jitter buffer at --jitter-ms (no adaptation)")
    p.add_argument("--compute-budget-ms", type=float, default=None,
                   help="how long each frame gets to render once its audio is in before it "
                   "leaves with that audio (ms, 5 .. one frame; default one frame): less is "
                   "less latency, and frames that take longer leave late")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--token", default=None,
                   help="require this token on every request and the control channel "
                   "(default: $ETF_TOKEN; none = open)")


def _add_identity_args(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--image", help="photo to enroll (default: the built-in face)")
    src.add_argument("--identity", help="identity file from 'etf enroll'")
    p.add_argument("--single-face", action="store_true",
                   help="refuse a photo with several faces instead of taking the largest")


def _add_corpus_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hours", type=float, default=12.0, help="synthetic corpus size")
    p.add_argument("--seed", type=int, default=0, help="fixes the corpus (and training)")
    p.add_argument("--engines", help="synthesizers to use, comma-separated, of flite, "
                   "espeak, festival, piper (default: every one installed)")
    p.add_argument("--no-vtlp", action="store_true", help="no vocal-tract-length "
                   "perturbation (as the first shipped model's corpus was built)")
    p.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                   help="synthesis processes")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_gan_train_args(p: argparse.ArgumentParser, what: str, steps: int, batch: int,
                        save_every: int, log_every: int) -> None:
    p.add_argument("--data", required=True, help="an 'etf preprocess' output folder")
    p.add_argument("-o", "--output", required=True, help=f"{what} checkpoint (.pt)")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=2e-4, help="Adam (the paper's 2e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    p.add_argument("--save-every", type=int, default=save_every)
    p.add_argument("--log-every", type=int, default=log_every)
    p.add_argument("--restart", action="store_true", help="ignore an existing --output")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when present (one GPU per torchrun process)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etf", description="Emotional talking face from one photo.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("enroll", help="enroll a photo into an identity file")
    e.add_argument("photo")
    e.add_argument("-o", "--output", required=True, help="identity file to write (.npz)")
    e.add_argument("--single-face", action="store_true",
                   help="refuse a photo with several faces instead of taking the largest")
    e.set_defaults(func=cmd_enroll)

    r = sub.add_parser("render", help="render a talking-face MP4 from speech")
    _add_identity_args(r)
    r.add_argument("--audio", help="speech file, any common format (default: built-in sentence)")
    r.add_argument("--emotion", default="neutral",
                   help="neutral, happy, angry, sad, surprise, fear or disgust; or a mix of "
                        "them as emotion:weight pairs, e.g. happy:0.6,surprise:0.3")
    r.add_argument("--intensity", default="1.0", help="0..1, or low (0.5) / high (1.0)")
    r.add_argument("--fps", type=float, default=25.0)
    r.add_argument("--seed", type=int, default=0, help="seed of blinks and idle motion")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.add_argument("-o", "--output", default="out.mp4")
    r.add_argument("--landmarks", default="default", choices=["default", "gcn"],
                   help="default: phones -> visemes; gcn: DeepSpeech windows -> G_L")
    r.add_argument("--texture", default="warp", choices=["warp", "flow"],
                   help="warp: mesh warp of the photo; flow: G_T")
    r.add_argument("--weights", help="folder with landmarks.pt / texture.pt (and optionally "
                   "speech.pt) for the neural engines")
    r.add_argument("--adapt", type=int, default=0, metavar="N",
                   help="one-shot adaptation of G_T to the photo: N iterations (1-5)")
    r.set_defaults(func=cmd_render)

    ad = sub.add_parser("adapt", help="one-shot adaptation of G_T to an enrolled identity, "
                        "stored next to the identity file (used by render --texture flow)")
    ad.add_argument("--identity", required=True, help="identity file from etf enroll")
    ad.add_argument("--weights", required=True, help="folder holding texture.pt")
    ad.add_argument("--iterations", type=int, default=5, help="1 to 5")
    ad.add_argument("-o", "--output", help="default: IDENTITY.texture.pt beside it")
    ad.set_defaults(func=cmd_adapt)

    ex = sub.add_parser("export", help="ONNX files of the per-frame graphs of G_L and G_T, "
                        "checked against PyTorch with ONNX Runtime")
    ex.add_argument("--weights", required=True, help="folder with landmarks.pt / texture.pt")
    ex.add_argument("-o", "--output", required=True, help="folder for the .onnx files")
    ex.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="the live WebRTC avatar server and its web page")
    _add_identity_args(s)
    _add_live_args(s)
    s.add_argument("--port", type=int, default=8080, help="HTTP port (page, /offer, /metrics)")
    s.add_argument("--control-port", type=int, default=None,
                   help="WebSocket control port (default: --port + 1)")
    s.add_argument("--admit-headroom", type=float, default=0.75,
                   help="refuse a new session unless it leaves this much headroom: the "
                   "free CPU must exceed one session's measured cost divided by it (render "
                   "processes), or each running session's p99 compute per frame must stay "
                   "under this fraction of its frame period (render threads); 0 = never")
    s.add_argument("--max-sessions", type=int, default=4,
                   help="concurrent peers; more are refused with 503")
    s.add_argument("--workers", type=int, default=0,
                   help="engine threads (default: one per CPU core)")
    s.add_argument("--render-in", choices=("processes", "threads"), default="processes",
                   help="default engine: render each session in its own process (sessions "
                   "do not share one Python interpreter's lock) or on the engine threads")
    s.add_argument("--engine", default="default",
                   help="default (geometric, no weights) or neural (the paper's G_L and G_T "
                   "from --weights, batched across sessions on one device worker)")
    s.add_argument("--weights", default=None,
                   help="neural: folder with landmarks.pt, texture.pt (and speech.pt)")
    s.add_argument("--backend", default="torch",
                   help="neural: torch, ort, cuda, cuda-fp16[+graphs][+compile], tensorrt")
    s.add_argument("--max-batch", type=int, default=32,
                   help="neural: frames per engine call at most")
    s.add_argument("--batch-wait-ms", type=float, default=4.0,
                   help="neural: longest a frame waits for its batch to fill")
    s.add_argument("--public-control-url", default=None,
                   help="behind a reverse proxy: the control channel's public base URL "
                   "(e.g. wss://host/etf-control) given to clients")
    s.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                   help="page origin allowed on the control channel (repeatable; default: "
                   "pages served on --port)")
    s.set_defaults(func=cmd_serve)

    lv = sub.add_parser("live", help="kiosk mode: local microphone -> face in a window or file")
    _add_identity_args(lv)
    _add_live_args(lv)
    lv.add_argument("--window", action="store_true", help="show the face in a window")
    lv.add_argument("-o", "--output", help="record the face and the delayed audio to an MP4")
    lv.add_argument("--audio", help="play this audio file as the microphone (real time)")
    lv.add_argument("--device", help="sounddevice input device (index or name)")
    lv.add_argument("--duration", type=float, help="stop after this many seconds")
    lv.add_argument("--control-port", type=int, default=8081,
                    help="WebSocket control port (ws://HOST:PORT/control/live)")
    lv.set_defaults(func=cmd_live)

    sp = sub.add_parser("speech", help="DeepSpeech features: import weights, features, text")
    ssub = sp.add_subparsers(dest="speech_command", required=True)
    si = ssub.add_parser("import", help="convert official DeepSpeech weights: 0.9.x (a "
                         "TensorFlow checkpoint or its .tar.gz, an exported .pb, or the "
                         "release's .pbmm), or 0.1.x's bidirectional output_graph.pb "
                         "(offline use only)")
    si.add_argument("source")
    si.add_argument("-o", "--output", required=True, help="our checkpoint to write (.pt)")
    si.set_defaults(func=cmd_speech_import)
    sf = ssub.add_parser("features", help="per-video-frame windows [T,6,29] of an audio file")
    sf.add_argument("audio")
    sf.add_argument("-o", "--output", required=True, help=".npy file to write")
    sf.add_argument("--fps", type=float, default=25.0, help="25 or 30")
    sf.add_argument("--weights", help="speech model checkpoint from 'etf speech import' or "
                    "'etf train speech' (default: the shipped model)")
    sf.set_defaults(func=cmd_speech_features)
    sr = ssub.add_parser("real-corpus", help="real recordings (LJSpeech with its transcripts; "
                         "LibriSpeech and interviews pseudo-labelled by faster-whisper) -> "
                         "corpus shards for 'etf train speech --corpus'")
    sr.add_argument("speech", help="folder laid out like ../shared/data/speech")
    sr.add_argument("-o", "--output", required=True, help="corpus folder")
    sr.add_argument("--copies", type=int, default=4, help="each utterance as recorded plus "
                    "this many minus one augmented copies")
    sr.add_argument("--seed", type=int, default=0)
    sr.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    sr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sr.set_defaults(func=cmd_speech_real_corpus)
    sc = ssub.add_parser("corpus", help="build the synthetic training corpus only (what "
                         "'etf train speech' builds first), e.g. for --extra-corpus")
    sc.add_argument("-o", "--output", help="corpus folder (default: "
                    "~/.cache/etf/speech-corpus-<hours>h-seed<seed>)")
    _add_corpus_args(sc)
    sc.set_defaults(func=cmd_speech_corpus)
    sk = ssub.add_parser("calibrate", help="shift the CTC blank's logit to what real "
                         "validation speech (pocketsphinx's command clips) prefers")
    sk.add_argument("model", help="speech checkpoint (.pt)")
    sk.add_argument("--pocketsphinx", required=True, metavar="DIR",
                    help="pocketsphinx source tree (the one --eval-pocketsphinx takes)")
    sk.add_argument("-o", "--output", required=True, help="calibrated checkpoint to write")
    sk.set_defaults(func=cmd_speech_calibrate)
    st = ssub.add_parser("transcribe", help="greedy CTC text of an audio file (debugging)")
    st.add_argument("audio")
    st.add_argument("--weights", help="speech model checkpoint from 'etf speech import' or "
                    "'etf train speech' (default: the shipped model)")
    st.set_defaults(func=cmd_speech_transcribe)

    pp = sub.add_parser("preprocess", help="MEAD / CREMA-D / RAVDESS / talking clips -> "
                        "training shards (landmarks, 256 crops, speech windows); resumable")
    pp.add_argument("root", help="the dataset folder")
    pp.add_argument("-o", "--output", required=True, help="output folder")
    pp.add_argument("--kind", default="auto",
                    choices=["auto", "mead", "crema-d", "ravdess", "talking"],
                    help="talking: any folder of talking-to-camera clips (see "
                    "etf_models/datasets.py)")
    pp.add_argument("--view", default="front", help="MEAD camera view")
    pp.add_argument("--fps", type=float, default=25.0, help="25 or 30")
    pp.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1))
    pp.add_argument("--speech-weights", help="speech model (default: the shipped one)")
    pp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pp.set_defaults(func=cmd_preprocess)

    fe = sub.add_parser("fit-emotions", help="MEAD clips -> emotion geometry and expression "
                        "texture (the shipped etf_models/weights/emotion_mead.npz)")
    fe.add_argument("root", help="folder with mead_<speaker>_front_<emotion>_level<k>_001.mp4")
    fe.add_argument("-o", "--output", default="etf_models/weights/emotion_mead.npz")
    fe.add_argument("--hold-out", help="leave this speaker out (for judging on it)")
    fe.add_argument("--no-calibrate", action="store_true",
                    help="keep the fields as dlib measured them (no render read-back gains)")
    fe.add_argument("--gains-from", metavar="NPZ",
                    help="take the read-back gains of an earlier fit instead of rendering and "
                         "reading back again (the shipped file is rebuilt byte for byte with "
                         "--gains-from etf_models/weights/emotion_mead.npz)")
    fe.set_defaults(func=cmd_fit_emotions)

    fm = sub.add_parser("fit-mesh68", help="dlib's 68 points as weighted sums of face-mesh "
                        "vertices, fitted on real frames (the shipped engines/face/"
                        "mesh_to_68.json)")
    fm.add_argument("--talking", default="../shared/data/talking")
    fm.add_argument("--emotion", default="../shared/data/emotion")
    fm.add_argument("-o", "--output", default="engines/face/mesh_to_68.json")
    fm.add_argument("--hold-out", default="obama,W009,latentsync_demo2,edtalk_mouth_source",
                    help="people (comma-separated) left out to report the error on; the "
                    "written map is then refitted on everyone")
    fm.set_defaults(func=cmd_fit_mesh68)

    fu = sub.add_parser("fit-mouth", help="train the learned mouth interior on real mouths "
                        "(the shipped etf_models/weights/mouth_interior.onnx); needs the "
                        "train extra")
    fu.add_argument("--talking", default="../shared/data/talking")
    fu.add_argument("--emotion", default="../shared/data/emotion")
    fu.add_argument("-o", "--output", default="etf_models/weights/mouth_interior.onnx")
    fu.add_argument("--report", default="benchmarks/results/mouth_model.json")
    fu.add_argument("--hold-out", default="feifeili,reagan,latentsync_demo2",
                    help="people (comma-separated) left out of training, their error reported")
    fu.add_argument("--steps", type=int, default=3000)
    fu.set_defaults(func=cmd_fit_mouth)

    mo = sub.add_parser("models", help="install model files that ship inside other packages")
    msub = mo.add_subparsers(dest="models_command", required=True)
    mf = msub.add_parser("fetch", help="the face-mesh models from the mediapipe 0.10.21 wheel "
                         "(hash-pinned; once, at install time)")
    mf.add_argument("--wheel", help="a downloaded mediapipe-0.10.21 manylinux x86_64 cp311 "
                    "wheel, instead of fetching it with pip")
    mf.set_defaults(func=cmd_models_fetch)

    tr = sub.add_parser("train", help="train models")
    tsub = tr.add_subparsers(dest="train_command", required=True)
    tl = tsub.add_parser("landmarks", help="G_L, the graph landmark generator, on "
                         "'etf preprocess' output (resumes from --output if it exists)")
    _add_gan_train_args(tl, "G_L", steps=20000, batch=32, save_every=1000, log_every=100)
    tl.add_argument("--window-noise", type=float, default=0.0, help="Gaussian noise on the "
                    "speech windows (0.5 regularises small real data such as talking clips)")
    tl.add_argument("--adv-start", type=int, default=0, help="steps of L_ver alone before "
                    "the discriminator joins")
    tl.set_defaults(func=cmd_train_landmarks)
    tt = tsub.add_parser("texture", help="G_T, the flow texture generator, on 'etf preprocess' "
                         "output (resumes from --output if it exists)")
    _add_gan_train_args(tt, "G_T", steps=100000, batch=4, save_every=500, log_every=50)
    tt.add_argument("--channels", default="paper", choices=sorted(TEXTURE_WIDTHS),
                    help="paper widths (GPU), or narrower ones for a CPU")
    tt.add_argument("--vgg16", help="torchvision VGG16 ImageNet weights (vgg16-397923af.pth) "
                    "for the perceptual loss; without it a documented substitute is used")
    tt.set_defaults(func=cmd_train_texture)
    ts = tsub.add_parser("speech", help="the default speech model: synthesize a corpus with "
                         "flite / espeak-ng / festival / Piper, augment it, train with CTC")
    ts.add_argument("-o", "--output", required=True, help="model checkpoint to write (.pt)")
    _add_corpus_args(ts)
    ts.add_argument("--hidden", type=int, default=512, help="width of every layer")
    ts.add_argument("--context", type=int, default=9, help="MFCC context frames each side "
                    "(lookahead = 20 * context + 16 ms)")
    ts.add_argument("--epochs", type=float, default=10.0)
    ts.add_argument("--batch-frames", type=int, default=12800,
                    help="padded 20 ms frames per step")
    ts.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ts.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: autocast matrix products (faster on AVX512-BF16 CPUs and "
                    "GPUs)")
    ts.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    ts.add_argument("--warmup-steps", type=int, default=300)
    ts.add_argument("--init", metavar="CHECKPOINT", help="start from this speech model "
                    "(trained here or imported) instead of random weights: fine-tuning")
    ts.add_argument("--extra-corpus", action="append", default=[], metavar="DIR",
                    help="another corpus folder to train on as well (repeatable), e.g. "
                    "the one an --init model was trained on")
    ts.add_argument("--minutes", type=float, help="stop training after this long")
    ts.add_argument("--threads", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                    help="PyTorch threads")
    ts.add_argument("--corpus", help="corpus folder (default: ~/.cache/etf/speech-corpus-*)")
    ts.add_argument("--work", help="resumable training state (default: OUTPUT.work)")
    ts.add_argument("--eval-pocketsphinx", metavar="DIR",
                    help="pocketsphinx source tree: validate on its real command clips")
    ts.set_defaults(func=cmd_train_speech)
    return p


def _user_errors() -> tuple[type[Exception], ...]:
    """The errors that mean bad input, reported in one line: those of the modules that can
    be imported (a training-only box, a GPU one say, may lack PyAV or dlib)."""
    import importlib

    errors: list[type[Exception]] = [ValueError]
    for module, name in (("engines.media.audio_io", "AudioError"),
                         ("engines.face.enrollment", "EnrollmentError"),
                         ("engines.face.identity", "IdentityFileError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except ImportError:
            pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    errors = _user_errors()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except errors as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
