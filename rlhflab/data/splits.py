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
