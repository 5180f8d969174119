"""The simulated labeler's noise model, computed by hand."""

from __future__ import annotations

import math
import random

import pytest

pytest.importorskip("torch")

from rlhflab.eval.simulate import answer, confidence_of, labeler_probability  # noqa: E402


def test_temperature_sharpens_or_flattens_the_judges_probability():
    # p = σ(1) = 0.7311: temperature 1 keeps it, 0.5 doubles the logit, 2 halves it, 0 takes the judge's side
    p = 1 / (1 + math.exp(-1))
    assert labeler_probability(p, 1.0, 0.0) == pytest.approx(p)
    assert labeler_probability(p, 0.5, 0.0) == pytest.approx(1 / (1 + math.exp(-2)))
    assert labeler_probability(p, 2.0, 0.0) == pytest.approx(1 / (1 + math.exp(-0.5)))
    assert labeler_probability(p, 0.0, 0.0) == 1.0
    assert labeler_probability(0.2, 0.0, 0.0) == 0.0
    assert labeler_probability(0.5, 0.0, 0.0) == 0.5


def test_random_rate_mixes_in_coin_flips():
    # q = r/2 + (1 - r)·sharp: with r = 0.2 and a certain judge (temperature 0) 0.1 + 0.8 = 0.9
    assert labeler_probability(0.99, 0.0, 0.2) == pytest.approx(0.9)
    assert labeler_probability(0.01, 0.0, 0.2) == pytest.approx(0.1)
    assert labeler_probability(0.99, 1.0, 1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("q, choice, expected", [
    (1.0, 0, 1),    # certain of summary 0: distance 4 → 5 − 4
    (0.0, 1, 9),    # certain of summary 1: 5 + 4
    (0.75, 0, 3),   # |2·0.75 − 1| = 0.5 → distance 2
    (0.55, 0, 4),   # 0.1 → round(0.4) = 0, clipped up to 1: a choice always leans
    (0.5, 1, 6),    # no belief either way: the weakest lean, to the chosen side
    (0.9, 1, 6),    # chose against its own belief (a noisy answer): the weakest lean to what it chose
])
def test_confidence_leans_to_the_choice_by_how_sure_the_labeler_was(q, choice, expected):
    assert confidence_of(q, choice) == expected


def test_answers_follow_the_labelers_probability():
    rng = random.Random(0)
    answers = [answer(0.8, 1.0, 0.0, rng) for _ in range(4000)]
    share_a = sum(c == 0 for c, _ in answers) / len(answers)
    assert share_a == pytest.approx(0.8, abs=0.03)
    assert all((conf < 5) == (c == 0) for c, conf in answers)  # never contradicts its choice
    assert {conf for c, conf in answers if c == 0} == {3}  # q = 0.8 → distance round(2.4) = 2


def test_best_of_n_pick_probabilities_by_hand():
    from rlhflab.eval.simulate import pick, pick_probabilities

    scores = [0.2, 0.5, -0.1, 0.5]
    # temperature 0: the judge's top score, ties shared
    assert pick_probabilities(scores, 1.0, 0.0, 0.0) == [0.0, 0.5, 0.0, 0.5]
    # softmax of s / (tau * T), then mixed with random_rate / N
    z = [math.exp(s / 0.5) for s in scores]
    expected = [0.2 / 4 + 0.8 * v / sum(z) for v in z]
    assert pick_probabilities(scores, 1.0, 0.5, 0.2) == pytest.approx(expected)
    # N = 2 is the pairwise labeler: P(a) = σ(logit(p) / T) with p = σ(s_a − s_b)
    p_a = 1 / (1 + math.exp(-(0.9 - 0.3)))
    assert pick_probabilities([0.9, 0.3], 1.0, 0.7, 0.1)[0] == pytest.approx(labeler_probability(p_a, 0.7, 0.1))
    rng = random.Random(0)
    picks = [pick(scores, 1.0, 0.5, 0.2, rng) for _ in range(20000)]
    assert [picks.count(i) / len(picks) for i in range(4)] == pytest.approx(expected, abs=0.015)
