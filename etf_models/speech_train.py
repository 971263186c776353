"""Training the default speech model: CTC on the synthetic corpus, exported as DeepSpeech.

``etf train speech`` runs ``train_speech``: it builds (or resumes) the synthetic corpus of
``etf_models/speech_corpus.py``, trains a DeepSpeech-architecture network with CTC, and
exports a checkpoint that ``DeepSpeech`` / ``DeepSpeechFrontend`` load like imported
official weights.

Training runs a twin of ``DeepSpeech`` (``TrainNet``) that differs only where it makes
training faster or better, and folds back exactly on export:

- the LSTM is ``torch.nn.LSTM`` (fused kernels); its gates are reordered into TensorFlow's
  layout (i, j, f, o) and its two biases summed;
- the MFCC rows are standardised by fixed per-coefficient statistics of the corpus; the
  affine map is folded into ``layer_1`` (context padding is zero *before* standardising,
  as the exported model sees it);
- dropout on the dense layers and time masking (SpecAugment-style) during training only.

``cfg.init`` starts from a trained or imported model instead (``TrainNet.init_from``, the
exact inverse of the export), for fine-tuning on new corpora (``cfg.extra_corpora`` adds
folders to the main one). ``precision="bf16"`` autocasts the matrix products, on the CPU
or on a GPU (``device``).

The export is checked: the exported model's logits must equal the training net's on a
random batch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from etf_models.checkpoint import load_checkpoint, save_checkpoint, sha256_of
from etf_models.deepspeech import (
    ALPHABET,
    BLANK,
    DeepSpeech,
    DeepSpeechConfig,
    greedy_decode,
    load_deepspeech,
    save_deepspeech,
)
from etf_models.speech_metrics import cer

_CHAR = {c: i for i, c in enumerate(ALPHABET)}


@dataclass
class SpeechTrainConfig:
    """Everything that decides the trained model (stored in its checkpoint)."""

    corpus_hours: float = 12.0
    corpus_seed: int = 0
    n_hidden: int = 512
    n_context: int = 9
    epochs: float = 10.0
    batch_frames: int = 12800  # ~256 s of audio per step
    lr: float = 1e-3
    lr_min: float = 2e-5
    warmup_steps: int = 300
    dropout: float = 0.1
    time_masks: int = 2
    time_mask_frames: int = 12
    feature_noise: float = 0.1  # std of Gaussian noise on standardised MFCCs
    grad_clip: float = 5.0
    val_fraction: float = 0.02
    seed: int = 0
    threads: int = 2
    #: "bf16": autocast matrix products to bfloat16 (CTC, softmax and the weights stay
    #: fp32). 1.65x faster per step on this AVX512-BF16 CPU; the usual choice on a GPU.
    precision: str = "fp32"
    init: str = ""  # warm start from this DeepSpeech checkpoint (``init_from``)
    extra_corpora: list[str] = field(default_factory=list)  # trained on with the main one
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def encode_label(text: str) -> list[int]:
    return [_CHAR[c] for c in text if c in _CHAR]


def _tf_gate_order(n: int) -> torch.Tensor:
    """Row indices that take ``torch.nn.LSTM``'s gate blocks (i, f, g, o) to TensorFlow's
    (i, j=g, f, o); ``tf[k] = torch[order[k]]``, and ``torch[order] = tf`` undoes it."""
    return torch.cat([torch.arange(0, n), torch.arange(2 * n, 3 * n),
                      torch.arange(n, 2 * n), torch.arange(3 * n, 4 * n)])


class TrainNet(nn.Module):
    """``DeepSpeech`` for training: nn.LSTM, standardised inputs, dropout (see docstring)."""

    def __init__(self, config: DeepSpeechConfig, mean: np.ndarray, std: np.ndarray,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.config = cfg = config
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.layer_1 = nn.Linear(cfg.in_features, cfg.n_hidden)
        self.layer_2 = nn.Linear(cfg.n_hidden, cfg.n_hidden)
        self.layer_3 = nn.Linear(cfg.n_hidden, cfg.n_hidden)
        self.lstm = nn.LSTM(cfg.n_hidden, cfg.n_cell, batch_first=True)
        self.layer_5 = nn.Linear(cfg.n_cell, cfg.n_hidden)
        self.layer_6 = nn.Linear(cfg.n_hidden, cfg.n_output)
        self.drop = nn.Dropout(dropout)
        # He initialisation keeps the signal's scale through the clipped-ReLU stack; with
        # PyTorch's default (fan-in uniform / 3) it shrinks ~6x per layer and CTC sits on
        # its all-blank plateau for thousands of steps.
        for layer in (self.layer_1, self.layer_2, self.layer_3, self.layer_5):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        with torch.no_grad():  # forget gate bias 1: the usual start for LSTMs
            n = cfg.n_cell
            self.lstm.bias_ih_l0[n : 2 * n].fill_(1.0)
            self.lstm.bias_hh_l0.zero_()

    def windows(self, feats: torch.Tensor) -> torch.Tensor:
        """Raw MFCC rows [B,T,26] (zero-padded) -> standardised context windows [B,T,494]."""
        c = self.config.n_context
        x = nn.functional.pad(feats, (0, 0, c, c))
        x = (x - self.mean) / self.std
        w = x.unfold(1, 2 * c + 1, 1)  # [B,T,26,window]
        return w.transpose(2, 3).reshape(feats.shape[0], feats.shape[1], -1)

    def forward(self, wins: torch.Tensor) -> torch.Tensor:
        clip = self.config.relu_clip
        x = self.drop(torch.clamp(self.layer_1(wins), 0, clip))
        x = self.drop(torch.clamp(self.layer_2(x), 0, clip))
        x = self.drop(torch.clamp(self.layer_3(x), 0, clip))
        x, _ = self.lstm(x)
        x = self.drop(torch.clamp(self.layer_5(x), 0, clip))
        return self.layer_6(x)

    def init_from(self, model: DeepSpeech) -> None:
        """Load a ``DeepSpeech`` (trained here or imported): the inverse of ``export``,
        with this net's standardisation unfolded from ``layer_1`` and the LSTM's gates and
        forget bias moved back into ``torch.nn.LSTM``'s layout."""
        cfg, mc = self.config, model.config
        if not mc.streaming or mc.n_hidden_3 not in (None, mc.n_hidden):
            raise ValueError("cannot start from this model: training here makes streaming "
                             "0.9.x-style models, and it is a bidirectional or 0.1.x-feature "
                             "one")
        if (mc.n_input, mc.n_context, mc.n_hidden, mc.n_cell, mc.n_output) != (
                cfg.n_input, cfg.n_context, cfg.n_hidden, cfg.n_cell, cfg.n_output):
            raise ValueError(f"cannot start from a model of another shape ({mc.to_dict()}; "
                             f"training {cfg.to_dict()})")
        sd = {k: v.detach().float() for k, v in model.state_dict().items()}
        mean = self.mean.repeat(cfg.window)
        std = self.std.repeat(cfg.window)
        n = cfg.n_cell
        order = _tf_gate_order(n)
        kernel = torch.empty_like(sd["lstm.kernel"].T)
        kernel[order] = sd["lstm.kernel"].T  # rows back in torch's i, f, g, o order
        bias = torch.empty_like(sd["lstm.bias"])
        bias[order] = sd["lstm.bias"]
        bias[n : 2 * n] += mc.forget_bias
        new = {"layer_1.weight": sd["layer_1.weight"] * std,
               "layer_1.bias": sd["layer_1.bias"] + sd["layer_1.weight"] @ mean,
               "lstm.weight_ih_l0": kernel[:, : cfg.n_hidden].contiguous(),
               "lstm.weight_hh_l0": kernel[:, cfg.n_hidden :].contiguous(),
               "lstm.bias_ih_l0": bias, "lstm.bias_hh_l0": torch.zeros_like(bias),
               "mean": self.mean, "std": self.std}
        for k in ("layer_2", "layer_3", "layer_5", "layer_6"):
            new[f"{k}.weight"], new[f"{k}.bias"] = sd[f"{k}.weight"], sd[f"{k}.bias"]
        self.load_state_dict(new)

    def export(self) -> DeepSpeech:
        """The equivalent ``DeepSpeech`` (TF LSTM layout, standardisation folded in)."""
        cfg = self.config
        model = DeepSpeech(cfg)
        window = cfg.window
        mean = self.mean.repeat(window)  # windows are frame-major: [window, 26] flattened
        std = self.std.repeat(window)
        sd = {k: v.detach().clone() for k, v in self.state_dict().items()}
        w1 = sd["layer_1.weight"] / std
        b1 = sd["layer_1.bias"] - w1 @ mean
        n = cfg.n_cell
        order = _tf_gate_order(n)
        w_ih, w_hh = sd["lstm.weight_ih_l0"], sd["lstm.weight_hh_l0"]
        kernel = torch.cat([w_ih, w_hh], dim=1)[order].T.contiguous()
        bias = (sd["lstm.bias_ih_l0"] + sd["lstm.bias_hh_l0"])[order]
        out = {"layer_1.weight": w1, "layer_1.bias": b1, "lstm.kernel": kernel,
               "lstm.bias": bias}
        for k in ("layer_2", "layer_3", "layer_5", "layer_6"):
            out[f"{k}.weight"], out[f"{k}.bias"] = sd[f"{k}.weight"], sd[f"{k}.bias"]
        model.load_state_dict(out)
        return model.eval()


# --------------------------------------------------------------------------- data

class CorpusData:
    """The corpus in memory: one float16 matrix of MFCC rows plus per-utterance spans."""

    def __init__(self, folder: str | os.PathLike, *more: str | os.PathLike) -> None:
        feats, spans, labels = [], [], []
        start = 0
        per_folder = [sorted(Path(f).glob("shard_*.npz")) for f in (folder, *more)]
        for path in (p for paths in per_folder for p in paths):
            with np.load(path) as z:
                f, off, lab = z["feats"], z["offsets"], z["labels"]
            feats.append(f)
            spans += [(start + int(a), int(b - a)) for a, b in zip(off[:-1], off[1:], strict=True)]
            labels += [str(s) for s in lab]
            start += len(f)
        if not spans or not all(per_folder[1:]):
            raise FileNotFoundError(f"{folder} {' '.join(map(str, more))}: a folder without "
                                    "corpus shards (shard_*.npz)")
        self.feats = np.concatenate(feats)
        self.spans = spans
        self.labels = labels

    def __len__(self) -> int:
        return len(self.spans)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        x = self.feats[:: max(1, len(self.feats) // 200_000)].astype(np.float64)
        return x.mean(0).astype(np.float32), (x.std(0) + 1e-3).astype(np.float32)

    def batches(self, idx: np.ndarray, batch_frames: int, rng: np.random.Generator,
                shuffle: bool = True) -> list[np.ndarray]:
        """Length-bucketed batches of utterance indices, each at most ``batch_frames``
        padded frames, in random order (or shortest first when not ``shuffle``)."""
        lengths = np.array([self.spans[i][1] for i in idx])
        noisy = lengths * rng.uniform(0.9, 1.1, len(lengths))  # vary bucket edges per epoch
        order = idx[np.argsort(noisy)]
        out, cur, longest = [], [], 0
        for i in order:
            n = self.spans[i][1]
            if cur and max(longest, n) * (len(cur) + 1) > batch_frames:
                out.append(np.array(cur))
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        if cur:
            out.append(np.array(cur))
        if shuffle:
            rng.shuffle(out)
        return out

    def collate(self, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
        lens = [self.spans[i][1] for i in ids]
        x = np.zeros((len(ids), max(lens), self.feats.shape[1]), np.float32)
        for j, i in enumerate(ids):
            s, n = self.spans[i]
            x[j, :n] = self.feats[s : s + n]
        targets = [encode_label(self.labels[i]) for i in ids]
        flat = torch.tensor([c for t in targets for c in t], dtype=torch.long)
        return (torch.from_numpy(x), torch.tensor(lens), flat,
                torch.tensor([len(t) for t in targets]))


def _time_mask(x: torch.Tensor, lens: torch.Tensor, n: int, width: int,
               rng: np.random.Generator) -> torch.Tensor:
    """Zero ``n`` random spans of up to ``width`` frames per utterance (in standardised
    units: the masked frames read as the corpus mean)."""
    for b in range(x.shape[0]):
        for _ in range(n):
            w = int(rng.integers(0, width + 1))
            if w and int(lens[b]) > w:
                t0 = int(rng.integers(0, int(lens[b]) - w))
                x[b, t0 : t0 + w] = 0.0
    return x


def _lr_at(step: int, total: int, cfg: SpeechTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))


def evaluate(model: DeepSpeech | TrainNet, feats: list[np.ndarray],
             labels: list[str]) -> dict:
    """Greedy-decoded CER over utterances of raw MFCC rows."""
    hyps = []
    with torch.inference_mode():
        for f in feats:
            x = torch.from_numpy(np.asarray(f, np.float32))[None]
            if isinstance(model, TrainNet):
                logits = model(model.windows(x.to(model.mean.device)))[0]
            else:
                from etf_models.speech_features import context_windows

                w = context_windows(np.asarray(f, np.float32), model.config.n_context)
                logits = model(torch.from_numpy(w)[None])[0]
            hyps.append(greedy_decode(logits))
    return {"cer": cer(labels, hyps), "examples": list(zip(labels[:3], hyps[:3], strict=True))}


# --------------------------------------------------------------------------- training

def train_speech(corpus_dir: str | os.PathLike, work_dir: str | os.PathLike,
                 out_path: str | os.PathLike, cfg: SpeechTrainConfig,
                 real_eval: Callable[[DeepSpeech], dict] | None = None,
                 minutes: float | None = None, log: Callable[[str], None] = print,
                 log_every: int = 100, device: str = "cpu") -> dict:
    """Train on the corpus in ``corpus_dir``; resumable from ``work_dir/last.pt``.

    Writes the exported model to ``out_path`` and returns a summary. ``minutes`` stops
    early (the schedule still follows ``cfg.epochs``; the summary says it stopped).
    """
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {cfg.precision!r}: fp32 or bf16")
    dev = resolve_device(device)
    torch.set_num_threads(cfg.threads)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    data = CorpusData(corpus_dir, *cfg.extra_corpora)
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(len(data))
    n_val = max(1, int(len(data) * cfg.val_fraction)) if len(data) > 20 else 1
    val_idx, train_idx = perm[:n_val], perm[n_val:] if len(data) > 1 else perm
    mean, std = data.stats()
    ds_cfg = DeepSpeechConfig(n_hidden=cfg.n_hidden, n_cell=cfg.n_hidden,
                              n_context=cfg.n_context, forget_bias=0.0)
    torch.manual_seed(cfg.seed)
    net = TrainNet(ds_cfg, mean, std, cfg.dropout).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    steps_per_epoch = len(data.batches(train_idx, cfg.batch_frames, np.random.default_rng(0)))
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    step, history = 0, []
    last = work / "last.pt"
    if last.exists():
        blob = load_checkpoint(last, model="deepspeech-train")
        if blob["config"] != cfg.to_dict():
            raise ValueError(f"{last} was trained with another configuration; "
                             "use a new work directory")
        net.load_state_dict(blob["state_dict"])
        opt.load_state_dict(torch.load(work / "optimizer.pt", weights_only=True,
                                       map_location=dev))
        step, history = blob["meta"]["step"], blob["meta"]["history"]
        log(f"resumed at step {step}/{total}")
    elif cfg.init:
        net.init_from(load_deepspeech(cfg.init).to(dev))
        log(f"starting from {cfg.init}")
    val_feats = [data.feats[data.spans[i][0] : sum(data.spans[i])] for i in val_idx[:200]]
    val_labels = [data.labels[i] for i in val_idx[:200]]
    log(f"corpus {len(data)} utterances ({len(data.feats) / 180000:.2f} h), "
        f"{steps_per_epoch} steps/epoch, {total} steps; "
        f"{sum(p.numel() for p in net.parameters())} parameters")

    def save() -> None:
        save_checkpoint(last, "deepspeech-train", cfg.to_dict(), net.state_dict(),
                        {"step": step, "history": history})
        torch.save(opt.state_dict(), work / "optimizer.pt")

    t0 = time.time()
    last_save = time.time()
    stopped_early = False
    losses: list[float] = []
    epoch = step // steps_per_epoch
    while step < total:
        # SortaGrad (Deep Speech 2): the first epoch goes from short to long utterances,
        # which gets CTC off its all-blank start sooner
        batches = data.batches(train_idx, cfg.batch_frames,
                               np.random.default_rng([cfg.seed, epoch]), shuffle=epoch > 0)
        skip = step - epoch * steps_per_epoch
        for ids in batches[skip:]:
            if step >= total:
                break
            net.train()
            x, lens, flat, tlens = (t.to(dev) for t in data.collate(ids))
            wins = net.windows(x)
            brng = np.random.default_rng([cfg.seed, step])
            if cfg.feature_noise:
                wins = wins + cfg.feature_noise * torch.randn_like(wins)
            wins = _time_mask(wins, lens, cfg.time_masks, cfg.time_mask_frames, brng)
            with torch.autocast(dev.type, dtype=torch.bfloat16,
                                enabled=cfg.precision == "bf16"):
                logits = net(wins)
            lp = logits.float().log_softmax(-1).transpose(0, 1)
            loss = ctc(lp, flat, lens, tlens)
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, total, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(loss.item())
            step += 1
            if step % log_every == 0 or step == total:
                net.eval()
                val = evaluate(net, val_feats[:100], val_labels[:100])
                entry = {"step": step, "epoch": round(step / steps_per_epoch, 2),
                         "loss": round(float(np.mean(losses)), 4), "val_cer": val["cer"],
                         "lr": _lr_at(step, total, cfg),
                         "minutes": round((time.time() - t0) / 60, 2)}
                if real_eval is not None and (step % (5 * log_every) == 0 or step == total):
                    entry["real"] = real_eval(net.export())
                history.append(entry)
                losses.clear()
                log(json.dumps(entry))
            if time.time() - last_save > 300:
                save()
                last_save = time.time()
            if minutes is not None and time.time() - t0 > 60 * minutes:
                stopped_early = True
                break
        if stopped_early:
            break
        epoch += 1
    save()
    net.eval().cpu()
    model = net.export()
    _check_export(net, model)
    val = evaluate(model, val_feats, val_labels)
    meta = {"trained_by": "etf train speech", "train_config": cfg.to_dict(),
            "init_sha256": sha256_of(cfg.init) if cfg.init else None, "steps": step,
            "total_steps": total, "stopped_early": stopped_early,
            "synthetic_val_cer": val["cer"], "history": history,
            "corpus": _corpus_summary(corpus_dir),
            "extra_corpora": [_corpus_summary(f) for f in cfg.extra_corpora]}
    if real_eval is not None:
        meta["real_eval"] = real_eval(model)
    sha = save_deepspeech(out_path, model, meta)
    meta["sha256"] = sha
    log(f"wrote {out_path} (sha256 {sha}); synthetic validation CER {val['cer']:.3f}")
    return meta


#: Blank-logit offsets ``calibrate_blank`` tries (0 first: no change wins ties).
BLANK_OFFSETS = tuple(float(-k) / 4 for k in range(11))


def calibrate_blank(model: DeepSpeech, score: Callable[[DeepSpeech], float],
                    offsets: tuple[float, ...] = BLANK_OFFSETS) -> tuple[DeepSpeech, dict]:
    """Shift the CTC blank's logit by the offset that minimises ``score`` (a CER on *real*
    validation speech; never the set reported on).

    A model trained on synthetic speech emits too few characters on real speech: its greedy
    output deletes sounds. Lowering the blank's logit is a prior correction (a constant
    per-class offset; every other logit is untouched, so the front end's windows keep their
    shape). Returns the calibrated copy and a report of every offset's score."""
    import copy

    scores = []
    for off in offsets:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.layer_6.bias[BLANK] += off
        scores.append(float(score(m)))
    best = int(np.argmin(scores))  # the first minimum: the smallest change among equals
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.layer_6.bias[BLANK] += offsets[best]
    return out.eval(), {"offset": offsets[best], "tried": list(offsets), "cer": scores}


def resolve_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device {name!r}: cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name}: no CUDA GPU here")
    return dev


def _corpus_summary(folder: str | os.PathLike) -> dict:
    f = Path(folder) / "corpus.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _check_export(net: TrainNet, model: DeepSpeech) -> None:
    """The exported DeepSpeech must compute what the training net computes."""
    from etf_models.speech_features import context_windows

    g = torch.Generator().manual_seed(0)
    feats = (torch.randn(1, 40, net.config.n_input, generator=g) * net.std + net.mean)
    with torch.inference_mode():
        a = net(net.windows(feats))[0]
        w = context_windows(feats[0].numpy(), net.config.n_context)
        b = model(torch.from_numpy(w)[None])[0]
    err = float((a - b).abs().max())
    if err > 1e-3 * max(1.0, float(a.abs().max())):
        raise AssertionError(f"exported model differs from the trained one by {err}")
