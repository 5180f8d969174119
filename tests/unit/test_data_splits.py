"""Post-disjoint train/dev splits of comparisons."""

from __future__ import annotations

import pytest

from rlhflab.data.records import Comparison, Post, Summary
from rlhflab.data.splits import split_by_post


def _comparisons(n_posts: int, per_post: int = 3) -> list[Comparison]:
    return [Comparison(Post(f"t3_{i}", "text"), (Summary(f" a{j}"), Summary(f" b{j}")), j % 2)
            for i in range(n_posts) for j in range(per_post)]


def test_no_post_on_both_sides_and_nothing_lost():
    comps = _comparisons(500)
    train, dev = split_by_post(comps, 0.2, seed=1)
    assert len(train) + len(dev) == len(comps)
    assert not {c.post.id for c in train} & {c.post.id for c in dev}
    assert 60 <= len({c.post.id for c in dev}) <= 140  # 100 expected
    assert train == [c for c in comps if c in train]  # order kept


def test_deterministic_and_seeded():
    comps = _comparisons(200)
    assert split_by_post(comps, 0.3, seed=0) == split_by_post(list(comps), 0.3, seed=0)
    assert split_by_post(comps, 0.3, seed=0) != split_by_post(comps, 0.3, seed=1)


def test_stable_when_rows_are_added():
    small, big = _comparisons(100), _comparisons(300)
    dev_small = {c.post.id for c in split_by_post(small, 0.25, 7)[1]}
    dev_big = {c.post.id for c in split_by_post(big, 0.25, 7)[1]}
    assert dev_small == {i for i in dev_big if int(i[3:]) < 100}


def test_edges():
    comps = _comparisons(10)
    assert split_by_post(comps, 0.0, 0) == (comps, [])
    assert split_by_post(comps, 1.0, 0) == ([], comps)
    with pytest.raises(ValueError):
        split_by_post(comps, 1.5, 0)
