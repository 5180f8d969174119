"""Train/dev splits of comparisons by post, so no post is on both sides.

Comparisons of the same post share its text; splitting by comparison would let the reward model be scored on
posts it was trained on and overstate its accuracy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from rlhflab.data.records import Comparison


def post_bucket(post_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, post id): stable across runs, machines and Python hash seeds."""
    digest = hashlib.sha256(f"{seed}:{post_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_post(comparisons: Sequence[Comparison], dev_fraction: float,
                  seed: int = 0) -> tuple[list[Comparison], list[Comparison]]:
    """(train, dev): a post goes to dev when its bucket is below `dev_fraction`; order is kept on both sides.

    Deterministic and independent of the other rows, so adding comparisons never moves an old post across.
    The dev share of posts is `dev_fraction` only in expectation (a hash, not a shuffle-and-cut).
    """
    if not 0.0 <= dev_fraction <= 1.0:
        raise ValueError(f"dev_fraction must be in [0, 1], got {dev_fraction}")
    train: list[Comparison] = []
    dev: list[Comparison] = []
    for c in comparisons:
        (dev if post_bucket(c.post.id, seed) < dev_fraction else train).append(c)
    return train, dev


def fold_by_post(comparisons: Sequence[Comparison], folds: int, fold: int,
                 seed: int = 0) -> tuple[list[Comparison], list[Comparison]]:
    """(train, dev) of k-fold cross-validation by post: a post is in fold ⌊bucket·k⌋ (the bucket `split_by_post`
    uses), and fold `fold` is dev. The k dev sets are disjoint and cover every post; all the comparisons of one
    post are always on one side. Order is kept."""
    if folds < 2 or not 0 <= fold < folds:
        raise ValueError(f"k-fold needs folds >= 2 and 0 <= fold < folds, got folds={folds}, fold={fold}")
    train: list[Comparison] = []
    dev: list[Comparison] = []
    for c in comparisons:
        (dev if min(int(post_bucket(c.post.id, seed) * folds), folds - 1) == fold else train).append(c)
    return train, dev
