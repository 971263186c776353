"""The DeepSpeech 0.9.x acoustic model in PyTorch, streaming.

Architecture (Mozilla DeepSpeech 0.9.x, ``DeepSpeech.py: create_model``):

- input: per 20 ms step, a window of ``2 * n_context + 1`` MFCC frames of ``n_input``
  coefficients (26), flattened: 19 x 26 = 494 values for the released model;
- ``layer_1..3``: dense + clipped ReLU (``min(max(x, 0), relu_clip)``, clip 20);
- ``lstm``: one unidirectional LSTM layer of ``n_cell`` units (TensorFlow's fused LSTM
  block: gates ordered input, candidate, forget, output; ``forget_bias`` added to the
  forget gate's pre-activation);
- ``layer_5``: dense + clipped ReLU; ``layer_6``: dense to ``n_output`` logits (28
  characters of the English alphabet + the CTC blank = 29), before softmax.

The same module runs the **0.1.x** release (``DeepSpeech.py: BiRNN``; its ``output_graph.pb``
is what VOCA / AD-NeRF style pipelines use) when the config says ``bidirectional``:
``layer_3`` is ``n_hidden_3`` wide (2 * n_cell there), a forward and a backward LSTM
(TensorFlow's ``BasicLSTMCell``: the same gate order and kernel layout, ``forget_bias``
1.0) read it, and ``layer_5`` reads their outputs concatenated (forward first). Its input
features are ``features = "v01"`` (``speech_features.v01_windows``). A bidirectional
model needs the whole utterance: ``forward`` runs it, ``step`` refuses.

The MFCC front end and the context windows are in ``etf_models/speech_features.py``; this
module is a pure ``nn.Module`` (no devices; files only through ``load_deepspeech``).
``forward`` takes whole sequences; ``step`` takes the next windows and the LSTM state and
returns the state, which is how the streaming front end runs it (20 ms at a time, state
carried across chunks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

#: The 29 output symbols: CTC blank is the last index, as in DeepSpeech's alphabet files.
ALPHABET = " abcdefghijklmnopqrstuvwxyz'"
BLANK = len(ALPHABET)


@dataclass(frozen=True)
class DeepSpeechConfig:
    """Architecture hyperparameters (stored in checkpoints, never taken from flags)."""

    n_input: int = 26
    n_context: int = 9
    n_hidden: int = 2048
    n_cell: int = 2048
    n_output: int = 29
    relu_clip: float = 20.0
    forget_bias: float = 0.0
    #: width of layer_3, the LSTM's input (None: n_hidden; 2 * n_cell in 0.1.x)
    n_hidden_3: int | None = None
    #: a backward LSTM too (0.1.x): offline only
    bidirectional: bool = False
    #: input features: "tf" (0.9.x, ``speech_features.mfcc``, streaming) or "v01"
    #: (0.1.x, ``speech_features.v01_windows``, whitened over the whole utterance)
    features: str = "tf"

    def __post_init__(self) -> None:
        if self.features not in ("tf", "v01"):
            raise ValueError(f"unknown speech features {self.features!r} (tf or v01)")

    @property
    def lstm_input(self) -> int:
        return self.n_hidden_3 or self.n_hidden

    @property
    def streaming(self) -> bool:
        """Whether the model can run 20 ms at a time (unidirectional, causal features)."""
        return not self.bidirectional and self.features == "tf"

    @property
    def window(self) -> int:
        return 2 * self.n_context + 1

    @property
    def in_features(self) -> int:
        return self.window * self.n_input

    def to_dict(self) -> dict:
        return asdict(self)


class FusedLSTM(nn.Module):
    """TensorFlow's LSTM block cell with its own parameter layout.

    ``kernel`` [n_in + n_cell, 4 * n_cell] and ``bias`` [4 * n_cell] with gates in the order
    (input, candidate, forget, output), exactly as TensorFlow stores them, so imported
    weights need no reshuffling; ``forget_bias`` is added at run time, as TensorFlow does.
    """

    def __init__(self, n_in: int, n_cell: int, forget_bias: float) -> None:
        super().__init__()
        self.n_cell = n_cell
        self.forget_bias = forget_bias
        self.kernel = nn.Parameter(torch.empty(n_in + n_cell, 4 * n_cell))
        self.bias = nn.Parameter(torch.zeros(4 * n_cell))
        nn.init.xavier_uniform_(self.kernel)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x [B,T,n_in], state (c [B,n_cell], h [B,n_cell]) -> (out [B,T,n_cell], state)."""
        c, h = state
        n = self.n_cell
        w_x, w_h = self.kernel[: -n], self.kernel[-n:]
        pre_x = torch.matmul(x, w_x) + self.bias  # the input part for all steps at once
        outs = []
        for t in range(x.shape[1]):
            gates = pre_x[:, t] + h @ w_h
            i, j, f, o = gates.split(n, dim=-1)
            c = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(j)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1), (c, h)


class DeepSpeech(nn.Module):
    """DeepSpeech 0.9.x acoustic model (see module docstring)."""

    def __init__(self, config: DeepSpeechConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DeepSpeechConfig()
        self.layer_1 = nn.Linear(cfg.in_features, cfg.n_hidden)
        self.layer_2 = nn.Linear(cfg.n_hidden, cfg.n_hidden)
        self.layer_3 = nn.Linear(cfg.n_hidden, cfg.lstm_input)
        self.lstm = FusedLSTM(cfg.lstm_input, cfg.n_cell, cfg.forget_bias)
        if cfg.bidirectional:
            self.lstm_bw = FusedLSTM(cfg.lstm_input, cfg.n_cell, cfg.forget_bias)
        self.layer_5 = nn.Linear(cfg.n_cell * (2 if cfg.bidirectional else 1), cfg.n_hidden)
        self.layer_6 = nn.Linear(cfg.n_hidden, cfg.n_output)

    def initial_state(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.zeros(batch, self.config.n_cell, device=self.layer_1.weight.device)
        return z, z.clone()

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, self.config.relu_clip)

    def step(
        self, windows: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """windows [B,T,window,n_input] (or [B,T,in_features]) and the LSTM state ->
        (logits [B,T,n_output] before softmax, new state)."""
        if self.config.bidirectional:
            raise RuntimeError("a bidirectional DeepSpeech model needs the whole utterance: "
                               "call forward(), it cannot run step by step")
        x, state = self.lstm(self._dense_in(windows), state)
        return self._dense_out(x), state

    def _dense_in(self, windows: torch.Tensor) -> torch.Tensor:
        x = windows.reshape(windows.shape[0], windows.shape[1], -1)
        x = self._clip(self.layer_1(x))
        x = self._clip(self.layer_2(x))
        return self._clip(self.layer_3(x))

    def _dense_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_6(self._clip(self.layer_5(x)))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """windows [B,T,window,n_input] -> logits [B,T,n_output], from a zero state (every
        sequence in the batch is taken as T steps long)."""
        if not self.config.bidirectional:
            logits, _ = self.step(windows, self.initial_state(windows.shape[0]))
            return logits
        x = self._dense_in(windows)
        fw, _ = self.lstm(x, self.initial_state(x.shape[0]))
        bw, _ = self.lstm_bw(x.flip(1), self.initial_state(x.shape[0]))
        return self._dense_out(torch.cat([fw, bw.flip(1)], dim=-1))


def load_deepspeech(path, with_meta: bool = False) -> DeepSpeech | tuple[DeepSpeech, dict]:
    """A model from a checkpoint written by ``etf speech import`` / ``etf train speech``
    (fp32 on the CPU, in eval mode), and its ``meta`` too when ``with_meta``. Raises
    ``CheckpointError`` for a file that is not one, ``TypeError`` / ``RuntimeError`` for one
    whose config or weights do not fit."""
    from etf_models.checkpoint import load_checkpoint

    blob = load_checkpoint(path, model="deepspeech")
    model = DeepSpeech(DeepSpeechConfig(**blob["config"]))
    model.load_state_dict({k: v.float() for k, v in blob["state_dict"].items()})
    return (model.eval(), blob.get("meta", {})) if with_meta else model.eval()


def save_deepspeech(path, model: DeepSpeech, meta: dict, half: bool = True) -> str:
    """Write ``model`` as a checkpoint ``load_deepspeech`` reads (weights in fp16 unless
    ``half`` is false); returns its SHA-256."""
    from etf_models.checkpoint import save_checkpoint

    sd = {k: v.half() if half and v.is_floating_point() else v
          for k, v in model.state_dict().items()}
    return save_checkpoint(path, "deepspeech", model.config.to_dict(), sd, meta)


def greedy_decode(logits: torch.Tensor) -> str:
    """Best-path CTC decoding of logits [T,n_output]: collapse repeats, drop blanks."""
    best = logits.argmax(dim=-1).tolist()
    out, prev = [], None
    for k in best:
        if k != prev and k != BLANK and k < len(ALPHABET):
            out.append(ALPHABET[k])
        prev = k
    return "".join(out)
