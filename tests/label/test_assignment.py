"""Task assignment rules (pure) and the left/right mapping."""

from __future__ import annotations

import random

import pytest

from rlhflab.label.assignment import Candidate, assignable, pick_task, to_canonical, to_display


def test_fills_started_tasks_first_and_respects_k():
    c = [Candidate(1, False, 0, False), Candidate(2, False, 2, False), Candidate(3, False, 3, False),
         Candidate(4, False, 1, False)]
    assert pick_task(c, k=3, gold_rate=0.0, rng=random.Random(0)) == 2  # 3 is full
    assert pick_task(c[:1] + c[3:], k=3, gold_rate=0.0, rng=random.Random(0)) == 4


def test_never_a_seen_task():
    c = [Candidate(1, False, 0, True), Candidate(2, True, 0, True)]
    assert pick_task(c, k=3, gold_rate=1.0, rng=random.Random(0)) is None


def test_gold_mixed_in_at_the_rate():
    rng = random.Random(1)
    c = [Candidate(1, False, 0, False), Candidate(2, True, 5, False)]
    picks = [pick_task(c, k=3, gold_rate=0.2, rng=rng) for _ in range(2000)]
    assert 0.15 < picks.count(2) / len(picks) < 0.25
    assert pick_task(c, k=3, gold_rate=0.0, rng=rng) == 1


def test_gold_when_nothing_else_and_gold_ignores_k():
    c = [Candidate(1, False, 3, False), Candidate(2, True, 100, False)]
    assert pick_task(c, k=3, gold_rate=0.0, rng=random.Random(0)) == 2


@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("side,conf", [("left", 1), ("left", 4), ("right", 6), ("right", 9), ("left", 5)])
def test_canonical_display_round_trip(side, conf, swapped):
    choice, c = to_canonical(side, conf, swapped)
    shown, c2 = to_display(choice, c, swapped)
    assert (shown, c2) == (0 if side == "left" else 1, conf)


def test_swapped_mapping_by_hand():
    # B was shown on the left; the labeler says "left is much better" (1) -> B (choice 1), confidence 9
    assert to_canonical("left", 1, swapped=True) == (1, 9)
    assert to_canonical("right", 7, swapped=True) == (0, 3)
    assert to_canonical("right", 7, swapped=False) == (1, 7)


def test_pairs_from_samples_draws_distinct_policy_pairs_deterministically():
    from rlhflab.data.records import Sample
    from rlhflab.label.service import pairs_from_samples

    samples = [Sample(post_id=f"p{i}", policy=pol, text=f" {pol}{i}.{j}", n_tokens=1, index=j)
               for i in range(20) for pol in ("a", "b", "c") for j in range(2)]
    pairs = pairs_from_samples(samples, pairs_per_post=3, seed=3)
    assert pairs == pairs_from_samples(samples, pairs_per_post=3, seed=3)
    assert len(pairs) == 60
    for p in pairs:
        assert p.policy_a != p.policy_b and p.summary_b is not None
    # three pairs per post, round-robin over the 3 policy pairs: each post gets every pair of policies once
    for i in range(20):
        mine = {(p.policy_a, p.policy_b) for p in pairs if p.post_id == f"p{i}"}
        assert mine == {("a", "b"), ("a", "c"), ("b", "c")}
    assert pairs_from_samples(samples, policies=["a"], seed=0) == []
    ratings = pairs_from_samples(samples, ratings=True, comparisons=False)
    assert len(ratings) == 120 and all(p.summary_b is None for p in ratings)


def test_assignable_counts_what_pick_task_could_still_give():
    c = [Candidate(1, False, 0, False), Candidate(2, False, 3, False),  # free; full at k=3
         Candidate(3, False, 1, True), Candidate(4, True, 9, False),  # seen; gold (k does not apply)
         Candidate(5, True, 0, True)]  # seen gold
    assert assignable(c, k=3) == 2
    assert assignable(c, k=4) == 3
    rng = random.Random(0)
    given = set()
    left = list(c)
    while (t := pick_task(left, 3, 0.5, rng)) is not None:  # draining agrees with the count
        given.add(t)
        left = [Candidate(x.task_id, x.is_gold, x.taken, x.seen or x.task_id == t) for x in left]
    assert len(given) == assignable(c, k=3)
