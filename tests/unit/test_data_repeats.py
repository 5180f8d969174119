"""Repeated comparisons: duplicates and contradictions are resolved on purpose, and counted."""

from __future__ import annotations

import pytest

from rlhflab.data.records import Comparison, Post, Summary
from rlhflab.data.repeats import resolve_repeats


def cmp(post: str, a: str, b: str, choice: int) -> Comparison:
    return Comparison(post=Post(id=post, text="x"), summaries=(Summary(a), Summary(b)), choice=choice)


def test_duplicates_and_contradictions_are_resolved_and_counted():
    rows = [cmp("p", "A", "B", 0), cmp("p", "B", "A", 1),  # a duplicate (same pair, same choice, swapped order)
            cmp("p", "A", "B", 1),  # the contradiction: 2 votes for A, 1 for B
            cmp("q", "C", "D", 0), cmp("q", "C", "D", 1),  # a tie
            cmp("r", "E", "F", 1)]
    out, n = resolve_repeats(rows, "drop", "majority")
    assert [(c.post.id, c.chosen.text) for c in out] == [("p", "A"), ("r", "F")]
    assert n["contradicted_pairs"] == 2 and n["contradiction_ties_dropped"] == 1
    assert n["contradiction_rows_dropped"] == 3 and n["duplicate_rows"] == 1 and n["duplicate_rows_dropped"] == 1
    kept, n2 = resolve_repeats(rows, "keep", "keep")
    assert len(kept) == 6 and n2["duplicate_rows"] == 1 and n2["contradicted_pairs"] == 2
    dropped, _ = resolve_repeats(rows, "keep", "drop")
    assert [c.post.id for c in dropped] == ["r"]


def test_unknown_policy_is_an_error():
    with pytest.raises(ValueError, match="duplicates must be one of"):
        resolve_repeats([], "dedupe", "keep")

