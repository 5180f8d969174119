"""Repeated comparisons: the same two summaries of one post, labelled by several people.

In batch13, 40 pairs carry 232 rows, and 26 of those pairs have both answers. `resolve_repeats` applies two
policies, in this order, and counts what it did:
  - contradictions (same pair, opposite choices): "majority" keeps the rows of the majority choice and drops the
    pair on a tie; "drop" drops every row of a contradicted pair; "keep" keeps all rows.
  - duplicates (same pair, same choice — labelers agreeing): "drop" keeps the first row; "keep" keeps them all.
A pair is the post id plus the unordered pair of texts, so a row that lists the summaries the other way round is
the same pair.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from rlhflab.data.records import Comparison

DUPLICATE_POLICIES = ("drop", "keep")
CONTRADICTION_POLICIES = ("majority", "drop", "keep")


def pair_key(c: Comparison) -> tuple[str, frozenset[str]]:
    return c.post.id, frozenset((c.summaries[0].text, c.summaries[1].text))


def resolve_repeats(comparisons: list[Comparison], duplicates: str, contradictions: str
                    ) -> tuple[list[Comparison], dict[str, int]]:
    """Apply the contradiction policy, then the duplicate policy (see the module docstring). Order is kept."""
    if duplicates not in DUPLICATE_POLICIES or contradictions not in CONTRADICTION_POLICIES:
        raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES} and contradictions one of "
                         f"{CONTRADICTION_POLICIES}; got {duplicates!r}, {contradictions!r}")
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, c in enumerate(comparisons):
        groups[pair_key(c)].append(i)
    keep = [True] * len(comparisons)
    counts = {"rows_in": len(comparisons), "contradicted_pairs": 0, "contradiction_rows_dropped": 0,
              "contradiction_ties_dropped": 0, "duplicate_rows": 0, "duplicate_rows_dropped": 0}
    for rows in groups.values():
        chosen_texts = [comparisons[i].chosen.text for i in rows]
        votes: dict[str, int] = defaultdict(int)
        for t in chosen_texts:
            votes[t] += 1
        if len(votes) > 1:
            counts["contradicted_pairs"] += 1
            if contradictions == "drop":
                drop = rows
            elif contradictions == "majority":
                best = max(votes.values())
                winners = [t for t, v in votes.items() if v == best]
                if len(winners) > 1:
                    counts["contradiction_ties_dropped"] += 1
                    drop = rows
                else:
                    drop = [i for i in rows if comparisons[i].chosen.text != winners[0]]
            else:
                drop = []
            for i in drop:
                keep[i] = False
            counts["contradiction_rows_dropped"] += len(drop)
        seen: set[str] = set()
        for i in rows:
            if not keep[i]:
                continue
            t = comparisons[i].chosen.text
            if t in seen:
                counts["duplicate_rows"] += 1
                if duplicates == "drop":
                    keep[i] = False
                    counts["duplicate_rows_dropped"] += 1
            seen.add(t)
    out = [c for c, k in zip(comparisons, keep) if k]
    counts["rows_out"] = len(out)
    return out, counts
