"""Who ran a benchmark, for results JSON: the CPU's model name and core count, the versions
of the inference libraries that are installed, and the GPU (name, memory, driver, CUDA)
where there is one. Every probe is guarded, so CPU-only machines report ``"gpu": None``."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

#: Libraries whose versions a benchmark's numbers depend on (distribution names).
LIBRARIES = ("numpy", "torch", "onnxruntime", "tensorrt")


def cpu_model() -> str:
    """The CPU's model name (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str]:
    """Versions of the installed :data:`LIBRARIES` (read from package metadata, so nothing
    is imported); missing ones are left out."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            mod = sys.modules.get(name)  # e.g. TensorRT installed from NVIDIA's tarball
            if getattr(mod, "__version__", None):
                out[name] = mod.__version__
    return out


def gpu_info() -> dict | None:
    """The first NVIDIA GPU: name, memory, driver (``nvidia-smi``), compute capability and
    the CUDA runtime torch was built with (only if torch is already imported); None when
    there is no GPU."""
    info: dict = {}
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10,
            check=True).stdout.strip().splitlines()[0]
        name, mem, driver = (x.strip() for x in line.split(","))
        info = {"name": name, "memory_mib": int(float(mem)), "driver": driver}
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                info.setdefault("name", props.name)
                info.setdefault("memory_mib", props.total_memory >> 20)
                info["compute_capability"] = f"{props.major}.{props.minor}"
                info["cuda"] = torch.version.cuda
                info["cudnn"] = torch.backends.cudnn.version()
        except Exception:  # a broken driver must not break the benchmark's report
            pass
    return info or None


def machine_info(**extra) -> dict:
    """CPU, cores, Python, platform, installed library versions and the GPU (None on a
    CPU-only machine), plus whatever the caller adds (it wins over the probes)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), **library_versions(), "gpu": gpu_info(), **extra}
