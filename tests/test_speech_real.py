"""Real-speech corpus: labels of real transcripts, the held-out split, the shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from etf_models.speech_real import (
    PSEUDO,
    TRUE,
    Utterance,
    _chunks,
    build_real_corpus,
    heldout_split,
    is_real_corpus,
    load_audio,
    read_heldout,
    real_label,
)


@pytest.mark.parametrize("text,label", [
    ("The FBI paid $1,200 in 1999, said Mr. Smith — twice.",
     "the f b i paid twelve hundred dollars in nineteen ninety nine said mister smith twice"),
    ("I’m “sure” it was 3.5%...", "i'm sure it was three point five percent"),
    # no length limit: a real utterance runs as long as the speaker does
    (" ".join(["word"] * 40), " ".join(["word"] * 40)),
])
def test_real_label(text, label):
    assert real_label(text) == label


def test_real_label_refuses_what_has_no_words():
    assert real_label("...") is None
    assert real_label("") is None


def test_chunks_merge_segments_up_to_the_limit():
    segs = [{"start": 0.0, "end": 4.0, "text": "one"}, {"start": 4.2, "end": 9.0, "text": "two"},
            {"start": 9.5, "end": 15.0, "text": "three"}, {"start": 40.0, "end": 70.0,
                                                          "text": "too long"}]
    out = _chunks(segs, 10.0)
    assert [t for _, _, t in out] == ["one two", "three"]  # the 30 s segment is dropped
    assert out[0][0] == 0.0 and out[0][1] == pytest.approx(9.15)
    assert out[1][0] == pytest.approx(9.35)


def test_heldout_split_is_by_speaker_and_fixed():
    utts = [Utterance(f"LJ{i:03d}", f"lj{i}", "ljspeech", "LJ", "a b", TRUE) for i in range(30)]
    for spk in ("11", "22", "33"):
        utts += [Utterance(f"librispeech_test-other_{spk}-1-{k}", f"{spk}-{k}", "librispeech",
                           spk, "a b", PSEUDO) for k in range(4)]
    utts += [Utterance(f"x_{k}", f"train-{k}", "librispeech", f"9{k}", "a b", PSEUDO)
             for k in range(3)]
    utts += [Utterance(f"trump_{f}#{k}", f"trump_{f}.mp3", "interviews", "trump", "a b",
                       PSEUDO, k, k + 1.0) for f in (1, 2) for k in range(3)]
    train, held = heldout_split(utts)
    assert {u.speaker for u in held if u.source == "librispeech"} == {"11", "22"}
    assert {u.path for u in held if u.source == "interviews"} == {"trump_2.mp3"}
    assert sum(u.source == "ljspeech" for u in held) == 3
    assert not {u.key for u in train} & {u.key for u in held}
    assert len(train) + len(held) == len(utts)
    assert heldout_split(list(reversed(utts)))[1] != [] and \
        {u.key for u in heldout_split(list(reversed(utts)))[1]} >= {
            u.key for u in held if u.source != "ljspeech"}


def _write_flac(path, seconds, seed):
    import av

    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    x = 0.3 * np.sin(2 * np.pi * (150 + 50 * seed) * t) * (1 + np.sin(2 * np.pi * 3 * t))
    x = (x / 2 + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
    pcm = (np.clip(x, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w", format="flac") as c:
        s = c.add_stream("flac", rate=16000)
        s.layout = "mono"
        f = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
        f.sample_rate = 16000
        for pkt in s.encode(f):
            c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    return pcm


def test_corpus_of_transcribed_speech(tmp_path):
    lj = tmp_path / "speech" / "ljspeech"
    lj.mkdir(parents=True)
    rows = []
    for i in range(12):
        pcm = _write_flac(lj / f"LJ001-{i:04d}.flac", 1.5 + 0.1 * i, i)
        rows.append(f"LJ001-{i:04d}|Chapter {i + 1}, read aloud.|Chapter {i + 1}, read aloud.")
    rows.append("LJ009-0001|no recording of this one|no recording of this one")
    (lj / "transcript.csv").write_text("\n".join(rows) + "\n")
    x = load_audio(lj / "LJ001-0011.flac")
    assert len(x) == len(pcm) and np.abs(x - pcm / 32768).max() < 1e-4
    out = tmp_path / "corpus"
    summary = build_real_corpus(tmp_path / "speech", out, copies=3, seed=1)
    assert is_real_corpus(out) and not is_real_corpus(tmp_path)
    assert summary["utterances"] == {"train": 10, "heldout": 2}
    assert summary["by_source"]["ljspeech"]["labels"] == TRUE
    assert json.loads((out / "corpus.json").read_text())["copies"] == 3
    with np.load(next(out.glob("shard_*.npz"))) as z:
        labels, offsets, feats = list(z["labels"]), z["offsets"], z["feats"]
    assert len(labels) == 30 and labels.count("chapter two read aloud") == 3
    # the first utterance trained on is LJ001-0001 (1.6 s; 0000 is held out); its copy 0
    # is the recording as it is, the augmented copies get silence around them
    first = feats[offsets[0] : offsets[1]]
    assert labels[0] == "chapter two read aloud"
    assert first.shape[1] == 26 and len(first) == 1 + (25600 - 512) // 320
    assert offsets[2] - offsets[1] > len(first) and offsets[3] - offsets[2] > len(first)
    held = read_heldout(out)
    assert [h[1] for h in held] == ["chapter one read aloud", "chapter eleven read aloud"]
    assert all(h[2] == TRUE and h[3] == "ljspeech" for h in held)
