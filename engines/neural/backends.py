"""Backends: one protocol to run a per-frame graph of the paper's networks fast.

A :class:`PerFrameGraph` is what runs every frame (G_L's ``step`` or G_T's ``render``, with
the identity's tensors as inputs of batch 1 broadcast inside the graph). A backend runs it:

- ``activate()`` builds or loads the engine (moves weights, compiles, builds TensorRT
  plans, opens ONNX Runtime sessions) and records how long that took (``build_s``);
- ``bind(identity tensors)`` sets the inputs that stay fixed for the identity, once;
- ``infer(frame inputs)`` -> ``{output: tensor}`` on the backend's device, batch in, batch
  out. Every call's inference time goes into ``timing`` (a ``LatencyRing``; measured with
  CUDA events on a GPU, so it never forces a synchronisation);
- ``deactivate()`` frees it.

Inputs and outputs are torch tensors on ``backend.device`` for every backend, so a frame
stays on the GPU from the landmarks to the encoder (``engines/neural/gpu_compositor.py``). The
outputs of the CUDA-graph and TensorRT backends live in buffers reused by the next call:
consume them (or clone) before calling ``infer`` again.

Config strings (``--backend``):

``torch``            PyTorch on the CPU, fp32: the reference.
``ort``              ONNX Runtime on the CPU, fp32.
``cuda``             PyTorch on CUDA, fp32.
``cuda-fp16``        PyTorch on CUDA with autocast fp16: convolutions and matmuls in fp16;
                     heatmaps, instance norms, softmax and the sampling grids stay fp32.
``+graphs``          (after cuda / cuda-fp16) one CUDA graph captured per batch size.
``+compile``         (after torch / cuda / cuda-fp16) ``torch.compile`` first.
``tensorrt``         a TensorRT fp16 engine built from the graph's ONNX and cached on disk
                     (``tensorrt-fp32`` for fp32). Written against NVIDIA's documented
                     Python API (TensorRT 8.6-10); not verified in this project's build
                     environment, where TensorRT cannot be installed.

CUDA buffers: torch's CUDA tensors, not pycuda. TensorRT runs on torch's current stream
with torch-allocated inputs and outputs (``data_ptr``), so there is one CUDA context (the
primary one, which torch and TensorRT both use), one allocator and no copies between
libraries; pycuda would bring a second context (or careful primary-context juggling) and
its own buffers to copy through, and it needs the CUDA toolkit to install.

Optional dependencies are imported at ``activate()``: a missing one raises
:class:`BackendUnavailable` naming what to install.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engines.latency import LatencyRing

log = logging.getLogger("etf.backends")

BACKENDS = ("torch", "ort", "cuda", "cuda-fp16", "tensorrt", "tensorrt-fp32")
OPTIONS = ("graphs", "compile")


class BackendUnavailable(RuntimeError):
    """A backend whose dependency or device is missing (the message says what to do)."""


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend config string (see the module docstring)."""

    name: str
    cuda_graphs: bool = False
    compile: bool = False

    @classmethod
    def parse(cls, text: str) -> BackendSpec:
        name, *opts = text.strip().lower().split("+")
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {text!r}: choose one of {', '.join(BACKENDS)} "
                             f"(options: +graphs for cuda, +compile for torch/cuda)")
        bad = [o for o in opts if o not in OPTIONS]
        if bad:
            raise ValueError(f"unknown backend option {bad[0]!r} in {text!r}: "
                             f"{' or '.join('+' + o for o in OPTIONS)}")
        spec = cls(name, "graphs" in opts, "compile" in opts)
        if spec.cuda_graphs and not name.startswith("cuda"):
            raise ValueError(f"+graphs needs a CUDA backend (cuda or cuda-fp16), not {name}")
        if spec.compile and name not in ("torch", "cuda", "cuda-fp16"):
            raise ValueError(f"+compile applies to PyTorch backends only, not {name}")
        return spec

    @property
    def cuda(self) -> bool:
        return self.name.startswith(("cuda", "tensorrt"))

    @property
    def fp16(self) -> bool:
        return self.name in ("cuda-fp16", "tensorrt")

    def __str__(self) -> str:
        opts = [o for o, on in (("graphs", self.cuda_graphs), ("compile", self.compile)) if on]
        return "+".join([self.name, *opts])


@dataclass
class PerFrameGraph:
    """A per-frame network and how to feed it.

    ``module(*inputs in input_order)`` -> the output tensor. ``identity_inputs`` have batch
    1 (bound once per identity); ``frame_inputs`` carry the batch. ``example(batch)`` gives
    plausible frame inputs (CPU, fp32); ``identity_example()`` plausible identity tensors.
    """

    name: str
    module: object  # torch.nn.Module
    frame_inputs: tuple[str, ...]
    identity_inputs: tuple[str, ...]
    output: str
    example: Callable[[int], dict]
    identity_example: Callable[[], dict]
    _onnx: bytes | None = field(default=None, repr=False)

    @property
    def input_order(self) -> tuple[str, ...]:
        return self.frame_inputs + self.identity_inputs

    def onnx(self) -> bytes:
        """The graph in ONNX (dynamic batch on the frame inputs), exported once."""
        if self._onnx is None:
            from etf_models.export import export_module

            # traced at batch 2 so the identity's broadcast is recorded, not folded away
            inputs = {**self.example(2), **self.identity_example()}
            inputs = {k: inputs[k] for k in self.input_order}
            self._onnx = export_module(self.module, inputs, self.output,
                                       batch_inputs=self.frame_inputs)
        return self._onnx

    def sha256(self) -> str:
        return hashlib.sha256(self.onnx()).hexdigest()


def _shared_graph(name: str, wrapped, net, make_example, frame_inputs: tuple[str, ...],
                  identity_inputs: tuple[str, ...], output: str) -> PerFrameGraph:
    def example(b: int) -> dict:
        ex = make_example(net, b, shared_identity=True)
        return {k: ex[k] for k in frame_inputs}

    def identity() -> dict:
        ex = make_example(net, 1, shared_identity=True)
        return {k: ex[k] for k in identity_inputs}

    return PerFrameGraph(name, wrapped.eval(), frame_inputs, identity_inputs, output, example,
                         identity)


def gl_graph(gl) -> PerFrameGraph:
    """G_L's per-frame graph (``LandmarkGCN``) with a shared identity."""
    from etf_models.export import GL_FRAME_INPUTS, GL_IDENTITY_INPUTS, gl_example
    from etf_models.landmark_gcn import PerFrameGL

    return _shared_graph("gl", PerFrameGL(gl, shared_identity=True), gl, gl_example,
                         GL_FRAME_INPUTS, GL_IDENTITY_INPUTS, "landmarks")


def gt_graph(gt) -> PerFrameGraph:
    """G_T's per-frame graph (``TextureFlow``) with a shared identity."""
    from etf_models.export import GT_FRAME_INPUTS, GT_IDENTITY_INPUTS, gt_example
    from etf_models.texture_flow import PerFrameGT

    return _shared_graph("gt", PerFrameGT(gt, shared_identity=True), gt, gt_example,
                         GT_FRAME_INPUTS, GT_IDENTITY_INPUTS, "image")


class Backend(Protocol):
    spec: BackendSpec
    graph: PerFrameGraph
    timing: LatencyRing
    build_s: float

    @property
    def device(self): ...  # torch.device

    def activate(self) -> None: ...

    def bind(self, identity: dict) -> None: ...

    def infer(self, inputs: dict) -> dict: ...

    def deactivate(self) -> None: ...


def _torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailable("the neural backends need PyTorch: pip install "
                                 "'etf-avatar[train]' (CPU: torch==2.13.0)") from None
    return torch


def _need_cuda(torch, what: str) -> None:
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"the {what} backend needs an NVIDIA GPU and a CUDA build of "
                                 "PyTorch (this torch is "
                                 f"{torch.__version__}; cuda available: False); use --backend "
                                 "torch or ort on this machine")


class _Timer:
    """Inference times into a LatencyRing: wall clock on the CPU, CUDA events on a GPU
    (read back once they complete, so timing never waits on the GPU)."""

    def __init__(self, ring: LatencyRing, cuda: bool) -> None:
        self.ring, self.cuda = ring, cuda
        self._pending: collections.deque = collections.deque()

    def start(self):
        if not self.cuda:
            return time.perf_counter()
        import torch

        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def stop(self, start) -> None:
        if not self.cuda:
            self.ring.add(time.perf_counter() - start)
            return
        import torch

        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self._pending.append((start, end))
        self.drain(wait=False)

    def drain(self, wait: bool = True) -> None:
        while self._pending and (wait or self._pending[0][1].query()):
            s, e = self._pending.popleft()
            e.synchronize()
            self.ring.add(s.elapsed_time(e) / 1e3)


class TorchBackend:
    """PyTorch on the CPU or CUDA (fp16 autocast, CUDA graphs, torch.compile as asked)."""

    def __init__(self, graph: PerFrameGraph, spec: BackendSpec) -> None:
        self.graph, self.spec = graph, spec
        self.timing = LatencyRing()
        self.build_s = 0.0
        self._timer = _Timer(self.timing, spec.cuda)
        self._module = None
        self._identity: dict = {}
        self._graphs: dict[int, tuple] = {}
        self._pool = None

    @property
    def device(self):
        return self._device

    def activate(self) -> None:
        torch = _torch()
        t0 = time.perf_counter()
        if self.spec.cuda:
            _need_cuda(torch, self.spec.name)
        self._device = torch.device("cuda" if self.spec.cuda else "cpu")
        module = self.graph.module
        if self.spec.cuda:  # a device copy: the graph's module stays the CPU reference
            module = copy.deepcopy(module).to(self._device)
        module = module.eval()
        if self.spec.cuda:
            # NHWC lets cuDNN use tensor cores for the fp16 convolutions without transposes.
            module = module.to(memory_format=torch.channels_last)
        self._module = torch.compile(module, dynamic=False) if self.spec.compile else module
        self.build_s = time.perf_counter() - t0

    def bind(self, identity: dict) -> None:
        torch = _torch()
        for k in self.graph.identity_inputs:
            v = identity[k].to(self._device, torch.float32)
            v = (v.contiguous(memory_format=torch.channels_last) if self.spec.cuda and v.dim() == 4
                 else v.contiguous())
            if k in self._identity and self._identity[k].shape == v.shape:
                self._identity[k].copy_(v)  # in place: captured CUDA graphs read these buffers
            else:
                self._identity[k] = v
                self._graphs.clear()

    def _run(self, inputs: dict):
        torch = _torch()
        args = [inputs[k] if k in inputs else self._identity[k] for k in self.graph.input_order]
        with torch.no_grad(), torch.autocast("cuda", torch.float16, enabled=self.spec.fp16,
                                             cache_enabled=not self.spec.cuda_graphs):
            return self._module(*args)

    def _capture(self, inputs: dict) -> tuple:
        torch = _torch()
        t0 = time.perf_counter()
        static = {k: v.clone() for k, v in inputs.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (cuDNN autotuning, lazy init) off-graph
            for _ in range(3):
                self._run(static)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # all batch sizes share one pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._run(static)
        self.build_s += time.perf_counter() - t0
        return static, graph, out

    def infer(self, inputs: dict) -> dict:
        torch = _torch()
        x = {k: inputs[k].to(self._device, torch.float32, non_blocking=True)
             for k in self.graph.frame_inputs}
        start = self._timer.start()
        if self.spec.cuda_graphs:
            b = x[self.graph.frame_inputs[0]].shape[0]
            if b not in self._graphs:
                self._graphs[b] = self._capture(x)
            static, graph, out = self._graphs[b]
            for k, v in x.items():
                static[k].copy_(v, non_blocking=True)
            graph.replay()
        else:
            out = self._run(x)
        self._timer.stop(start)
        return {self.graph.output: out}

    def deactivate(self) -> None:
        self._timer.drain()
        self._graphs.clear()
        self._identity.clear()
        self._module = None


class OrtBackend:
    """ONNX Runtime on the CPU (the exported graph; fp32)."""

    def __init__(self, graph: PerFrameGraph, spec: BackendSpec, threads: int = 0) -> None:
        self.graph, self.spec, self.threads = graph, spec, threads
        self.timing = LatencyRing()
        self.build_s = 0.0
        self._timer = _Timer(self.timing, False)
        self._session = None
        self._identity: dict = {}

    @property
    def device(self):
        return _torch().device("cpu")

    def activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("the ort backend needs ONNX Runtime: pip install "
                                     "'etf-avatar[train]'") from None
        t0 = time.perf_counter()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting after a run: the step's torch stages (paste-back, I420) need the
        # same cores right after (measured: paste 3-9 ms with spinning, 1.1 ms without).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(self.graph.onnx(), options,
                                             providers=["CPUExecutionProvider"])
        self.build_s = time.perf_counter() - t0

    def bind(self, identity: dict) -> None:
        self._identity = {k: identity[k].detach().cpu().float().contiguous().numpy()
                          for k in self.graph.identity_inputs}

    def infer(self, inputs: dict) -> dict:
        torch = _torch()
        feeds = {k: inputs[k].detach().cpu().float().contiguous().numpy()
                 for k in self.graph.frame_inputs}
        start = self._timer.start()
        out = self._session.run([self.graph.output], {**feeds, **self._identity})[0]
        self._timer.stop(start)
        return {self.graph.output: torch.from_numpy(out)}

    def deactivate(self) -> None:
        self._session = None
        self._identity = {}


def default_engine_cache() -> Path:
    return Path(os.environ.get("ETF_ENGINE_CACHE", Path.home() / ".cache" / "etf" / "engines"))


def engine_cache_key(onnx_sha256: str, shapes: dict, precision: str, gpu: str,
                     trt_version: str) -> str:
    """Hex key of one serialized TensorRT engine: a plan is only valid for this model,
    these optimisation-profile shapes, this precision, this GPU (name and compute
    capability) and this TensorRT version."""
    blob = json.dumps({"onnx": onnx_sha256, "shapes": shapes, "precision": precision,
                       "gpu": gpu, "tensorrt": trt_version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def profile_shapes(graph: PerFrameGraph, max_batch: int, opt_batch: int | None = None
                   ) -> dict[str, list[list[int]]]:
    """TensorRT optimisation-profile shapes ``{input: [min, opt, max]}``: the frame inputs
    from batch 1 to ``max_batch``, the identity inputs fixed at batch 1."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    opt = min(max_batch, opt_batch or max_batch)
    shapes: dict[str, list[list[int]]] = {}
    for k, v in graph.example(1).items():
        tail = list(v.shape[1:])
        shapes[k] = [[1, *tail], [opt, *tail], [max_batch, *tail]]
    for k, v in graph.identity_example().items():
        shapes[k] = [list(v.shape)] * 3
    return shapes


class TensorRTBackend:
    """A serialized TensorRT engine built once from the ONNX graph and cached on disk.

    I/O: torch CUDA tensors bound by address, run on torch's current stream with
    ``execute_async_v3``; no host round trip per frame.
    """

    def __init__(self, graph: PerFrameGraph, spec: BackendSpec, max_batch: int = 32,
                 cache_dir: str | os.PathLike | None = None,
                 workspace_bytes: int = 4 << 30) -> None:
        self.graph, self.spec, self.max_batch = graph, spec, max_batch
        self.cache_dir = Path(cache_dir) if cache_dir else default_engine_cache()
        self.workspace_bytes = workspace_bytes
        self.timing = LatencyRing()
        self.build_s = 0.0
        self.cache_hit = False
        self.engine_path: Path | None = None
        self._identity: dict = {}
        self._outputs: dict[tuple, object] = {}
        self._keep: tuple = ()

    @property
    def device(self):
        return _torch().device("cuda")

    def _trt(self):
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable(
                "the tensorrt backend needs NVIDIA TensorRT's Python package (pip install "
                "tensorrt from NVIDIA's index, matching your CUDA); it is not verified in "
                "this project's build environment. Use --backend cuda-fp16+graphs") from None
        return trt

    def activate(self) -> None:
        torch = _torch()
        trt = self._trt()
        _need_cuda(torch, "tensorrt")
        self._timer = _Timer(self.timing, True)
        t0 = time.perf_counter()
        self._logger = trt.Logger(trt.Logger.WARNING)
        shapes = profile_shapes(self.graph, self.max_batch)
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        gpu = f"{props.name} sm_{props.major}{props.minor}"
        precision = "fp16" if self.spec.fp16 else "fp32"
        key = engine_cache_key(self.graph.sha256(), shapes, precision, gpu, trt.__version__)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.engine_path = self.cache_dir / f"{self.graph.name}-{precision}-{key[:20]}.plan"
        runtime = trt.Runtime(self._logger)
        engine = None
        if self.engine_path.is_file():
            engine = runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            self.cache_hit = engine is not None
            if engine is None:
                log.warning("cached TensorRT engine %s is unreadable; rebuilding",
                            self.engine_path)
        if engine is None:
            plan = self._build(trt, shapes)
            tmp = self.engine_path.with_suffix(".tmp")
            tmp.write_bytes(plan)
            os.replace(tmp, self.engine_path)  # atomic: a crash never leaves half a plan
            self.engine_path.with_suffix(".json").write_text(json.dumps(
                {"graph": self.graph.name, "onnx_sha256": self.graph.sha256(),
                 "shapes": shapes, "precision": precision, "gpu": gpu,
                 "tensorrt": trt.__version__}, indent=1))
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                raise BackendUnavailable(f"TensorRT could not load the engine it just built "
                                         f"({self.engine_path})")
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        self.build_s = time.perf_counter() - t0

    def _build(self, trt, shapes: dict) -> bytes:
        log.info("building the TensorRT %s engine for %s (once; cached in %s)",
                 "fp16" if self.spec.fp16 else "fp32", self.graph.name, self.cache_dir)
        builder = trt.Builder(self._logger)
        major = int(trt.__version__.split(".")[0])
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(self.graph.onnx()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT cannot parse the {self.graph.name} graph: "
                                     f"{errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        if self.spec.fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendUnavailable(f"TensorRT failed to build the {self.graph.name} engine "
                                     "(see its log above)")
        return bytes(plan)

    def bind(self, identity: dict) -> None:
        torch = _torch()
        self._identity = {k: identity[k].to("cuda", torch.float32).contiguous()
                          for k in self.graph.identity_inputs}
        for k, v in self._identity.items():
            self._context.set_input_shape(k, tuple(v.shape))
            self._context.set_tensor_address(k, v.data_ptr())

    def infer(self, inputs: dict) -> dict:
        torch = _torch()
        x = {k: inputs[k].to("cuda", torch.float32).contiguous()
             for k in self.graph.frame_inputs}
        b = x[self.graph.frame_inputs[0]].shape[0]
        if b > self.max_batch:
            raise ValueError(f"batch {b} exceeds the engine's max_batch {self.max_batch}")
        for k, v in x.items():
            self._context.set_input_shape(k, tuple(v.shape))
            self._context.set_tensor_address(k, v.data_ptr())
        shape = tuple(self._context.get_tensor_shape(self.graph.output))
        out = self._outputs.get(shape)
        if out is None:
            out = self._outputs[shape] = torch.empty(shape, dtype=torch.float32, device="cuda")
        self._context.set_tensor_address(self.graph.output, out.data_ptr())
        start = self._timer.start()
        if not self._context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT failed to run the {self.graph.name} engine")
        self._timer.stop(start)
        self._keep = tuple(x.values())  # alive until the stream has read them
        return {self.graph.output: out}

    def deactivate(self) -> None:
        if getattr(self, "_timer", None):
            self._timer.drain()
        self._context = self._engine = self._runtime = None
        self._identity, self._outputs, self._keep = {}, {}, ()


def make_backend(graph: PerFrameGraph, spec: str | BackendSpec, **options) -> Backend:
    """The backend named by ``spec`` for ``graph`` (not yet activated). Options:
    ``threads`` (ort), ``max_batch`` and ``cache_dir`` (tensorrt)."""
    spec = BackendSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.name == "ort":
        return OrtBackend(graph, spec, threads=options.get("threads", 0))
    if spec.name.startswith("tensorrt"):
        return TensorRTBackend(graph, spec, max_batch=options.get("max_batch", 32),
                               cache_dir=options.get("cache_dir"))
    return TorchBackend(graph, spec)
