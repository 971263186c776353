"""The face-mesh model files: taken once from the ``mediapipe==0.10.21`` wheel, hash-pinned.

MediaPipe 0.10.21 is the last release whose wheel ships the TFLite graphs of its face
pipeline (later ones download them at run time); mediapipe itself pins numpy < 2, so it is
never installed or imported here. ``etf models fetch`` downloads that exact wheel (the
manylinux x86_64 CPython 3.11 build, whatever machine fetches it, so the bytes are the same
everywhere), checks the wheel's SHA-256, extracts the five model files below and checks
each of theirs. Nothing is fetched at run time: a missing file is an error that names the
command. The models are Apache-2.0 (MediaPipe's licence; see the README).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

MEDIAPIPE_VERSION = "0.10.21"
WHEEL = f"mediapipe-{MEDIAPIPE_VERSION}-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_SHA256 = "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3"

#: model name -> (path inside the wheel, SHA-256)
MODELS: dict[str, tuple[str, str]] = {
    "face_landmark": (
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814"),
    "iris_landmark": (
        "mediapipe/modules/iris_landmark/iris_landmark.tflite",
        "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f"),
    "face_detection_short_range": (
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8"),
    "face_detection_full_range_sparse": (
        "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1"),
    "selfie_segmentation": (
        "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
        "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c"),
}

FETCH_HINT = "run `etf models fetch` once (it takes them from the mediapipe wheel on PyPI)"


class MeshModelsMissing(RuntimeError):
    """The face-mesh model files are not installed (or do not match their pins)."""


def models_dir() -> str:
    """Where the model files live: ``$ETF_MODELS_DIR`` or ``~/.cache/etf/models``."""
    root = os.environ.get("ETF_MODELS_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "etf", "models")
    return os.path.join(root, f"mediapipe-{MEDIAPIPE_VERSION}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pinned(path: str, sha: str) -> bool:
    """The file exists and matches its pinned SHA-256."""
    return os.path.isfile(path) and _sha256(path) == sha


_verified: dict[str, str] = {}


def model_path(name: str) -> str:
    """Path of one model file, verified against its pin (once per process)."""
    if name in _verified:
        return _verified[name]
    inner, sha = MODELS[name]
    path = os.path.join(models_dir(), os.path.basename(inner))
    if not os.path.isfile(path):
        raise MeshModelsMissing(f"the face-mesh model {os.path.basename(inner)} is not "
                                f"installed in {models_dir()}; {FETCH_HINT}")
    if not _pinned(path, sha):
        raise MeshModelsMissing(f"{path} does not match its pinned SHA-256; delete it and "
                                f"{FETCH_HINT}")
    _verified[name] = path
    return path


def installed() -> bool:
    try:
        for name in MODELS:
            model_path(name)
    except MeshModelsMissing:
        return False
    return True


def extract_from_wheel(wheel: str, dest: str | None = None) -> list[str]:
    """Copy the pinned model files out of a mediapipe wheel into ``dest``; returns paths."""
    dest = dest or models_dir()
    if _sha256(wheel) != WHEEL_SHA256:
        raise MeshModelsMissing(f"{wheel} is not the pinned {WHEEL} (SHA-256 differs)")
    os.makedirs(dest, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel) as z:
        for inner, sha in MODELS.values():
            target = os.path.join(dest, os.path.basename(inner))
            tmp = target + ".part"
            with z.open(inner) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if _sha256(tmp) != sha:
                os.unlink(tmp)
                raise MeshModelsMissing(f"{inner} in {wheel} does not match its pin")
            os.replace(tmp, target)
            out.append(target)
    _verified.clear()
    return out


def fetch(dest: str | None = None, wheel: str | None = None) -> list[str]:
    """Install the model files: from ``wheel`` if given, else downloaded with pip."""
    dest = dest or models_dir()
    present = [os.path.join(dest, os.path.basename(p)) for p, _ in MODELS.values()]
    if wheel is None and all(_pinned(path, sha) for path, (_, sha)
                             in zip(present, MODELS.values(), strict=True)):
        return present
    if wheel is not None:
        return extract_from_wheel(wheel, dest)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
               "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
               "-d", tmp, f"mediapipe=={MEDIAPIPE_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        path = os.path.join(tmp, WHEEL)
        if done.returncode != 0 or not os.path.isfile(path):
            raise MeshModelsMissing(
                f"could not download {WHEEL} with pip ({done.stderr.strip()[-300:]}); "
                "download it yourself and run `etf models fetch --wheel FILE`")
        return extract_from_wheel(path, dest)
