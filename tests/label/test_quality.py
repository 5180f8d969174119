"""Agreement math against hand-computed values."""

from __future__ import annotations

import math

import pytest

from rlhflab.label.quality import (Label, agreement_rate, cohen_kappa, fleiss_kappa, labeler_stats, project_fleiss,
                                  throughput_per_hour)


def test_agreement_rate():
    assert agreement_rate([(0, 0), (1, 0), (1, 1), (0, 0)]) == 0.75
    assert agreement_rate([]) is None


def test_cohen_kappa_hand_computed():
    # 10 items: rater 1 says 0 six times, rater 2 says 0 five times; they agree on 4 zeros and 3 ones.
    pairs = [(0, 0)] * 4 + [(0, 1)] * 2 + [(1, 0)] * 1 + [(1, 1)] * 3
    # p_o = 7/10; p_e = 0.6*0.5 + 0.4*0.5 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    assert cohen_kappa(pairs) == pytest.approx(0.4)


def test_cohen_kappa_edge_cases():
    assert cohen_kappa([]) is None
    assert cohen_kappa([(1, 1), (1, 1)]) is None  # everyone always says 1: chance agreement is 1
    assert cohen_kappa([(0, 0), (1, 1)]) == pytest.approx(1.0)
    assert cohen_kappa([(0, 1), (1, 0)]) == pytest.approx(-1.0)


def test_fleiss_kappa_wikipedia_example():
    # The worked example on Wikipedia ("Fleiss' kappa"): 10 subjects, 14 raters, 5 categories, kappa = 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    items = [[cat for cat, n in enumerate(row) for _ in range(n)] for row in table]
    assert fleiss_kappa(items) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_kappa_small_hand_computed():
    # 3 items x 3 raters, binary. P_i: [0,0,0] -> 1, [0,0,1] -> 1/3, [1,1,1] -> 1; P_bar = 7/9.
    # p_0 = 5/9, p_1 = 4/9, P_e = 41/81; kappa = (7/9 - 41/81) / (40/81) = 22/40 = 0.55
    assert fleiss_kappa([[0, 0, 0], [0, 0, 1], [1, 1, 1]]) == pytest.approx(0.55)
    assert fleiss_kappa([[0], [1]]) is None  # no item with two ratings
    assert fleiss_kappa([[1, 1], [1, 1]]) is None


def test_fleiss_equals_cohen_like_for_unequal_counts():
    # Items with different numbers of raters are allowed (the generalised P_i).
    k = fleiss_kappa([[0, 0], [0, 1, 1], [1, 1, 1, 1]])
    assert k is not None and -1.0 <= k <= 1.0


def _label(user, task, choice, gold=None, t=1000, at=0.0):
    return Label(user=user, task_id=task, choice=choice, time_ms=t, created_s=at, gold=gold)


def test_labeler_stats_gold_peers_flags():
    labels = [
        # gold tasks 1..4, researcher says 0 each time; alice right 4/4, bob right 1/4
        *[_label("alice", t, 0, gold=0, at=t * 60) for t in range(1, 5)],
        _label("bob", 1, 0, gold=0), *[_label("bob", t, 1, gold=0) for t in range(2, 5)],
        # shared regular tasks 10, 11: alice and carol agree on both, bob disagrees on 11
        _label("alice", 10, 1, t=3000), _label("carol", 10, 1), _label("alice", 11, 0, t=5000),
        _label("carol", 11, 0), _label("bob", 11, 1),
    ]
    stats = {s.user: s for s in labeler_stats(labels, threshold=0.6, min_answers=3)}
    a, b, c = stats["alice"], stats["bob"], stats["carol"]
    assert (a.gold_answers, a.gold_agreement) == (4, 1.0)
    assert a.gold_kappa is None  # the researcher always said 0: kappa undefined
    assert (b.gold_answers, b.gold_agreement) == (4, 0.25)
    # alice's peer pairs: task 10 with carol (agree), task 11 with carol (agree) and bob (disagree) -> 2/3
    assert a.peer_pairs == 3 and a.peer_agreement == pytest.approx(2 / 3)
    assert c.peer_pairs == 3 and c.peer_agreement == pytest.approx(2 / 3)
    assert b.peer_pairs == 2 and b.peer_agreement == 0.0
    assert a.median_time_s == 1.0  # times 1,1,1,1,3,5 s
    assert a.per_hour == pytest.approx(6 / (240 / 3600))  # 6 answers between t=0 s and t=240 s
    assert c.per_hour == pytest.approx(2 / (2 / 3600))  # both at one instant: the 2 s they took is the floor
    assert not a.flagged and not c.flagged  # 67% peer agreement >= 60%
    assert b.flags == ["gold agreement 25% < 60%"]  # bob's 2 peer pairs are under min_answers=3
    # at a 70% threshold alice's and carol's 3 peer pairs at 67% are flagged too
    stats70 = {s.user: s for s in labeler_stats(labels, threshold=0.7, min_answers=3)}
    assert stats70["alice"].flagged and stats70["carol"].flagged


def test_throughput():
    assert throughput_per_hour([0.0, 1800.0, 3600.0], [1000, 1000, 1000]) == pytest.approx(3.0)
    assert throughput_per_hour([0.0, 0.0], [30000, 30000]) == pytest.approx(120.0)  # 2 answers in 60 s of work
    assert throughput_per_hour([], []) is None
    assert throughput_per_hour([5.0], [0]) is None


def test_project_fleiss_uses_shared_tasks_only():
    labels = [_label("a", 1, 0), _label("b", 1, 0), _label("c", 1, 1), _label("a", 2, 1)]
    kappa, shared = project_fleiss(labels)
    assert shared == 1
    # one item [0,0,1]: P_bar = 1/3, p = (2/3, 1/3), P_e = 5/9 -> kappa = (1/3 - 5/9)/(4/9) = -0.5
    assert kappa == pytest.approx(-0.5)
    assert not math.isnan(kappa)
