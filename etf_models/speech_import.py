"""Import Mozilla DeepSpeech 0.9.x acoustic-model weights without TensorFlow.

``import_deepspeech(path)`` reads the official release files with
:mod:`etf_models.tf_formats` and returns a :class:`~etf_models.deepspeech.DeepSpeechConfig`
and a state dict for :class:`~etf_models.deepspeech.DeepSpeech`; ``import_to_checkpoint``
writes them as our checkpoint (what ``etf speech import`` runs).

Accepted sources: a V2 checkpoint (its prefix, ``.index`` file, a directory with a
``best_dev_checkpoint``/``checkpoint`` state file or a single ``.index``, or the release's
``deepspeech-0.9.3-checkpoint.tar.gz``), a frozen graph (``output_graph.pb``), or a
memmapped graph (``.pbmm``) as TensorFlow's ``convert_graphdef_memmapped_format`` writes it.

Names and layout, **verified from the DeepSpeech source** (mozilla/DeepSpeech,
``training/deepspeech_training/train.py`` and ``util/config.py``, 0.9 line):

- ``dense(name, ...)`` creates ``<name>/bias`` [units] and ``<name>/weights`` [in, units]
  for ``layer_1``, ``layer_2``, ``layer_3``, ``layer_5`` (clipped ReLU, ``relu_clip`` flag
  default 20) and ``layer_6`` (no activation); ``n_input`` 26, ``n_context`` 9, every
  hidden size and the LSTM size equal ``--n_hidden`` (2048 in the release);
- the LSTM is ``tf.contrib.rnn.LSTMBlockFusedCell(n_cell_dim, forget_bias=0,
  name='cudnn_compatible_lstm_cell')`` inside the variable scope
  ``cudnn_lstm/rnn/multi_rnn_cell/cell_0``, for training and for the exported inference
  graph alike, so its variables are
  ``cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell/kernel``
  [n_hidden + n_cell, 4 n_cell] and ``.../bias`` [4 n_cell] (TensorFlow 1.15's
  ``LSTMBlockFusedCell`` creates ``kernel``/``bias`` of those shapes and passes
  ``cell_clip=-1``, no clipping, when none is given); the TFLite export uses ``LSTMCell``
  under the same names;
- the export freezes the graph with ``convert_variables_to_constants``, which turns each
  variable into a ``Const`` node of the same name (the ``/read`` identities stay
  identities); checkpoints also hold Adam slots (``.../Adam``, ``.../Adam_1``),
  ``beta1_power``, ``beta2_power``, ``global_step`` and ``learning_rate``, all ignored.

**Checked against TensorFlow 2.21** (``tests/test_speech_import.py``, run with
``ETF_TF_PYTHON``): a graph built like DeepSpeech's (reference variables under these
names, ``tf.minimum(tf.nn.relu(.), 20)``, the ``BlockLSTM`` op with ``forget_bias=0``),
saved with ``Saver`` next to its Adam slots and frozen with ``convert_variables_to_constants``,
imports to a PyTorch model whose logits match TensorFlow's to 1e-5: the gate order
(input, candidate, forget, output), the kernel layout and the clip semantics are those of
TensorFlow's own kernels.

**Assumed, not verified against the real release files** (they cannot be downloaded
here): that the 0.9.3 release checkpoint and ``.pbmm`` hold exactly these names (the CuDNN
training path saves its weights under the same canonical names); the older
``lstm_fused_cell/kernel`` scope and ``h1``/``b1`` ... dense names of DeepSpeech 0.2-0.5
(their ``LSTMBlockFusedCell`` used TensorFlow's default ``forget_bias`` of 1.0, which is
what a checkpoint under that scope gets unless told otherwise). In a graph the LSTM op's
own ``forget_bias``, ``cell_clip`` and ``use_peephole`` attributes, and the ReLU clip
constant, are read from the graph instead. Names may carry a scope prefix (``import/...``)
or a wrapper suffix (``/read``, ``/.ATTRIBUTES/VARIABLE_VALUE``).

**DeepSpeech 0.1.x** (the bidirectional ``output_graph.pb`` of v0.1.0 that VOCA / AD-NeRF
style pipelines feed; ``DeepSpeech.py: BiRNN`` of that line): dense weights ``h1``/``b1``,
``h2``/``b2``, ``h3``/``b3`` (``n_hidden_3 = 2 * n_cell`` wide), ``h5``/``b5`` (reading
``2 * n_cell``: forward and backward outputs concatenated, forward first) and ``h6``/``b6``;
two ``BasicLSTMCell(n_cell, forget_bias=1.0)`` under ``tf.nn.bidirectional_dynamic_rnn``,
so ``bidirectional_rnn/fw/basic_lstm_cell/kernel`` and ``.../bias`` (``weights`` /
``biases`` under TensorFlow 1.0-1.1) and the same under ``bw``. ``BasicLSTMCell`` uses the
same gate order and kernel layout as the block LSTM; its forget bias is a constant inside
the graph's while loop, not an attribute, so the source code's 1.0 is assumed unless
``forget_bias`` is given. Its input is ``speech_features.v01_windows`` (config
``features="v01"``). **Checked against TensorFlow 2.21** (legacy Keras cells) in
``tests/test_speech_import.py`` like the 0.9 layout; **not checked against the real release
file**, which cannot be downloaded here. Such a model needs the whole utterance: it runs
offline (files) and live sessions refuse it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from etf_models import tf_formats as tff
from etf_models.checkpoint import save_checkpoint
from etf_models.deepspeech import DeepSpeech, DeepSpeechConfig

__all__ = ["SpeechImportError", "UnsupportedModelError", "import_deepspeech",
           "import_to_checkpoint"]


class SpeechImportError(ValueError):
    """A source that cannot be imported as a DeepSpeech model (the message says why)."""


class UnsupportedModelError(SpeechImportError):
    """A DeepSpeech variant this port does not run (peepholes, cell clipping)."""


DENSE_LAYERS = ("layer_1", "layer_2", "layer_3", "layer_5", "layer_6")
#: LSTM variable scopes, newest first, with the forget bias their training code used.
LSTM_SCOPES: dict[str, float] = {
    "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell": 0.0,  # 0.6 - 0.9.x
    "lstm_fused_cell": 1.0,  # 0.2 - 0.5 (TensorFlow's default forget_bias)
}
#: Dense-layer names of DeepSpeech 0.2 - 0.4 (weights, bias).
_OLD_DENSE = {"layer_1": ("h1", "b1"), "layer_2": ("h2", "b2"), "layer_3": ("h3", "b3"),
              "layer_5": ("h5", "b5"), "layer_6": ("h6", "b6")}
_WRAPPERS = ("/.ATTRIBUTES/VARIABLE_VALUE", "/Read/ReadVariableOp", "/read", ":0")
_BIDIRECTIONAL = re.compile(r"bidirectional_rnn|(^|/)(fw|bw)(/|$)|_fw(/|$)|_bw(/|$)")
#: DeepSpeech 0.1.x's two LSTM scopes (``bidirectional_dynamic_rnn`` of ``BasicLSTMCell``)
#: and their (kernel, bias) leaf names: TensorFlow >= 1.2, then 1.0 - 1.1.
BI_SCOPES = {"lstm": "bidirectional_rnn/fw/basic_lstm_cell",
             "lstm_bw": "bidirectional_rnn/bw/basic_lstm_cell"}
_BI_LEAVES = (("kernel", "bias"), ("weights", "biases"))
BI_FORGET_BIAS = 1.0  # BasicLSTMCell(n_cell_dim, forget_bias=1.0) in DeepSpeech 0.1.x
_LSTM_OPS = ("BlockLSTM", "LSTMBlockCell")
DEFAULT_RELU_CLIP = 20.0


def _canonical(name: str) -> str:
    """``name`` without wrapper suffixes (``/read``, ``/.ATTRIBUTES/VARIABLE_VALUE`` ...)."""
    changed = True
    while changed:
        changed = False
        for suffix in _WRAPPERS:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    return name


@dataclass
class _Source:
    """Tensor names of a source and a way to load some of them."""

    fmt: str
    names: list[str]
    load: Callable[[list[str]], dict[str, np.ndarray]]
    nodes: list[tff.NodeDef] = field(default_factory=list)  # graphs only


@contextlib.contextmanager
def _open_source(path: str) -> Iterator[_Source]:
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, s)) for s in tff.STATE_FILES) or any(
                f.endswith(".index") for f in os.listdir(path)):
            with _checkpoint_source(path) as src:
                yield src
            return
        graphs = sorted(f for f in os.listdir(path) if f.endswith((".pb", ".pbmm")))
        if len(graphs) != 1:
            raise SpeechImportError(f"{path}: no TensorFlow checkpoint or single graph file "
                                    "in this directory")
        yield _graph_source(os.path.join(path, graphs[0]))
        return
    if os.path.isfile(path) and tarfile.is_tarfile(path):
        with _tar_source(path) as src:
            yield src
        return
    if not os.path.exists(path) and not os.path.exists(path + ".index"):
        raise SpeechImportError(f"{path}: no such file")
    if path.endswith(".meta"):
        raise SpeechImportError(f"{path}: a .meta file holds the graph structure only; "
                                "pass the checkpoint's .index file or prefix")
    if (os.path.isfile(path + ".index") or path.endswith(".index")
            or tff.DATA_FILE_RE.search(path) or tff.is_checkpoint_index(path)):
        with _checkpoint_source(path) as src:
            yield src
        return
    yield _graph_source(path)


@contextlib.contextmanager
def _checkpoint_source(path: str) -> Iterator[_Source]:
    try:
        reader = tff.CheckpointReader(path)
    except tff.TFFormatError as e:
        raise SpeechImportError(f"not a readable TensorFlow checkpoint: {e}") from None
    except OSError as e:
        raise SpeechImportError(f"{path}: cannot read ({e})") from None
    yield _Source("tf-checkpoint", list(reader.entries), reader.read_all)


def _graph_source(path: str) -> _Source:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SpeechImportError(f"{path}: cannot read ({e})") from None
    try:
        if tff.is_memmapped_package(data):
            nodes, regions = tff.read_memmapped_graph(data)
            fmt = "tf-memmapped-graph"
        else:
            nodes, regions, fmt = tff.parse_graph_def(data), None, "tf-graph"
    except tff.TFFormatError as e:
        raise SpeechImportError(f"{path}: not a TensorFlow checkpoint or graph ({e})") from None
    const_ops = ("Const", "ImmutableConst")
    names = [n.name for n in nodes if n.op in const_ops]
    return _Source(fmt, names, lambda wanted: tff.graph_constants(nodes, regions, wanted),
                   nodes)


@contextlib.contextmanager
def _tar_source(path: str) -> Iterator[_Source]:
    try:
        with tarfile.open(path, "r:*") as tar:
            bases = [os.path.basename(m.name) for m in tar if m.isfile()]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SpeechImportError(f"{path}: cannot read the archive ({e})") from None
    if any(b.endswith(".index") for b in bases):
        with tff.extracted_tar(path, tff.is_checkpoint_member) as tmp, \
                _checkpoint_source(tmp) as src:
            yield src
        return
    graphs = [b for b in bases if b.endswith((".pb", ".pbmm"))]
    if len(graphs) != 1:
        raise SpeechImportError(f"{path}: the archive holds no TensorFlow checkpoint (.index) "
                                f"and {len(graphs)} graph files (.pb/.pbmm)")
    with tff.extracted_tar(path, lambda b: b == graphs[0]) as tmp:
        yield _graph_source(os.path.join(tmp, graphs[0]))


def _pick(names: Iterable[str], wanted: str, exact_only: bool = False) -> str | None:
    """The source name holding ``wanted`` (a canonical DeepSpeech name), or None."""
    hits = []
    for name in names:
        canon = _canonical(name)
        if canon == wanted or (not exact_only and canon.endswith("/" + wanted)):
            hits.append(name)
    if len(hits) <= 1:
        return hits[0] if hits else None
    exact = [h for h in hits if h == wanted] or [h for h in hits if _canonical(h) == wanted]
    if len(exact) == 1:
        return exact[0]
    raise SpeechImportError(f"several tensors could be {wanted!r}: {', '.join(sorted(hits))}")


def _select(names: list[str], path: str, bidirectional: bool = False,
            ) -> tuple[dict[str, str], str]:
    """Map our keys (``layer_1/weights`` ..., ``lstm/kernel``, and ``lstm_bw/...`` for a
    bidirectional model) to source names; also returns the LSTM scope found."""
    chosen: dict[str, str] = {}
    missing: list[str] = []
    for layer in DENSE_LAYERS:
        for part, old in zip(("weights", "bias"), _OLD_DENSE[layer], strict=True):
            name = _pick(names, f"{layer}/{part}") or _pick(names, old, exact_only=True)
            if name is None:
                missing.append(f"{layer}/{part}")
            else:
                chosen[f"{layer}/{part}"] = name
    if bidirectional:
        for key, scope in BI_SCOPES.items():
            leaves = next((lv for lv in _BI_LEAVES
                           if any(_pick(names, f"{scope}/{leaf}") for leaf in lv)), _BI_LEAVES[0])
            for part, leaf in zip(("kernel", "bias"), leaves, strict=True):
                name = _pick(names, f"{scope}/{leaf}")
                if name is None:
                    missing.append(f"{scope}/{leaf}")
                else:
                    chosen[f"{key}/{part}"] = name
        _raise_missing(missing, chosen, names, path)
        return chosen, "bidirectional_rnn"
    scope = None
    for candidate in LSTM_SCOPES:
        kernel, bias = _pick(names, f"{candidate}/kernel"), _pick(names, f"{candidate}/bias")
        if kernel or bias:
            scope = candidate
            if kernel:
                chosen["lstm/kernel"] = kernel
            else:
                missing.append(f"{candidate}/kernel")
            if bias:
                chosen["lstm/bias"] = bias
            else:
                missing.append(f"{candidate}/bias")
            break
    if scope is None:
        first = next(iter(LSTM_SCOPES))
        missing += [f"{first}/kernel", f"{first}/bias"]
        scope = first
    _raise_missing(missing, chosen, names, path)
    return chosen, scope


def _raise_missing(missing: list[str], chosen: dict[str, str], names: list[str],
                   path: str) -> None:
    if not missing:
        return
    if not chosen:
        raise SpeechImportError(
            f"{path}: no DeepSpeech weights in this TensorFlow file (none of "
            f"{', '.join(missing[:3])} ...; it holds {len(names)} tensors"
            + (f", e.g. {', '.join(sorted(names)[:3])}" if names else "") + ")")
    raise SpeechImportError(f"{path}: DeepSpeech tensors missing: {', '.join(missing)}")


def _graph_lstm_attrs(nodes: list[tff.NodeDef]) -> tuple[float | None, str | None]:
    """(forget_bias of the graph's LSTM op, or None; the op name that set it)."""
    found: dict[float, str] = {}
    for node in nodes:
        if node.op not in _LSTM_OPS:
            continue
        attrs = {k: v.value for k, v in node.attr.items()}
        if attrs.get("use_peephole"):
            raise UnsupportedModelError(f"LSTM {node.name!r} uses peephole connections; "
                                        "the DeepSpeech port has none")
        clip = attrs.get("cell_clip", 3.0)  # op defaults: cell_clip 3, forget_bias 1
        if clip is not None and clip > 0:
            raise UnsupportedModelError(f"LSTM {node.name!r} clips its cell state at "
                                        f"{clip:g}; the DeepSpeech port does not")
        found.setdefault(float(attrs.get("forget_bias", 1.0)), node.name)
    if len(found) > 1:
        raise SpeechImportError(f"the graph's LSTM ops disagree on forget_bias: {found}")
    if not found:
        return None, None
    (bias, name), = found.items()
    return bias, name


def _graph_relu_clip(nodes: list[tff.NodeDef]) -> float | None:
    """The constant of ``Minimum(Relu(x), c)`` nodes (DeepSpeech's clipped ReLU)."""
    by_name = {n.name: n for n in nodes}
    values = set()
    for node in nodes:
        if node.op != "Minimum" or len(node.inputs) != 2:
            continue
        ins = [by_name.get(i.split(":")[0].lstrip("^")) for i in node.inputs]
        if any(i is None for i in ins) or not any(i.op == "Relu" for i in ins):
            continue
        for i in ins:
            if i.op == "Const" and "value" in i.attr:
                value = i.attr["value"].tensor(i.name)
                if value.size == 1:
                    values.add(float(value.reshape(-1)[0]))
    if len(values) > 1:
        raise SpeechImportError(f"the graph's clipped ReLUs disagree: {sorted(values)}")
    return values.pop() if values else None


def _float_array(name: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind != "f":
        raise SpeechImportError(f"{name}: {a.dtype} tensor, expected floating point weights")
    return np.ascontiguousarray(a, dtype=np.float32)


def _check_shape(name: str, a: np.ndarray, want: tuple[int, ...], why: str) -> None:
    if a.shape != want:
        raise SpeechImportError(f"inconsistent shapes: {name} is {list(a.shape)}, expected "
                                f"{list(want)} ({why})")


@dataclass
class _Imported:
    config: DeepSpeechConfig
    state_dict: dict[str, torch.Tensor]
    source_format: str
    names: dict[str, str]
    ignored: int
    forget_bias_from: str


def _import(path: str | os.PathLike, n_input: int | None, forget_bias: float | None,
            relu_clip: float | None) -> _Imported:
    p = os.fspath(path)
    with _open_source(p) as src:
        bidi = any(_BIDIRECTIONAL.search(n) for n in src.names)
        chosen, scope = _select(src.names, p, bidirectional=bidi)
        try:
            loaded = src.load(sorted(set(chosen.values())))
            graph_bias, bias_op = _graph_lstm_attrs(src.nodes)
            graph_clip = _graph_relu_clip(src.nodes)
        except tff.TFFormatError as e:
            raise SpeechImportError(f"{p}: {e}") from None
        except SpeechImportError as e:  # graph attributes: say which file
            raise type(e)(f"{p}: {e}") from None
    t = {key: _float_array(chosen[key], loaded[chosen[key]]) for key in chosen}

    w1 = t["layer_1/weights"]
    if w1.ndim != 2:
        raise SpeechImportError(f"inconsistent shapes: {chosen['layer_1/weights']} is "
                                f"{list(w1.shape)}, expected a matrix")
    in_features, n_hidden = w1.shape
    bias = t["lstm/bias"]
    if bias.ndim != 1 or bias.shape[0] % 4:
        raise SpeechImportError(f"inconsistent shapes: {chosen['lstm/bias']} is "
                                f"{list(bias.shape)}, expected [4 * n_cell]")
    n_cell = bias.shape[0] // 4
    w6 = t["layer_6/weights"]
    if w6.ndim != 2:
        raise SpeechImportError(f"inconsistent shapes: {chosen['layer_6/weights']} is "
                                f"{list(w6.shape)}, expected a matrix")
    n_output = w6.shape[1]
    # 0.1.x: layer_3 is 2 * n_cell wide and layer_5 reads both directions
    w3 = t["layer_3/weights"]
    n_hidden_3 = w3.shape[1] if bidi and w3.ndim == 2 else n_hidden
    n_lstm_out = 2 * n_cell if bidi else n_cell
    expected = {
        "layer_1/bias": ((n_hidden,), "layer_1 width"),
        "layer_2/weights": ((n_hidden, n_hidden), "n_hidden x n_hidden"),
        "layer_2/bias": ((n_hidden,), "n_hidden"),
        "layer_3/weights": ((n_hidden, n_hidden_3), "n_hidden x n_hidden_3"),
        "layer_3/bias": ((n_hidden_3,), "n_hidden_3"),
        "lstm/kernel": ((n_hidden_3 + n_cell, 4 * n_cell),
                        "[n_hidden_3 + n_cell, 4 * n_cell]"),
        "layer_5/weights": ((n_lstm_out, n_hidden),
                            ("2 * " if bidi else "") + "n_cell x n_hidden"),
        "layer_5/bias": ((n_hidden,), "n_hidden"),
        "layer_6/weights": ((n_hidden, n_output), "n_hidden x n_output"),
        "layer_6/bias": ((n_output,), "n_output"),
    }
    if bidi:
        expected["lstm_bw/kernel"] = expected["lstm/kernel"]
        expected["lstm_bw/bias"] = ((4 * n_cell,), "like the forward LSTM")
    for key, (shape, why) in expected.items():
        _check_shape(chosen[key], t[key], shape, why)

    n_in = n_input or 26
    window, rest = divmod(in_features, n_in)
    if rest or window % 2 == 0:
        raise SpeechImportError(
            f"inconsistent shapes: {chosen['layer_1/weights']} has {in_features} inputs, "
            f"not (2 * n_context + 1) * n_input for n_input={n_in}; give the right n_input")
    if forget_bias is not None:
        fb, fb_from = float(forget_bias), "given"
    elif graph_bias is not None:
        fb, fb_from = graph_bias, f"graph op {bias_op}"
    elif bidi:
        fb, fb_from = BI_FORGET_BIAS, "BasicLSTMCell in DeepSpeech 0.1.x"
    else:
        fb, fb_from = LSTM_SCOPES[scope], f"scope {scope}"
    config = DeepSpeechConfig(
        n_input=n_in, n_context=(window - 1) // 2, n_hidden=int(n_hidden), n_cell=int(n_cell),
        n_output=int(n_output),
        relu_clip=float(relu_clip if relu_clip is not None else
                        graph_clip if graph_clip is not None else DEFAULT_RELU_CLIP),
        forget_bias=fb, n_hidden_3=int(n_hidden_3) if bidi else None, bidirectional=bidi,
        features="v01" if bidi else "tf")

    state: dict[str, torch.Tensor] = {}
    for layer in DENSE_LAYERS:
        state[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(t[f"{layer}/weights"].T))
        state[f"{layer}.bias"] = torch.from_numpy(t[f"{layer}/bias"])
    for key in ("lstm", "lstm_bw") if bidi else ("lstm",):
        state[f"{key}.kernel"] = torch.from_numpy(t[f"{key}/kernel"])
        state[f"{key}.bias"] = torch.from_numpy(t[f"{key}/bias"])
    _check_against_model(config, state)
    ignored = len(src.names) - len(set(chosen.values()))
    return _Imported(config, state, src.fmt, chosen, ignored, fb_from)


def _check_against_model(config: DeepSpeechConfig, state: dict[str, torch.Tensor]) -> None:
    """The state dict has exactly the model's keys and shapes (built on the meta device)."""
    with torch.device("meta"):
        model = DeepSpeech(config)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:  # a bug in this module, not in the source file
        raise AssertionError(f"imported state dict does not fit the model: {got} vs {want}")


def import_deepspeech(path: str | os.PathLike, n_input: int | None = None,
                      forget_bias: float | None = None, relu_clip: float | None = None,
                      ) -> tuple[DeepSpeechConfig, dict[str, torch.Tensor]]:
    """Read DeepSpeech weights from a TensorFlow checkpoint or graph (see module docstring).

    ``n_input`` (MFCC coefficients per frame, default 26) is needed to split layer_1's
    inputs into ``(2 * n_context + 1) * n_input``; ``forget_bias`` and ``relu_clip``
    override what the source says or implies. Raises :class:`SpeechImportError` (or its
    subclass :class:`UnsupportedModelError`) with a sentence saying what is wrong.
    """
    result = _import(path, n_input, forget_bias, relu_clip)
    return result.config, result.state_dict


def import_to_checkpoint(src: str | os.PathLike, out_path: str | os.PathLike,
                         n_input: int | None = None, forget_bias: float | None = None,
                         relu_clip: float | None = None) -> dict:
    """Import ``src`` and write it as our ``deepspeech`` checkpoint at ``out_path``.

    Returns a summary: source, format, output, architecture, parameter count, how many
    source tensors were ignored (optimizer slots, step counters ...) and the SHA-256.
    """
    result = _import(src, n_input, forget_bias, relu_clip)
    cfg = result.config
    meta = {"source": os.path.basename(os.path.normpath(os.fspath(src))),
            "source_format": result.source_format,
            "tf_names": dict(result.names), "forget_bias_from": result.forget_bias_from}
    digest = save_checkpoint(out_path, "deepspeech", cfg.to_dict(), result.state_dict, meta)
    return {
        "source": os.fspath(src),
        "format": result.source_format,
        "output": os.fspath(out_path),
        "architecture": (f"n_input={cfg.n_input} n_context={cfg.n_context} "
                         f"n_hidden={cfg.n_hidden} n_cell={cfg.n_cell} "
                         f"n_output={cfg.n_output} relu_clip={cfg.relu_clip:g} "
                         f"forget_bias={cfg.forget_bias:g}"
                         + (f" n_hidden_3={cfg.n_hidden_3} bidirectional (0.1.x features; "
                            "offline only)" if cfg.bidirectional else "")),
        "streaming": cfg.streaming,
        "parameters": sum(v.numel() for v in result.state_dict.values()),
        "ignored_tensors": result.ignored,
        "sha256": digest,
    }
