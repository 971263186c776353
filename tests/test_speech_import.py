"""DeepSpeech weight import: TensorFlow file formats without TensorFlow, and the mapping.

Small random models (n_hidden 16, n_cell 12, n_context 2) are written in TensorFlow's
layout with our writers (checkpoint V2 with optimizer slots, frozen GraphDef, memmapped
package, .tar.gz), imported, and the PyTorch model's logits are compared with a NumPy
forward pass written straight from the TensorFlow-layout arrays.

``test_real_tensorflow_cross_check`` runs only when ``ETF_TF_PYTHON`` names a Python with
TensorFlow (never imported here): TensorFlow writes checkpoints and graphs that our readers
must read, TensorFlow reads what our writers wrote, and TensorFlow's own LSTM kernel gives
the logits our import must reproduce.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from etf_models import tf_formats as tff  # noqa: E402
from etf_models.checkpoint import load_checkpoint  # noqa: E402
from etf_models.deepspeech import DeepSpeech, DeepSpeechConfig  # noqa: E402
from etf_models.speech_import import (  # noqa: E402
    SpeechImportError,
    UnsupportedModelError,
    import_deepspeech,
    import_to_checkpoint,
)

LSTM = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"
N_INPUT, N_CONTEXT, N_HIDDEN, N_CELL, N_OUTPUT = 26, 2, 16, 12, 29
WINDOW = 2 * N_CONTEXT + 1


def tf_model(seed: int = 0) -> dict[str, np.ndarray]:
    """Random DeepSpeech weights in TensorFlow's layout and 0.9.x names."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    sizes = {"layer_1": (WINDOW * N_INPUT, N_HIDDEN), "layer_2": (N_HIDDEN, N_HIDDEN),
             "layer_3": (N_HIDDEN, N_HIDDEN), "layer_5": (N_CELL, N_HIDDEN),
             "layer_6": (N_HIDDEN, N_OUTPUT)}
    out = {}
    for name, (n_in, n_out) in sizes.items():
        out[f"{name}/weights"] = w(n_in, n_out, scale=0.5 if name == "layer_1" else 0.3)
        out[f"{name}/bias"] = w(n_out, scale=0.5)
    out[f"{LSTM}/kernel"] = w(N_HIDDEN + N_CELL, 4 * N_CELL, scale=0.15)
    out[f"{LSTM}/bias"] = w(4 * N_CELL, scale=0.5)
    return out


def with_training_state(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a DeepSpeech training checkpoint holds besides the weights."""
    out = dict(weights)
    for name, value in weights.items():
        out[f"{name}/Adam"] = np.full_like(value, 0.25)
        out[f"{name}/Adam_1"] = np.full_like(value, 0.5)
    out["global_step"] = np.array(1466475, np.int64)
    out["learning_rate"] = np.array(1e-4, np.float32)
    out["beta1_power"] = np.array(0.9, np.float32)
    out["beta2_power"] = np.array(0.999, np.float32)
    return out


def reference_logits(t: dict[str, np.ndarray], x: np.ndarray, forget_bias: float = 0.0,
                     relu_clip: float = 20.0) -> np.ndarray:
    """DeepSpeech's forward pass in NumPy from TensorFlow-layout weights: x [T, window,
    n_input] -> logits [T, n_output]; TensorFlow's block LSTM with gates (i, j, f, o)."""
    def dense(name: str, v: np.ndarray, relu: bool = True) -> np.ndarray:
        y = v @ t[f"{name}/weights"].astype(np.float64) + t[f"{name}/bias"]
        return np.minimum(np.maximum(y, 0.0), relu_clip) if relu else y

    h = dense("layer_3", dense("layer_2", dense("layer_1", x.reshape(len(x), -1))))
    outs = np_lstm(t[f"{LSTM}/kernel"], t[f"{LSTM}/bias"], h, forget_bias)
    return dense("layer_6", dense("layer_5", outs), relu=False)


def np_lstm(kernel: np.ndarray, bias: np.ndarray, seq: np.ndarray,
            forget_bias: float) -> np.ndarray:
    """TensorFlow's LSTM (block cell and ``BasicLSTMCell`` alike: gates i, j, f, o of
    ``[x, h] @ kernel + bias``) over ``seq`` [T, n_in] from a zero state -> [T, n_cell]."""
    def sigmoid(v: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-v))

    kernel = kernel.astype(np.float64)
    n = bias.shape[0] // 4
    c_state, h_state, outs = np.zeros(n), np.zeros(n), []
    for step in seq:
        z = np.concatenate([step, h_state]) @ kernel + bias
        i, j, f, o = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
        c_state = sigmoid(f + forget_bias) * c_state + sigmoid(i) * np.tanh(j)
        h_state = sigmoid(o) * np.tanh(c_state)
        outs.append(h_state)
    return np.stack(outs)


def torch_logits(config: DeepSpeechConfig, state: dict, x: np.ndarray) -> np.ndarray:
    model = DeepSpeech(config)
    model.load_state_dict(state)
    with torch.no_grad():
        return model(torch.from_numpy(x[None].astype(np.float32)))[0].numpy()


def windows(steps: int = 7, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((steps, WINDOW, N_INPUT)) * 3) \
        .astype(np.float32)


EXPECTED = DeepSpeechConfig(n_input=N_INPUT, n_context=N_CONTEXT, n_hidden=N_HIDDEN,
                            n_cell=N_CELL, n_output=N_OUTPUT, relu_clip=20.0, forget_bias=0.0)


def assert_imports_exactly(path: Path | str, weights: dict[str, np.ndarray],
                           forget_bias: float = 0.0, relu_clip: float = 20.0,
                           overrides: dict | None = None) -> None:
    """Import ``path`` and check its logits against the NumPy reference."""
    config, state = import_deepspeech(path, **(overrides or {}))
    assert config.n_hidden == N_HIDDEN and config.n_cell == N_CELL
    assert (config.forget_bias, config.relu_clip) == (forget_bias, relu_clip)
    x = windows()
    np.testing.assert_allclose(torch_logits(config, state, x),
                               reference_logits(weights, x, forget_bias, relu_clip),
                               rtol=1e-5, atol=1e-5)


def graph_nodes(weights: dict[str, np.ndarray], forget_bias: float = 0.0,
                relu_clip: float = 20.0, scope: str = "") -> list[tff.NodeDef]:
    """A frozen-graph-like node list: Const weights with their /read identities, the
    clipped ReLUs and the block LSTM op as DeepSpeech's export leaves them."""
    nodes = []
    for name, value in weights.items():
        nodes.append(tff.const_node(scope + name, value))
        nodes.append(tff.NodeDef(scope + name + "/read", "Identity", [scope + name],
                                 {"T": tff.AttrValue("type", 1)}))
    nodes.append(tff.const_node("Minimum/y", np.float32(relu_clip)))
    for k in (1, 2, 3):
        nodes.append(tff.NodeDef(f"Relu_{k}", "Relu", [f"BiasAdd_{k}"]))
        nodes.append(tff.NodeDef(f"Minimum_{k}", "Minimum", [f"Relu_{k}", "Minimum/y"]))
    nodes.append(tff.NodeDef(f"{LSTM}/BlockLSTM", "BlockLSTM", [
        "ToInt64", "Reshape", "previous_state_c", "previous_state_h", f"{LSTM}/kernel/read",
        "zeros", "zeros", "zeros", f"{LSTM}/bias/read"], {
        "forget_bias": tff.AttrValue("f", forget_bias),
        "cell_clip": tff.AttrValue("f", -1.0),
        "use_peephole": tff.AttrValue("b", False), "T": tff.AttrValue("type", 1)}))
    nodes.append(tff.const_node("metadata_alphabet", np.array([b"abc"], dtype=object)))
    return nodes


# ------------------------------------------------------------------------------------------
# Round trips through our writers
# ------------------------------------------------------------------------------------------

def test_checkpoint_v2_round_trip(tmp_path: Path) -> None:
    weights = tf_model()
    prefix = tff.write_checkpoint(tmp_path / "ckpt" / "best_dev-1466475",
                                  with_training_state(weights))
    tff.write_checkpoint_state(tmp_path / "ckpt", prefix, "best_dev_checkpoint")
    for source in (prefix, prefix + ".index", prefix + ".data-00000-of-00001",
                   tmp_path / "ckpt"):
        assert_imports_exactly(source, weights)
    config, state = import_deepspeech(prefix)
    assert config == EXPECTED
    assert set(state) == set(DeepSpeech(config).state_dict())
    np.testing.assert_array_equal(state["layer_1.weight"].numpy(), weights["layer_1/weights"].T)
    np.testing.assert_array_equal(state["lstm.kernel"].numpy(), weights[f"{LSTM}/kernel"])


def test_frozen_graph_round_trip(tmp_path: Path) -> None:
    weights = tf_model(2)
    tff.write_graph_def(tmp_path / "output_graph.pb", graph_nodes(weights))
    assert_imports_exactly(tmp_path / "output_graph.pb", weights)
    # the LSTM op's forget_bias and the ReLU clip constant come from the graph
    tff.write_graph_def(tmp_path / "other.pb",
                        graph_nodes(weights, forget_bias=1.0, relu_clip=6.0, scope="import/"))
    assert_imports_exactly(tmp_path / "other.pb", weights, forget_bias=1.0, relu_clip=6.0)
    assert_imports_exactly(tmp_path / "other.pb", weights, forget_bias=0.5, relu_clip=3.0,
                           overrides={"forget_bias": 0.5, "relu_clip": 3.0})


def test_memmapped_graph_round_trip(tmp_path: Path) -> None:
    weights = tf_model(3)
    path = tmp_path / "output_graph.pbmm"
    tff.write_memmapped_graph(path, graph_nodes(weights), min_bytes=100)
    nodes, _ = tff.read_memmapped_graph(path.read_bytes())
    assert {n.op for n in nodes} >= {"ImmutableConst", "Const"}  # small ones stay Const
    assert_imports_exactly(path, weights)


def test_release_tarballs(tmp_path: Path) -> None:
    weights = tf_model(4)
    top = tmp_path / "deepspeech-0.9.3-checkpoint"
    prefix = tff.write_checkpoint(top / "best_dev-1466475", with_training_state(weights))
    tff.write_checkpoint_state(top, "/home/someone/train/best_dev-1466475",
                               "best_dev_checkpoint")
    (top / "flags.txt").write_text("--n_hidden=16\n")
    (top / "alphabet.txt").write_text("a\n")
    archive = tmp_path / "deepspeech-0.9.3-checkpoint.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    os.remove(prefix + ".index")  # only the archive is left to read
    assert_imports_exactly(archive, weights)

    graph_dir = tmp_path / "models"
    graph_dir.mkdir()
    tff.write_graph_def(graph_dir / "output_graph.pb", graph_nodes(weights))
    archive = tmp_path / "models.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(graph_dir / "output_graph.pb", arcname="models/output_graph.pb")
    assert_imports_exactly(archive, weights)
    assert_imports_exactly(graph_dir, weights)


def test_import_to_checkpoint(tmp_path: Path) -> None:
    weights = tf_model(5)
    prefix = tff.write_checkpoint(tmp_path / "best_dev-7", with_training_state(weights))
    summary = import_to_checkpoint(prefix + ".index", tmp_path / "ds.pt")
    assert summary["format"] == "tf-checkpoint"
    assert summary["ignored_tensors"] == 2 * 12 + 4
    assert summary["parameters"] == sum(v.size for v in weights.values())
    blob = load_checkpoint(tmp_path / "ds.pt", model="deepspeech")
    assert blob["meta"]["source_format"] == "tf-checkpoint"
    assert blob["meta"]["source"] == "best_dev-7.index"
    config = DeepSpeechConfig(**blob["config"])
    assert config == EXPECTED
    x = windows()
    np.testing.assert_allclose(torch_logits(config, blob["state_dict"], x),
                               reference_logits(weights, x), rtol=1e-5, atol=1e-5)


def test_name_variants_and_n_input(tmp_path: Path) -> None:
    weights = tf_model(6)
    # TF2 object checkpoints wrap names; old (0.5) scope implies forget_bias 1
    renamed = {f"model/{k.replace(LSTM, 'lstm_fused_cell')}/.ATTRIBUTES/VARIABLE_VALUE": v
               for k, v in weights.items()}
    prefix = tff.write_checkpoint(tmp_path / "renamed", renamed)
    assert_imports_exactly(prefix, weights, forget_bias=1.0)
    config, _ = import_deepspeech(prefix, n_input=10)  # 130 inputs = 13 frames of 10
    assert (config.n_input, config.n_context) == (10, 6)
    with pytest.raises(SpeechImportError, match="n_input=12"):
        import_deepspeech(prefix, n_input=12)


# ------------------------------------------------------------------------------------------
# Foreign, corrupt and incomplete sources
# ------------------------------------------------------------------------------------------

def test_foreign_and_corrupt_files(tmp_path: Path) -> None:
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name in ("junk", "junk.pb", "junk.index", "junk.pbmm"):
        (tmp_path / name).write_bytes(junk)
        with pytest.raises(SpeechImportError, match="not a"):
            import_deepspeech(tmp_path / name)
    with pytest.raises(SpeechImportError, match="no such file"):
        import_deepspeech(tmp_path / "absent.pb")

    prefix = tff.write_checkpoint(tmp_path / "ok", with_training_state(tf_model()))
    index = Path(prefix + ".index").read_bytes()
    Path(prefix + ".index").write_bytes(index[: len(index) // 2])
    with pytest.raises(SpeechImportError, match="truncated"):
        import_deepspeech(prefix)
    flipped = bytearray(index)
    flipped[10] ^= 0xFF
    Path(prefix + ".index").write_bytes(bytes(flipped))
    with pytest.raises(SpeechImportError, match="checksum"):
        import_deepspeech(prefix)
    Path(prefix + ".index").write_bytes(index)
    shard = Path(prefix + ".data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    last = max((e for e in tff.CheckpointReader(prefix).entries.values()
                if e.name.startswith("layer_") and "Adam" not in e.name), key=lambda e: e.offset)
    shard.write_bytes(bytes(data[:last.offset + 2]))
    with pytest.raises(SpeechImportError, match="truncated"):
        import_deepspeech(prefix)
    data[last.offset + 3] ^= 0x40
    shard.write_bytes(bytes(data))
    with pytest.raises(SpeechImportError, match="checksum"):
        import_deepspeech(prefix)

    # protobufs and text that are not GraphDefs
    header = tff.read_table(index)[0][1]
    for name, blob in (("header.pb", bytes(header)), ("text.pb", b"hello, world\n"),
                       ("tensor.pb", tff.encode_tensor_proto(np.ones(3, np.float32))),
                       ("empty.pb", b"")):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(SpeechImportError, match="not a TensorFlow checkpoint or graph"):
            import_deepspeech(tmp_path / name)
    (tmp_path / "model.meta").write_bytes(b"\x0a\x00")
    with pytest.raises(SpeechImportError, match=".meta"):
        import_deepspeech(tmp_path / "model.meta")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(SpeechImportError, match="no TensorFlow checkpoint"):
        import_deepspeech(tmp_path / "empty_dir")


def test_missing_and_inconsistent_tensors(tmp_path: Path) -> None:
    weights = with_training_state(tf_model())
    no_six = {k: v for k, v in weights.items() if not k.startswith("layer_6/")}
    prefix = tff.write_checkpoint(tmp_path / "no6", no_six)
    with pytest.raises(SpeechImportError, match="missing: layer_6/weights, layer_6/bias$"):
        import_deepspeech(prefix)
    no_bias = {k: v for k, v in weights.items() if k != f"{LSTM}/bias"}
    with pytest.raises(SpeechImportError, match=f"missing: {LSTM}/bias"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "nolstm", no_bias))

    bad = dict(weights)
    bad["layer_2/weights"] = np.zeros((N_HIDDEN, N_HIDDEN + 1), np.float32)
    with pytest.raises(SpeechImportError, match=r"layer_2/weights is \[16, 17\]"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "bad2", bad))
    bad = dict(weights)
    bad[f"{LSTM}/kernel"] = np.zeros((N_HIDDEN + N_CELL + 1, 4 * N_CELL), np.float32)
    with pytest.raises(SpeechImportError, match="inconsistent shapes"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "badk", bad))
    bad = dict(weights)
    bad["layer_1/weights"] = np.zeros((4 * N_INPUT, N_HIDDEN), np.float32)  # even window
    with pytest.raises(SpeechImportError, match="n_context"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "bad1", bad))
    bad = dict(weights)
    bad["layer_5/bias"] = np.zeros(N_HIDDEN, np.int32)
    with pytest.raises(SpeechImportError, match="int32"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "badt", bad))

    other = {"conv1/kernel": np.zeros((3, 3), np.float32), "global_step": np.int64(3)}
    with pytest.raises(SpeechImportError, match="no DeepSpeech weights"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "other", other))


# DeepSpeech 0.1.x: bidirectional, h1/b1 ... names, layer_3 2 * n_cell wide
V01_FW, V01_BW = "bidirectional_rnn/fw/basic_lstm_cell", "bidirectional_rnn/bw/basic_lstm_cell"


def tf_model_v01(seed: int = 0, leaves: tuple[str, str] = ("kernel", "bias"),
                 ) -> dict[str, np.ndarray]:
    """Random DeepSpeech 0.1.x weights under its names (TF >= 1.2 leaves by default)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    n3 = 2 * N_CELL
    sizes = {"1": (WINDOW * N_INPUT, N_HIDDEN), "2": (N_HIDDEN, N_HIDDEN), "3": (N_HIDDEN, n3),
             "5": (2 * N_CELL, N_HIDDEN), "6": (N_HIDDEN, N_OUTPUT)}
    out = {}
    for k, (n_in, n_out) in sizes.items():
        out[f"h{k}"] = w(n_in, n_out, scale=0.5 if k == "1" else 0.3)
        out[f"b{k}"] = w(n_out, scale=0.5)
    for scope in (V01_FW, V01_BW):
        out[f"{scope}/{leaves[0]}"] = w(n3 + N_CELL, 4 * N_CELL, scale=0.15)
        out[f"{scope}/{leaves[1]}"] = w(4 * N_CELL, scale=0.5)
    return out


def reference_logits_v01(t: dict[str, np.ndarray], x: np.ndarray,
                         forget_bias: float = 1.0) -> np.ndarray:
    """DeepSpeech 0.1.x's BiRNN in NumPy from its TensorFlow weights: ``BasicLSTMCell``
    (gates i, j, f, o) forward and backward in time, outputs concatenated fw first."""
    def dense(k: str, v: np.ndarray, relu: bool = True) -> np.ndarray:
        y = v @ t[f"h{k}"].astype(np.float64) + t[f"b{k}"]
        return np.minimum(np.maximum(y, 0.0), 20.0) if relu else y

    def lstm(scope: str, seq: np.ndarray) -> np.ndarray:
        leaf_k, leaf_b = ("kernel", "bias") if f"{scope}/kernel" in t else ("weights", "biases")
        return np_lstm(t[f"{scope}/{leaf_k}"], t[f"{scope}/{leaf_b}"], seq, forget_bias)

    h3 = dense("3", dense("2", dense("1", x.reshape(len(x), -1))))
    both = np.concatenate([lstm(V01_FW, h3), lstm(V01_BW, h3[::-1])[::-1]], axis=1)
    return dense("6", dense("5", both), relu=False)


def v01_graph_nodes(weights: dict[str, np.ndarray]) -> list[tff.NodeDef]:
    """A frozen 0.1.x-like graph: Const weights with /read identities, the clipped ReLUs,
    no LSTM op (``BasicLSTMCell`` is plain MatMul / Sigmoid / Tanh inside while loops)."""
    nodes = []
    for name, value in weights.items():
        nodes.append(tff.const_node(name, value))
        nodes.append(tff.NodeDef(name + "/read", "Identity", [name]))
    nodes.append(tff.const_node("Minimum/y", np.float32(20.0)))
    nodes.append(tff.NodeDef("Relu", "Relu", ["Add"]))
    nodes.append(tff.NodeDef("Minimum", "Minimum", ["Relu", "Minimum/y"]))
    nodes.append(tff.NodeDef("bidirectional_rnn/fw/fw/while/Enter", "Enter", ["zeros"]))
    nodes.append(tff.NodeDef("logits", "Reshape", ["Add_5", "Reshape/shape"]))
    return nodes


def assert_imports_v01(path: Path | str, weights: dict[str, np.ndarray],
                       forget_bias: float = 1.0, overrides: dict | None = None) -> None:
    config, state = import_deepspeech(path, **(overrides or {}))
    assert (config.bidirectional, config.features, config.streaming) == (True, "v01", False)
    assert (config.n_hidden, config.n_cell, config.n_hidden_3) == (N_HIDDEN, N_CELL,
                                                                   2 * N_CELL)
    assert (config.n_context, config.forget_bias) == (N_CONTEXT, forget_bias)
    x = windows(8, seed=3)
    np.testing.assert_allclose(torch_logits(config, state, x),
                               reference_logits_v01(weights, x, forget_bias),
                               rtol=1e-5, atol=1e-5)


def test_v01_bidirectional_graph_and_checkpoint(tmp_path: Path) -> None:
    weights = tf_model_v01(7)
    tff.write_graph_def(tmp_path / "output_graph.pb", v01_graph_nodes(weights))
    assert_imports_v01(tmp_path / "output_graph.pb", weights)
    assert_imports_v01(tmp_path / "output_graph.pb", weights, forget_bias=0.0,
                       overrides={"forget_bias": 0.0})
    # a TensorFlow 1.0 - 1.1 training checkpoint: weights/biases leaves and Adam slots
    old = tf_model_v01(8, leaves=("weights", "biases"))
    prefix = tff.write_checkpoint(tmp_path / "model.ckpt-100", with_training_state(old))
    assert_imports_v01(prefix, old)

    summary = import_to_checkpoint(tmp_path / "output_graph.pb", tmp_path / "v01.pt")
    assert "bidirectional" in summary["architecture"]
    assert summary["parameters"] == sum(v.size for v in weights.values())
    from etf_models.deepspeech import load_deepspeech

    model = load_deepspeech(tmp_path / "v01.pt")
    assert model.config.bidirectional and not model.config.streaming
    with pytest.raises(RuntimeError, match="whole utterance"):
        model.step(torch.zeros(1, 2, WINDOW, N_INPUT), model.initial_state())


def test_v01_missing_and_inconsistent(tmp_path: Path) -> None:
    weights = tf_model_v01()
    partial = {k: v for k, v in weights.items() if not k.startswith(V01_BW)}
    with pytest.raises(SpeechImportError, match=f"missing: {V01_BW}/kernel"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "partial", partial))
    bad = dict(weights)
    bad["h5"] = np.zeros((N_CELL, N_HIDDEN), np.float32)  # read one direction only
    with pytest.raises(SpeechImportError, match=r"h5 is \[12, 16\].*2 \* n_cell"):
        import_deepspeech(tff.write_checkpoint(tmp_path / "bad", bad))


def test_unsupported_lstm(tmp_path: Path) -> None:
    nodes = graph_nodes(tf_model())
    lstm = next(n for n in nodes if n.op == "BlockLSTM")
    lstm.attr["cell_clip"] = tff.AttrValue("f", 3.0)
    tff.write_graph_def(tmp_path / "clip.pb", nodes)
    with pytest.raises(UnsupportedModelError, match="clips its cell state"):
        import_deepspeech(tmp_path / "clip.pb")
    lstm.attr["cell_clip"] = tff.AttrValue("f", -1.0)
    lstm.attr["use_peephole"] = tff.AttrValue("b", True)
    tff.write_graph_def(tmp_path / "peep.pb", nodes)
    with pytest.raises(UnsupportedModelError, match="peephole"):
        import_deepspeech(tmp_path / "peep.pb")


# ------------------------------------------------------------------------------------------
# The formats themselves
# ------------------------------------------------------------------------------------------

def test_table_many_blocks_and_prefix_compression() -> None:
    entries = [(f"scope/{i // 37:03d}/var_{i:05d}".encode(), bytes([i % 251]) * (i % 50))
               for i in range(2000)]
    table = tff.build_table(entries, block_size=512)
    got = tff.read_table(table)
    assert [(k, bytes(v)) for k, v in got] == entries
    with pytest.raises(ValueError, match="increasing"):
        tff.build_table([(b"b", b""), (b"a", b"")])


ALL_DTYPES = (np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
              np.uint8, np.uint16, np.uint32, np.uint64, np.bool_, np.complex64, np.complex128)


def sample_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for dt in ALL_DTYPES:
        name = np.dtype(dt).name
        if np.dtype(dt).kind == "b":
            a = rng.integers(0, 2, (3, 4)).astype(bool)
        elif np.dtype(dt).kind in "iu":
            info = np.iinfo(dt)
            a = rng.integers(info.min, info.max, (3, 4), dtype=dt, endpoint=True)
        elif np.dtype(dt).kind == "c":
            a = (rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))).astype(dt)
        else:
            a = rng.standard_normal((2, 3, 2)).astype(dt)
        out[f"values/{name}"] = a
    out["scalar"] = np.array(-7, np.int64)
    out["empty"] = np.zeros((0, 5), np.float32)
    out["splat"] = np.full((3, 4), 0.5, np.float32)
    return out


def test_checkpoint_dtypes_round_trip(tmp_path: Path) -> None:
    arrays = sample_arrays()
    prefix = tff.write_checkpoint(tmp_path / "all", arrays)
    got = tff.read_checkpoint(prefix)
    assert set(got) == set(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == a.shape, name
        np.testing.assert_array_equal(got[name], a)


def test_tensor_proto_typed_fields_and_broadcast() -> None:
    for name, a in sample_arrays(1).items():
        for typed in (False, True):
            got = tff.decode_tensor_proto(tff.encode_tensor_proto(a, typed=typed))
            assert got.dtype == a.dtype and got.shape == a.shape, (name, typed)
            np.testing.assert_array_equal(got, a)
    splat = tff.encode_tensor_proto(np.full((3, 4), 0.5, np.float32), typed=True)
    assert len(splat) < 30  # one value stored, broadcast on reading
    # TensorFlow's rule: fewer values than elements repeat the last value
    body = (tff._f_varint(1, 3) + tff._f_bytes(2, tff._encode_shape((5,)))
            + tff._f_bytes(7, b"".join(tff._enc_varint(v) for v in (-1, 2))))
    np.testing.assert_array_equal(tff.decode_tensor_proto(body), [-1, 2, 2, 2, 2])
    strings = np.array([b"a", b"bc"], dtype=object)
    np.testing.assert_array_equal(tff.decode_tensor_proto(tff.encode_tensor_proto(strings)),
                                  strings)


# ------------------------------------------------------------------------------------------
# Cross-check with real TensorFlow (development only: ETF_TF_PYTHON=/path/to/python)
# ------------------------------------------------------------------------------------------

_TF_SCRIPT = r'''
import json, os, sys
import numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

tf1 = tf.compat.v1
LSTM = "cudnn_lstm/rnn/multi_rnn_cell/cell_0/cudnn_compatible_lstm_cell"


def dump(path, arrays):
    names = sorted(arrays)
    out = {}
    for i, name in enumerate(names):
        a = arrays[name]
        if isinstance(a, bytes):
            a = np.frombuffer(a, np.uint8)
        elif a.dtype == object:
            a = np.frombuffer(b"".join(a.reshape(-1)), np.uint8)
        elif a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        out[f"a{i}"] = a
    np.savez(path + ".npz", **out)
    with open(path + ".json", "w") as f:
        json.dump(names, f)


def deepspeech_graph(weights, steps, window, n_input):
    """DeepSpeech 0.9.x's inference graph: ref variables under its names, BlockLSTM."""
    x = tf1.placeholder(tf.float32, [1, steps, window, n_input], name="input_node")
    v = {}
    for name, value in weights.items():
        scope, leaf = name.rsplit("/", 1)
        with tf1.variable_scope(scope):
            v[name] = tf1.get_variable(leaf, initializer=tf.constant(value), use_resource=False)
    h = tf.reshape(x, [-1, window * n_input])
    for layer in ("layer_1", "layer_2", "layer_3"):
        h = tf.nn.bias_add(tf.matmul(h, v[layer + "/weights"]), v[layer + "/bias"])
        h = tf.minimum(tf.nn.relu(h), 20.0)
    n_cell = weights[LSTM + "/bias"].shape[0] // 4
    zeros = tf.zeros([1, n_cell])
    diag = tf.zeros([n_cell])
    out = tf.raw_ops.BlockLSTM(
        seq_len_max=tf.constant(steps, tf.int64), x=tf.reshape(h, [steps, 1, -1]),
        cs_prev=zeros, h_prev=zeros, w=v[LSTM + "/kernel"], wci=diag, wcf=diag, wco=diag,
        b=v[LSTM + "/bias"], forget_bias=0.0, cell_clip=-1.0, use_peephole=False)
    h = tf.reshape(out.h, [-1, n_cell])
    h = tf.minimum(tf.nn.relu(tf.nn.bias_add(tf.matmul(h, v["layer_5/weights"]),
                                             v["layer_5/bias"])), 20.0)
    h = tf.nn.bias_add(tf.matmul(h, v["layer_6/weights"]), v["layer_6/bias"])
    return x, tf.reshape(h, [steps, 1, -1], name="raw_logits"), v


def tf_writes(inp, out):
    spec = np.load(inp + "/model.npz")
    weights = {k.replace("|", "/"): spec[k] for k in spec.files if k != "x"}
    x_val = spec["x"]
    steps, window, n_input = x_val.shape
    graph = tf.Graph()
    with graph.as_default():
        x, logits, v = deepspeech_graph(weights, steps, window, n_input)
        tf1.train.get_or_create_global_step()
        tf1.get_variable("learning_rate", initializer=1e-4, trainable=False,
                         use_resource=False)
        tf1.train.AdamOptimizer(1e-4).minimize(
            tf.reduce_sum(logits), global_step=tf1.train.get_global_step())
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            got = sess.run(logits, {x: x_val[None]})[:, 0]
            saver = tf1.train.Saver()
            saver.save(sess, out + "/ckpt/best_dev", global_step=1466475,
                       latest_filename="best_dev_checkpoint")
            frozen = tf1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), ["raw_logits"])
            tf.io.write_graph(frozen, out, "output_graph.pb", as_text=False)
    np.save(out + "/tf_logits.npy", got)

    # a TF2 object-based checkpoint with many dtypes (and its string object graph)
    values = {
        "f32": tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
        "f64": tf.Variable(np.linspace(-1, 1, 5)),
        "f16": tf.Variable(np.array([0.5, -2.25, 65504], np.float16)),
        "bf16": tf.Variable(tf.constant([1.5, -3.0, 256.0], tf.bfloat16)),
        "i8": tf.Variable(np.array([-128, 0, 127], np.int8)),
        "i32": tf.Variable(np.array([[-5, 6]], np.int32)),
        "i64": tf.Variable(np.array(-(2 ** 40), np.int64)),
        "u8": tf.Variable(np.array([0, 255], np.uint8)),
        "b": tf.Variable(np.array([True, False, True])),
        "c64": tf.Variable(np.array([1 + 2j, -3j], np.complex64)),
        "s": tf.Variable("some text"),
    }
    ckpt = tf.train.Checkpoint(**values)
    prefix = ckpt.write(out + "/tf2/ckpt")
    reader = tf.train.load_checkpoint(prefix)
    dump(out + "/tf2_expected", {n: reader.get_tensor(n)
                                 for n in reader.get_variable_to_shape_map()})
    with open(out + "/tf2_prefix.txt", "w") as f:
        f.write(prefix)

    # tf.io.write_graph of a graph of constants (typed fields, splats, tensor_content)
    graph = tf.Graph()
    with graph.as_default():
        consts = [
            tf.constant(0.5, shape=[3, 4], name="splat"),
            tf.constant(np.arange(64, dtype=np.float32).reshape(8, 8), name="big"),
            tf.constant(np.array([-3, 0, 9], np.int8), name="ints"),
            tf.constant(np.array([2 ** 40, -1], np.int64), name="i64"),
            tf.constant(np.array([1.5, -0.25], np.float16), name="half"),
            tf.constant([True, False], name="bools"),
            tf.constant([b"ab", b"c"], name="strs"),
            tf.constant(3.25, tf.float64, name="scalar"),
            tf.constant(np.array([1, 65535], np.uint16), name="u16"),
        ]
        for c in consts:
            tf.identity(c, name=c.op.name + "_out")
        tf.io.write_graph(graph.as_graph_def(), out, "consts.pb", as_text=False)
        with tf1.Session() as sess:
            dump(out + "/consts_expected", {c.op.name: sess.run(c) for c in consts})


def tf_reads(inp, out):
    names = json.load(open(inp + "/names.json"))
    reader = tf.train.load_checkpoint(inp + "/ours")
    assert sorted(reader.get_variable_to_shape_map()) == sorted(names), "names differ"
    dtypes = {n: reader.get_variable_to_dtype_map()[n].name for n in names}
    dump(out + "/ckpt_read", {n: reader.get_tensor(n) for n in names})
    with open(out + "/ckpt_dtypes.json", "w") as f:
        json.dump(dtypes, f)

    graph_def = tf1.GraphDef()
    with open(inp + "/ours.pb", "rb") as f:
        graph_def.ParseFromString(f.read())
    consts = [n for n in graph_def.node if n.op == "Const"]
    parsed = {n.name: tf.make_ndarray(n.attr["value"].tensor) for n in consts}
    dump(out + "/graph_parsed", parsed)
    graph = tf.Graph()
    with graph.as_default():
        tf.graph_util.import_graph_def(graph_def, name="")
        with tf1.Session() as sess:
            run = {n.name: sess.run(graph.get_tensor_by_name(n.name + ":0")) for n in consts}
    dump(out + "/graph_run", run)

    # restore our DeepSpeech checkpoint into TensorFlow's own graph and run it
    spec = np.load(inp + "/model.npz")
    weights = {k.replace("|", "/"): spec[k] for k in spec.files if k != "x"}
    x_val = spec["x"]
    graph = tf.Graph()
    with graph.as_default():
        x, logits, v = deepspeech_graph({k: np.zeros_like(a) for k, a in weights.items()},
                                        *x_val.shape)
        with tf1.Session() as sess:
            tf1.train.Saver(v).restore(sess, inp + "/ds")
            np.save(out + "/ds_logits.npy", sess.run(logits, {x: x_val[None]})[:, 0])


if __name__ == "__main__":
    {"tf_writes": tf_writes, "tf_reads": tf_reads}[sys.argv[1]](sys.argv[2], sys.argv[3])
'''


def _run_tf(python: str, script: Path, mode: str, inp: Path, out: Path) -> None:
    proc = subprocess.run([python, str(script), mode, str(inp), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _load_dump(path: Path) -> dict[str, np.ndarray]:
    names = json.loads(path.with_suffix(".json").read_text())
    arrays = np.load(path.with_suffix(".npz"))
    return {name: arrays[f"a{i}"] for i, name in enumerate(names)}


def _as_dumped(a: np.ndarray) -> np.ndarray:
    if a.dtype == object:
        return np.frombuffer(b"".join(a.reshape(-1)), np.uint8)
    return a


@pytest.mark.slow
def test_real_tensorflow_cross_check(tmp_path: Path) -> None:
    python = os.environ.get("ETF_TF_PYTHON")
    if not python:
        pytest.skip("set ETF_TF_PYTHON to a Python with TensorFlow to cross-check")
    script = tmp_path / "tf_side.py"
    script.write_text(_TF_SCRIPT)
    weights, x = tf_model(11), windows(9, seed=12)
    model_npz = {k.replace("/", "|"): v for k, v in weights.items()} | {"x": x}

    # TensorFlow writes; we read
    tf_in, tf_out = tmp_path / "tf_in", tmp_path / "tf_out"
    tf_in.mkdir()
    tf_out.mkdir()
    np.savez(tf_in / "model.npz", **model_npz)
    _run_tf(python, script, "tf_writes", tf_in, tf_out)
    tf_logits = np.load(tf_out / "tf_logits.npy")
    np.testing.assert_allclose(reference_logits(weights, x), tf_logits, rtol=1e-5, atol=1e-5)
    ckpt_dir = tf_out / "ckpt"
    assert (ckpt_dir / "best_dev_checkpoint").is_file()
    with tff.open_checkpoint(ckpt_dir) as reader:  # Adam slots, global_step, beta powers
        assert {f"{LSTM}/kernel/Adam", "global_step", "beta1_power"} <= set(reader.entries)
    archive = tmp_path / "ckpt.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ckpt_dir, arcname="deepspeech-0.9.3-checkpoint")
    for source in (ckpt_dir, archive, tf_out / "output_graph.pb"):
        config, state = import_deepspeech(source)
        assert config == EXPECTED
        np.testing.assert_allclose(torch_logits(config, state, x), tf_logits,
                                   rtol=1e-5, atol=1e-5)
    frozen = tff.parse_graph_def((tf_out / "output_graph.pb").read_bytes())
    assert {"layer_1/weights", f"{LSTM}/kernel"} <= {n.name for n in frozen if n.op == "Const"}

    tf2_prefix = (tf_out / "tf2_prefix.txt").read_text()
    expected = _load_dump(tf_out / "tf2_expected")
    got = tff.read_checkpoint(tf2_prefix)
    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(_as_dumped(got[name]), value, err_msg=name)
    expected = _load_dump(tf_out / "consts_expected")
    got = tff.read_graph_constants(tf_out / "consts.pb")
    assert set(got) == set(expected)
    splat = next(n for n in tff.parse_graph_def((tf_out / "consts.pb").read_bytes())
                 if n.name == "splat")
    assert len(bytes(splat.attr["value"].value)) < 30  # TensorFlow stored one value
    for name, value in expected.items():
        assert got[name].shape == value.shape or got[name].dtype == object, name
        np.testing.assert_array_equal(_as_dumped(got[name]), value, err_msg=name)

    # we write; TensorFlow reads
    ours_in, ours_out = tmp_path / "ours_in", tmp_path / "ours_out"
    ours_in.mkdir()
    ours_out.mkdir()
    arrays = sample_arrays(3)
    arrays |= {f"many/{i // 40:02d}/v{i:04d}": np.full(i % 7, i, np.float32)
               for i in range(400)}  # several data blocks and restart points
    tff.write_checkpoint(ours_in / "ours", arrays)
    (ours_in / "names.json").write_text(json.dumps(sorted(arrays)))
    nodes = [tff.const_node(f"c/{name}", a) for name, a in sample_arrays(4).items()]
    nodes += [tff.const_node(f"t/{name}", a, typed=True)
              for name, a in sample_arrays(4).items()]
    nodes.append(tff.const_node("strs", np.array([b"x", b"yz"], dtype=object)))
    tff.write_graph_def(ours_in / "ours.pb", nodes)
    tff.write_checkpoint(ours_in / "ds", with_training_state(weights))
    np.savez(ours_in / "model.npz", **model_npz)
    _run_tf(python, script, "tf_reads", ours_in, ours_out)

    read = _load_dump(ours_out / "ckpt_read")
    dtypes = json.loads((ours_out / "ckpt_dtypes.json").read_text())
    for name, a in arrays.items():
        assert dtypes[name] == a.dtype.name, name
        assert read[name].dtype == a.dtype and read[name].shape == a.shape, name
        np.testing.assert_array_equal(read[name], a, err_msg=name)
    want = {n.name: tff.graph_constants([n])[n.name] for n in nodes}
    for dump_name in ("graph_parsed", "graph_run"):
        got = _load_dump(ours_out / dump_name)
        assert set(got) == set(want)
        for name, a in want.items():
            np.testing.assert_array_equal(got[name], _as_dumped(a), err_msg=f"{dump_name} {name}")
    config, state = import_deepspeech(ours_in / "ds")
    np.testing.assert_allclose(torch_logits(config, state, x),
                               np.load(ours_out / "ds_logits.npy"), rtol=1e-5, atol=1e-5)


_MEMMAPPED_CC = r"""
// TensorFlow's own memmapped package code: convert (the converter's loop, with the real
// MemmappedFileSystemWriter) and dump (MemmappedEnv reads the graph and every region).
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include "tensorflow/core/framework/graph.pb.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/platform/env.h"
#include "tensorflow/core/util/memmapped_file_system.h"
#include "tensorflow/core/util/memmapped_file_system_writer.h"

namespace tf = tensorflow;

static std::string Region(const std::string& name) {
  std::string out = tf::MemmappedFileSystem::kMemmappedPackagePrefix;
  for (char c : name) out += (isalnum(c) || c == '_' || c == '.') ? c : '_';
  return out;
}

int main(int argc, char** argv) {
  tf::GraphDef graph;
  if (std::string(argv[1]) == "convert") {
    TF_CHECK_OK(tf::ReadBinaryProto(tf::Env::Default(), argv[2], &graph));
    tf::MemmappedFileSystemWriter writer;
    TF_CHECK_OK(writer.InitializeToFile(tf::Env::Default(), argv[3]));
    for (int i = 0; i < graph.node_size(); ++i) {
      tf::NodeDef* node = graph.mutable_node(i);
      if (node->op() != "Const") continue;
      const tf::TensorProto proto = node->attr().at("value").tensor();
      tf::Tensor value(proto.dtype());
      CHECK(value.FromProto(proto));
      if (proto.dtype() == tf::DT_STRING || value.TotalBytes() < 100) continue;
      TF_CHECK_OK(writer.SaveTensor(value, Region(node->name())));
      node->set_op("ImmutableConst");
      auto* attr = node->mutable_attr();
      attr->clear();
      (*attr)["dtype"].set_type(proto.dtype());
      *(*attr)["shape"].mutable_shape() = proto.tensor_shape();
      (*attr)["memory_region_name"].set_s(Region(node->name()));
    }
    TF_CHECK_OK(writer.SaveProtobuf(graph,
                                    tf::MemmappedFileSystem::kMemmappedPackageDefaultGraphDef));
    TF_CHECK_OK(writer.FlushAndClose());
    return 0;
  }
  tf::MemmappedEnv env(tf::Env::Default());
  TF_CHECK_OK(env.InitializeFromFile(argv[2]));
  TF_CHECK_OK(tf::ReadBinaryProto(
      &env, tf::MemmappedFileSystem::kMemmappedPackageDefaultGraphDef, &graph));
  for (const auto& node : graph.node()) {
    tf::Tensor value;
    if (node.op() == "Const") {
      CHECK(value.FromProto(node.attr().at("value").tensor()));
    } else if (node.op() == "ImmutableConst") {
      std::unique_ptr<tf::ReadOnlyMemoryRegion> region;
      TF_CHECK_OK(env.NewReadOnlyMemoryRegionFromFile(
          node.attr().at("memory_region_name").s(), &region));
      value = tf::Tensor(node.attr().at("dtype").type(),
                         tf::TensorShape(node.attr().at("shape").shape()));
      CHECK_LE(value.TotalBytes(), region->length());
      CHECK_EQ(reinterpret_cast<uintptr_t>(region->data()) % 64, 0u);
      std::memcpy(const_cast<char*>(value.tensor_data().data()), region->data(),
                  value.TotalBytes());
    } else {
      continue;
    }
    tf::TensorProto proto;
    value.AsProtoTensorContent(&proto);
    std::ofstream(std::string(argv[3]) + "/" + Region(node.name()).substr(20) + ".tp",
                  std::ios::binary) << proto.SerializeAsString();
  }
  return 0;
}
"""


@pytest.mark.slow
def test_real_tensorflow_memmapped_cross_check(tmp_path: Path) -> None:
    """TensorFlow's C++ MemmappedFileSystemWriter writes a package our reader imports, and
    its MemmappedEnv reads every region of a package our writer wrote."""
    python = os.environ.get("ETF_TF_PYTHON")
    if not python or not shutil.which("g++"):
        pytest.skip("set ETF_TF_PYTHON (TensorFlow with its C++ headers) and install g++")
    flags = subprocess.run(
        [python, "-c", "import json, tensorflow as tf; print(json.dumps("
         "[tf.sysconfig.get_compile_flags(), tf.sysconfig.get_link_flags()]))"],
        capture_output=True, text=True, timeout=300, env={**os.environ,
                                                          "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert flags.returncode == 0, flags.stderr[-2000:]
    compile_flags, link_flags = json.loads(flags.stdout.strip().splitlines()[-1])
    lib_dir = next(f[2:] for f in link_flags if f.startswith("-L"))
    (tmp_path / "mm.cc").write_text(_MEMMAPPED_CC)
    build = subprocess.run(
        ["g++", "-O0", "-w", *compile_flags, str(tmp_path / "mm.cc"), "-o",
         str(tmp_path / "mm"), *link_flags, "-l:libtensorflow_cc.so.2",
         f"-Wl,-rpath,{lib_dir}"], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-4000:]

    weights = tf_model(13)
    nodes = graph_nodes(weights) + [
        tff.const_node("f16", np.arange(100, dtype=np.float16)),
        tff.const_node("i64", np.arange(-50, 50, dtype=np.int64))]
    source = tff.graph_constants(nodes)
    tff.write_graph_def(tmp_path / "in.pb", nodes)
    subprocess.run([str(tmp_path / "mm"), "convert", str(tmp_path / "in.pb"),
                    str(tmp_path / "tf.pbmm")], check=True, capture_output=True, timeout=300)
    got = tff.read_graph_constants(tmp_path / "tf.pbmm")
    assert set(got) == set(source)
    for name, value in source.items():
        assert got[name].dtype == value.dtype, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert_imports_exactly(tmp_path / "tf.pbmm", weights)

    tff.write_memmapped_graph(tmp_path / "ours.pbmm", nodes, min_bytes=100)
    (tmp_path / "dump").mkdir()
    subprocess.run([str(tmp_path / "mm"), "dump", str(tmp_path / "ours.pbmm"),
                    str(tmp_path / "dump")], check=True, capture_output=True, timeout=300)
    regions = {re.sub(r"[^A-Za-z0-9_.]", "_", name): name for name in source}
    dumped = {regions[f.stem]: tff.decode_tensor_proto(f.read_bytes())
              for f in (tmp_path / "dump").glob("*.tp")}
    assert set(dumped) == set(source)
    for name, value in source.items():
        assert dumped[name].dtype == value.dtype, name
        np.testing.assert_array_equal(dumped[name], value, err_msg=name)


_TF_V01_SCRIPT = r'''
import os, sys
import numpy as np
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1 RNN cells live in tf_keras now
import tensorflow as tf

tf1 = tf.compat.v1
tf1.disable_eager_execution()
inp, out = sys.argv[1], sys.argv[2]
spec = np.load(inp + "/model.npz")
weights = {k.replace("|", "/"): spec[k] for k in spec.files if k != "x"}
x_val = spec["x"]
steps, window, n_input = x_val.shape
n_cell = weights["bidirectional_rnn/fw/basic_lstm_cell/bias"].shape[0] // 4

# DeepSpeech 0.1.x's BiRNN: h1..h6 / b1..b6, two BasicLSTMCell(forget_bias=1.0) under
# bidirectional_dynamic_rnn (time major, with sequence lengths), outputs concatenated
x = tf1.placeholder(tf.float32, [1, None, window * n_input], name="input_node")
seq_length = tf1.placeholder(tf.int32, [None], name="input_lengths")
v = {k: tf1.get_variable(k, initializer=tf.constant(weights[k]), use_resource=False)
     for k in ("h1", "b1", "h2", "b2", "h3", "b3", "h5", "b5", "h6", "b6")}
batch_x_shape = tf.shape(x)
h = tf.reshape(tf.transpose(x, [1, 0, 2]), [-1, window * n_input])
for k in ("1", "2", "3"):
    h = tf.minimum(tf.nn.relu(tf.add(tf.matmul(h, v["h" + k]), v["b" + k])), 20.0)
h = tf.reshape(h, [-1, batch_x_shape[0], weights["h3"].shape[1]])
fw = tf1.nn.rnn_cell.BasicLSTMCell(n_cell, forget_bias=1.0, state_is_tuple=True)
bw = tf1.nn.rnn_cell.BasicLSTMCell(n_cell, forget_bias=1.0, state_is_tuple=True)
outputs, _ = tf1.nn.bidirectional_dynamic_rnn(fw, bw, h, dtype=tf.float32, time_major=True,
                                              sequence_length=seq_length)
h = tf.reshape(tf.concat(outputs, 2), [-1, 2 * n_cell])
h = tf.minimum(tf.nn.relu(tf.add(tf.matmul(h, v["h5"]), v["b5"])), 20.0)
h = tf.add(tf.matmul(h, v["h6"]), v["b6"])
logits = tf.reshape(h, [-1, batch_x_shape[0], weights["h6"].shape[1]], name="logits")
with tf1.Session() as sess:
    sess.run(tf1.global_variables_initializer())
    for scope in ("fw", "bw"):  # the cells' variables exist only now: load them
        for leaf in ("kernel", "bias"):
            name = f"bidirectional_rnn/{scope}/basic_lstm_cell/{leaf}"
            var = next(g for g in tf1.global_variables() if g.op.name == name)
            var.load(weights[name], sess)
    feed = {x: x_val.reshape(1, steps, -1), seq_length: [steps]}
    np.save(out + "/tf_logits.npy", sess.run(logits, feed)[:, 0])
    tf1.train.Saver().save(sess, out + "/ckpt/model.ckpt", global_step=7)
    frozen = tf1.graph_util.convert_variables_to_constants(
        sess, sess.graph.as_graph_def(), ["logits"])
    tf.io.write_graph(frozen, out, "output_graph.pb", as_text=False)
'''


@pytest.mark.slow
def test_real_tensorflow_v01_cross_check(tmp_path: Path) -> None:
    """TensorFlow builds DeepSpeech 0.1.x's bidirectional graph (``BasicLSTMCell`` under
    ``bidirectional_dynamic_rnn``), runs it, saves and freezes it: both files import to a
    model whose logits match TensorFlow's."""
    python = os.environ.get("ETF_TF_PYTHON")
    if not python:
        pytest.skip("set ETF_TF_PYTHON to a Python with TensorFlow (and tf_keras) to "
                    "cross-check")
    script = tmp_path / "tf_v01.py"
    script.write_text(_TF_V01_SCRIPT)
    weights, x = tf_model_v01(21), windows(11, seed=22)
    tf_in, tf_out = tmp_path / "in", tmp_path / "out"
    tf_in.mkdir()
    tf_out.mkdir()
    np.savez(tf_in / "model.npz", **{k.replace("/", "|"): v for k, v in weights.items()},
             x=x)
    proc = subprocess.run([python, str(script), str(tf_in), str(tf_out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tf_logits = np.load(tf_out / "tf_logits.npy")
    np.testing.assert_allclose(reference_logits_v01(weights, x), tf_logits,
                               rtol=1e-5, atol=1e-5)
    for source in (tf_out / "output_graph.pb", tf_out / "ckpt"):
        config, state = import_deepspeech(source)
        assert config.bidirectional and config.forget_bias == 1.0
        np.testing.assert_allclose(torch_logits(config, state, x), tf_logits,
                                   rtol=1e-5, atol=1e-5)
