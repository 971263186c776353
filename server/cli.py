"""The ``etf`` command line: ``etf enroll`` and ``etf render``.

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
    return str(resources.files("engines.assets").joinpath("hello.wav"))


def _fail(msg: str) -> int:
    print(f"etf: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _load_identity(args):
    from engines.default_face import default_identity
    from engines.enrollment import EnrollOptions, enroll
    from engines.identity import Identity

    if args.identity:
        return Identity.load(args.identity)
    if args.image:
        return enroll(args.image, EnrollOptions(refuse_multiple=args.single_face))
    return default_identity()


def cmd_enroll(args) -> int:
    from engines.enrollment import EnrollOptions, enroll

    t = time.perf_counter()
    identity = enroll(args.photo, EnrollOptions(refuse_multiple=args.single_face))
    identity.save(args.output)
    for w in identity.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"enrolled {args.photo} -> {args.output} in {time.perf_counter() - t:.2f} s")
    return 0


def cmd_render(args) -> int:
    from tqdm import tqdm

    from engines.audio_io import load_audio
    from engines.emotion_state import EmotionState, parse_intensity
    from engines.pipeline import FaceAnimator
    from engines.video_writer import Mp4Writer

    intensity = parse_intensity(args.intensity)
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
    for w in identity.warnings:
        print(f"warning: {w}", file=sys.stderr)
    animator = FaceAnimator(identity, fps=args.fps, emotion=emotion, seed=args.seed)
    h, w = identity.photo.shape[:2]
    n_frames = int(np.ceil(len(audio) / 16000 * args.fps - 1e-6))
    t0 = time.perf_counter()
    with Mp4Writer(args.output, w, h, fps=args.fps, audio=mux_audio, audio_rate=48000) as out:
        bar = tqdm(total=n_frames, unit="frame", desc="render", disable=args.quiet)
        for frame in animator.render_all(audio):
            out.write(frame.image)
            bar.update(1)
        bar.close()
    dt = time.perf_counter() - t0
    print(f"wrote {args.output}: {n_frames} frames ({n_frames / args.fps:.2f} s) "
          f"in {dt:.1f} s ({n_frames / max(dt, 1e-9):.0f} fps)")
    return 0


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
    src = r.add_mutually_exclusive_group()
    src.add_argument("--image", help="photo to enroll (default: the built-in face)")
    src.add_argument("--identity", help="identity file from 'etf enroll'")
    r.add_argument("--audio", help="speech file, any common format (default: built-in sentence)")
    r.add_argument("--emotion", default="neutral",
                   help="neutral, happy, angry, sad, surprise, fear or disgust")
    r.add_argument("--intensity", default="1.0", help="0..1, or low (0.5) / high (1.0)")
    r.add_argument("--fps", type=float, default=25.0)
    r.add_argument("--seed", type=int, default=0, help="seed of blinks and idle motion")
    r.add_argument("--single-face", action="store_true")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    r.add_argument("-o", "--output", default="out.mp4")
    r.set_defaults(func=cmd_render)
    return p


def main(argv: list[str] | None = None) -> int:
    from engines.audio_io import AudioError
    from engines.enrollment import EnrollmentError
    from engines.identity import IdentityFileError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (EnrollmentError, AudioError, IdentityFileError, ValueError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
