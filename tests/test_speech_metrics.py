"""Speech error rates: edit distance, corpus CER/WER, transcript normalisation."""

from __future__ import annotations

import math

import pytest

from etf_models.speech_metrics import (
    cer,
    char_errors,
    levenshtein,
    normalise_text,
    wer,
    word_errors,
)


@pytest.mark.parametrize(("a", "b", "d"), [
    ("kitten", "sitting", 3),  # 2 substitutions + 1 insertion
    ("flaw", "lawn", 2),  # 1 deletion + 1 insertion
    ("intention", "execution", 5),
    ("abc", "abc", 0),
    ("abc", "", 3),
    ("", "abc", 3),
    ("", "", 0),
    ("ab", "ba", 2),  # no transpositions: two substitutions
    ("a b", "ab", 1),  # spaces are characters
])
def test_levenshtein_known_distances(a, b, d):
    assert levenshtein(a, b) == d
    assert levenshtein(b, a) == d


def test_levenshtein_over_words():
    ref = "the cat sat on the mat".split()
    assert levenshtein(ref, "the cat sat on a mat".split()) == 1
    assert levenshtein(ref, "cat sat on the mat today".split()) == 2
    assert levenshtein(ref, []) == 6
    # a word is one token however long: one substitution, not many
    assert levenshtein(["catastrophe"], ["cat"]) == 1


def test_cer_single_pair_counts_spaces():
    assert cer("abc", "abd") == pytest.approx(1 / 3)
    assert char_errors("ab cd", "abcd") == (1, 5)
    assert cer("ab cd", "abcd") == pytest.approx(1 / 5)


def test_rates_can_exceed_one():
    assert cer("a", "bbb") == pytest.approx(3.0)
    assert wer("yes", "no no no") == pytest.approx(3.0)


def test_corpus_rates_are_total_edits_over_total_reference():
    refs = ["a", "bbbb"]
    hyps = ["b", "bbbb"]
    # 1 edit over 5 reference characters, not the mean of 1.0 and 0.0
    assert cer(refs, hyps) == pytest.approx(1 / 5)
    refs = ["one", "two three four"]
    hyps = ["won", "two three four"]
    assert wer(refs, hyps) == pytest.approx(1 / 4)


def test_wer_splits_on_any_whitespace():
    assert word_errors("the cat sat", "the  cat\tsat down") == (1, 3)
    assert wer("the cat sat", "the cat sat down") == pytest.approx(1 / 3)
    assert wer("go forward ten meters", "") == pytest.approx(1.0)
    assert wer("go forward ten meters", "go forward ten meters") == 0.0


def test_empty_references():
    assert cer("", "") == 0.0
    assert wer("", "") == 0.0
    assert cer([], []) == 0.0
    assert math.isinf(cer("", "x"))
    assert math.isinf(wer("", "x"))
    # an empty reference in a corpus only adds the hypothesis's insertions
    assert cer(["", "abcd"], ["x", "abcd"]) == pytest.approx(1 / 4)


def test_pairs_must_match():
    with pytest.raises(ValueError):
        cer(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        wer("a b", ["a b"])


@pytest.mark.parametrize(("raw", "norm"), [
    ("Hello, World!", "hello world"),
    ("  He was NOT an ill-disposed young man.\n", "he was not an ill disposed young man"),
    ("Mr. Dashwood's  cold-hearted;\tselfish", "mr dashwood's cold hearted selfish"),
    ("It\u2019s", "it's"),  # typographic apostrophe
    ("'Tis the Dashwoods' house", "'tis the dashwoods' house"),
    ("he said ' no '", "he said no"),  # a lone apostrophe is not a word
    ("caf\u00e9 na\u00efve \u00c9lise", "cafe naive elise"),  # accents dropped
    ("go forward 10 meters", "go forward 10 meters"),  # digits left alone
    ("Room 101, floor 3B", "room 101 floor 3b"),
    ("<s> ten of clubs </s>", "s ten of clubs s"),  # markup is the caller's business
    ("", ""),
    ("?!... --", ""),
])
def test_normalise_text(raw, norm):
    assert normalise_text(raw) == norm


def test_normalise_is_idempotent_and_within_alphabet():
    text = "Unless to be rather cold-hearted, and rather selfish, is to be ill-disposed\u2026"
    once = normalise_text(text)
    assert normalise_text(once) == once
    assert set(once) <= set(" abcdefghijklmnopqrstuvwxyz'")
    assert "  " not in once and once == once.strip()


def test_normalised_metrics_ignore_case_and_punctuation():
    ref = normalise_text("Go forward, ten meters!")
    assert cer(ref, "go forward ten meters") == 0.0
    assert wer(ref, "go forward ten meter") == pytest.approx(1 / 4)
