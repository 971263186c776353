"""Speech recognition error rates: edit distance, CER, WER, transcript normalisation.

Pure Python, no dependencies, shared by ``benchmarks/speech_eval.py`` and training
validation so both score text the same way:

- ``normalise_text``: lowercase; letters with accents lose them (``café`` -> ``cafe``);
  typographic apostrophes become ``'``; everything that is not a letter, a digit or an
  apostrophe becomes a word break (``cold-hearted`` -> ``cold hearted``); single spaces, no
  leading or trailing space. Digits are kept as they are, never spelled out: the model's
  alphabet has no digits, so a reference with digits stays visibly unmatchable instead of
  being silently shortened. An apostrophe is kept inside or at the edge of a word
  (``don't``, ``'tis``, ``dashwoods'``); a word made of apostrophes only is dropped.
- ``levenshtein``: minimum number of substitutions, insertions and deletions turning one
  sequence into the other (characters of a string, or items of a list such as words).
- ``cer`` / ``wer``: corpus error rates, total edits / total reference length, over one
  pair of strings or over lists of them (so long utterances weigh more, as is usual).
  Spaces count as characters for the CER. The strings are scored as given: normalise both
  sides first. An empty reference scores 0 against an empty hypothesis and ``inf``
  against anything else (there is no reference length to divide by).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["cer", "char_errors", "levenshtein", "normalise_text", "wer", "word_errors"]

#: Apostrophe look-alikes mapped to ASCII ``'`` before anything else.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u0060": "'",
                              "\u00b4": "'"})
_NOT_KEPT = re.compile(r"[^a-z0-9']+")


def normalise_text(text: str) -> str:
    """Lowercase letters, digits, apostrophes and single spaces (see module docstring)."""
    text = text.translate(_APOSTROPHES)
    # NFKD splits accented letters into letter + combining mark; the marks are dropped.
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    words = _NOT_KEPT.sub(" ", text).split()
    return " ".join(w for w in words if w.strip("'"))


def levenshtein(ref: Sequence, hyp: Sequence) -> int:
    """Edit distance between two sequences (unit cost substitution, insertion, deletion)."""
    if len(ref) < len(hyp):  # keep the row as short as possible
        ref, hyp = hyp, ref
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1,  # deletion
                           cur[j - 1] + 1,  # insertion
                           prev[j - 1] + (r != h)))  # substitution (or match)
        prev = cur
    return prev[-1]


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(character edits, reference characters) of one pair."""
    return levenshtein(ref, hyp), len(ref)


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(word edits, reference words) of one pair; words are split on whitespace."""
    r = ref.split()
    return levenshtein(r, hyp.split()), len(r)


def _pairs(refs: str | Sequence[str], hyps: str | Sequence[str]) -> list[tuple[str, str]]:
    if isinstance(refs, str) != isinstance(hyps, str):
        raise TypeError("give two strings or two sequences of strings")
    if isinstance(refs, str):
        return [(refs, hyps)]
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return list(zip(refs, hyps, strict=True))


def _rate(errors: Sequence[tuple[int, int]]) -> float:
    edits = sum(e for e, _ in errors)
    total = sum(n for _, n in errors)
    if total == 0:
        return 0.0 if edits == 0 else float("inf")
    return edits / total


def cer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Character error rate: total character edits / total reference characters."""
    return _rate([char_errors(r, h) for r, h in _pairs(refs, hyps)])


def wer(refs: str | Sequence[str], hyps: str | Sequence[str]) -> float:
    """Word error rate: total word edits / total reference words."""
    return _rate([word_errors(r, h) for r, h in _pairs(refs, hyps)])
