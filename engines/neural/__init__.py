"""The runtime of the paper's networks (G_L, G_T) trained by ``etf_models``.

- ``networks``: loading weights, G_L and G_T as landmark / texture engines, the identity
  part computed once, one-shot adaptation;
- ``backends``: one protocol over PyTorch (CPU, CUDA fp16, CUDA graphs, torch.compile),
  ONNX Runtime and TensorRT, chosen by a config string;
- ``batching``: the per-device worker that batches frames across sessions, capacity;
- ``gpu_compositor``: paste-back and RGB -> I420 on the device;
- ``live``: live serving: per-session speech streams feeding the device worker.

May import ``face``, ``motion``, ``audio``, ``media`` and ``etf_models``; never the default
renderer (``animators.py`` pairs the two).
"""
