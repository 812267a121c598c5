"""The figures `llmk evaluate replies` prints: ROUGE-L as defined (LCS F1 on words); the CSV rules."""

from __future__ import annotations

import pytest

from llmk.errors import InvalidInput
from services.support.interface import Pair
from services.support.usecases.evaluation import parse_pairs
from services.support.usecases.rouge import lcs_length, rouge_l


def test_rouge_l_is_the_f1_of_the_longest_common_word_subsequence() -> None:
    reference = "Please log in to your account to cancel the order."
    assert rouge_l(reference, reference) == 1.0
    assert rouge_l("totally unrelated words", reference) == 0.0
    # LCS of (log in cancel order) = 4 words; candidate 5 words, reference 10 words
    assert rouge_l("log in then cancel order", reference) == pytest.approx(
        2 * (4 / 5) * (4 / 10) / (4 / 5 + 4 / 10)
    )
    assert rouge_l("", reference) == 0.0


def test_lcs_is_order_sensitive() -> None:
    assert lcs_length(["a", "b", "c"], ["c", "b", "a"]) == 1
    assert lcs_length(["a", "x", "b", "c"], ["a", "b", "y", "c"]) == 3


def test_pairs_are_read_by_column_name() -> None:
    text = 'intent,instruction,response\ncancel,Cancel my order,"Sure, done.\nAnything else?"\n'
    assert parse_pairs(text) == [Pair("Cancel my order", "Sure, done.\nAnything else?")]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("instruction,answer\nhi,hello\n", "missing response"),
        ("instruction,response\n", "no rows"),
        ("instruction,response\nhi,\n", "line 2"),
        ("", "missing instruction, response"),
    ],
)
def test_bad_csv_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        parse_pairs(text)
