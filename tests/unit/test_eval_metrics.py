"""The evaluation's math by hand: win rates and Wilson intervals, length control on synthetic data with a known
effect, best-of-k, lead-3 sentence splitting, ROUGE wiring, score summaries, paired differences and the Pareto
front."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlhflab.eval.metrics import (
    best_of_k_weights,
    best_of_n_kl,
    bootstrap_length_controlled,
    expected_best_of_k,
    fit_logistic,
    lead_k,
    length_controlled_win_rates,
    log_length_ratio,
    mean_and_se,
    mean_interval,
    paired_difference,
    pareto_front,
    rank_order,
    rouge,
    sigmoid,
    split_sentences,
    summary_stats,
    wilson_interval,
    win_outcome,
    win_rate,
)

# ------------------------------------------------------------------------------------------------ win rate + CI


def test_win_outcome_and_rate():
    assert [win_outcome(p) for p in (0.9, 0.5000001, 0.5, 0.4999, 0.0)] == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert win_rate([1.0, 0.0, 0.5, 1.0]) == pytest.approx(0.625)
    assert win_rate([]) is None
    for bad in (-0.1, 1.2, float("nan")):
        with pytest.raises(ValueError):
            win_outcome(bad)


def test_wilson_interval_by_hand():
    # 8 of 10, z = 1.959964: centre (0.8 + z²/20)/(1 + z²/10), half z·sqrt(0.016 + z²/400)/(1 + z²/10)
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    z2 = 1.959964**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)), abs=1e-6)  # lo 0, hi z²/(n + z²)
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0), abs=1e-6)
    lo, hi = wilson_interval(2.5, 5)  # ties make it fractional: symmetric about 0.5
    assert lo + hi == pytest.approx(1.0)
    assert wilson_interval(0, 0) is None
    lo90, hi90 = wilson_interval(8, 10, level=0.90)
    assert 0.4902 < lo90 and hi90 < 0.9433  # a lower level is narrower
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# ------------------------------------------------------------------------------------------------ length control


def test_logistic_regression_by_hand():
    # Intercept only: the MLE is logit(mean y) — 3 of 4 -> log 3.
    b = fit_logistic(np.ones((4, 1)), np.array([1, 1, 1, 0.0]))
    assert b[0] == pytest.approx(math.log(3), abs=1e-3)
    # Saturated two-point design: rate 1/4 at x = 0 and 3/4 at x = 1 -> intercept −log 3, slope 2·log 3.
    x = np.array([0, 0, 0, 0, 1, 1, 1, 1.0])
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0.0])
    b = fit_logistic(np.column_stack([np.ones(8), x]), y)
    assert b == pytest.approx([-math.log(3), 2 * math.log(3)], abs=1e-3)
    # Weights are row counts: weighting rows equals repeating them.
    w = np.array([2, 1, 1, 1, 1, 1, 1, 3.0])
    rep = np.repeat(np.arange(8), w.astype(int))
    X = np.column_stack([np.ones(8), x])
    assert fit_logistic(X, y, w) == pytest.approx(fit_logistic(X[rep], y[rep]), abs=1e-8)


def test_ties_separation_and_constant_lengths_stay_finite():
    fit = length_controlled_win_rates([0.5] * 6, [0.1, -0.2, 0.3, 0.0, 0.2, -0.1], ["a"] * 6)
    assert fit.rates["a"] == pytest.approx(0.5, abs=1e-6)  # all ties -> exactly a coin
    always = length_controlled_win_rates([1.0] * 8, [0.0] * 8, ["a"] * 8)  # separable, no length variation
    assert 0.99 < always.rates["a"] <= 1.0 and math.isfinite(always.slope)
    assert always.slope == pytest.approx(0.0, abs=1e-9)


def synthetic(rng, n, intercepts: dict[str, float], slope: float, x_means: dict[str, float]):
    """Rows drawn from the true model P(win) = σ(a_group + slope·x), x ~ N(mean_group, 0.5)."""
    ys, xs, gs = [], [], []
    for g, a in intercepts.items():
        x = rng.normal(x_means[g], 0.5, n)
        y = (rng.random(n) < sigmoid(a + slope * x)).astype(float)
        ys += y.tolist()
        xs += x.tolist()
        gs += [g] * n
    return ys, xs, gs


def test_length_control_recovers_a_known_effect():
    rng = np.random.default_rng(0)
    ys, xs, gs = synthetic(rng, 20_000, {"long": 0.4, "short": -0.3}, 1.5, {"long": 0.4, "short": -0.3})
    fit = length_controlled_win_rates(ys, xs, gs)
    assert fit.rates["long"] == pytest.approx(sigmoid(0.4), abs=0.015)  # 0.599 at equal length
    assert fit.rates["short"] == pytest.approx(sigmoid(-0.3), abs=0.015)  # 0.426
    assert fit.slope == pytest.approx(1.5, abs=0.08)
    raw_long = np.mean([y for y, g in zip(ys, gs) if g == "long"])
    assert raw_long > fit.rates["long"] + 0.08  # the raw win rate is inflated by length; control removes it


def test_longer_wins_but_the_length_controlled_rate_is_a_coin():
    rng = np.random.default_rng(1)
    ys, xs, gs = synthetic(rng, 20_000, {"verbose": 0.0}, 2.0, {"verbose": 0.5})
    assert np.mean(ys) > 0.68  # "longer wins": the policy looks good ...
    fit = length_controlled_win_rates(ys, xs, gs)
    assert fit.rates["verbose"] == pytest.approx(0.5, abs=0.015)  # ... and is a coin at equal length


def test_bootstrap_interval_covers_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(2)
    ys, xs, gs = synthetic(rng, 150, {"a": 0.5, "b": -0.5}, 1.0, {"a": 0.2, "b": 0.0})
    posts = [f"p{i}" for i in range(150)] * 2  # one row per policy per post
    fit = length_controlled_win_rates(ys, xs, gs)
    cis = bootstrap_length_controlled(ys, xs, gs, posts, n_boot=200, seed=3)
    for g in ("a", "b"):
        lo, hi = cis[g]
        assert lo < fit.rates[g] < hi and hi - lo < 0.35
    assert cis == bootstrap_length_controlled(ys, xs, gs, posts, n_boot=200, seed=3)
    assert bootstrap_length_controlled(ys, xs, gs, posts, n_boot=0) == {}


def test_log_length_ratio():
    assert log_length_ratio(20, 10) == pytest.approx(math.log(2))
    assert log_length_ratio(10, 10) == 0.0
    assert log_length_ratio(0, 4) == pytest.approx(math.log(1 / 4))  # empty counts as 1


# ------------------------------------------------------------------------------------------------ best of n


def test_best_of_k_by_hand():
    assert best_of_k_weights(3, 1) == pytest.approx([1 / 3] * 3)
    assert best_of_k_weights(3, 2) == pytest.approx([0, 1 / 3, 2 / 3])  # pairs {0,1} {0,2} {1,2}
    assert best_of_k_weights(3, 3) == pytest.approx([0, 0, 1])
    assert expected_best_of_k([1.0, 2.0, 3.0], 2) == pytest.approx(8 / 3)
    # with judge outcomes in rank order: only the top sample wins -> best-of-2 wins 2/3 of the time
    assert expected_best_of_k([0.0, 0.0, 1.0], 2) == pytest.approx(2 / 3)
    assert rank_order([0.3, 0.1, 0.3, 0.2]) == [1, 3, 2, 0]  # of equal scores the earliest ranks highest
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    with pytest.raises(ValueError):
        best_of_k_weights(3, 4)


# ------------------------------------------------------------------------------------------------ lead-3


@pytest.mark.parametrize("text, sentences", [
    ("One. Two! Three? Four.", ["One.", "Two!", "Three?", "Four."]),
    ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
    ("J. K. Rowling wrote it. Then more.", ["J. K. Rowling wrote it.", "Then more."]),
    ("Prices rose 3.5 percent. Markets fell.", ["Prices rose 3.5 percent.", "Markets fell."]),
    ('"Stop," he said. "Now!" She left.', ['"Stop," he said.', '"Now!"', "She left."]),
    ("He said it (twice.) Then left.", ["He said it (twice.)", "Then left."]),
    ("The No. 1 player won in Jan. 2015. Fans cheered.", ["The No. 1 player won in Jan. 2015.", "Fans cheered."]),
    ("Wait... What? Really?!", ["Wait...", "What?", "Really?!"]),
    ("lower case. after a stop is one sentence", ["lower case. after a stop is one sentence"]),
    ("first line\nsecond line. Third\n\nfourth", ["first line", "second line.", "Third", "fourth"]),
    ("visit example.com today. Ok.", ["visit example.com today.", "Ok."]),
    ("In 1996. The league began.", ["In 1996.", "The league began."]),
    ("  ", []),
    ("", []),
])
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_lead_3():
    article = "(CNN)First sentence here. Second one!  Third?\nFourth. Fifth."
    assert lead_k(article) == "(CNN)First sentence here. Second one! Third?"
    assert lead_k("Only one sentence") == "Only one sentence"
    assert lead_k("A b. C d.", 3) == "A b. C d."
    assert lead_k("A b. C d. E f.", 1) == "A b."
    with pytest.raises(ValueError):
        lead_k("x", 0)


# ------------------------------------------------------------------------------------------------ ROUGE


def test_rouge_by_hand():
    # "the cat sat on the mat" vs "the cat was on the mat": 5 of 6 unigrams, 3 of 5 bigrams, LCS 5 of 6.
    r = rouge(["the cat sat on the mat"], ["the cat was on the mat"])
    assert r == pytest.approx({"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})
    # a mean over pairs; identical -> 1; nothing shared -> 0; stemming: cats/cat, running/run
    r = rouge(["a b c", "x y"], ["a b c", "p q"])
    assert r == pytest.approx({"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5})
    assert rouge(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(1.0)
    # precision 1/1, recall 1/4 -> F1 = 2·1·0.25/1.25 = 0.4
    assert rouge(["cat"], ["the cat is here"])["rouge1"] == pytest.approx(0.4)
    with pytest.raises(ValueError):
        rouge(["a"], [])


# ------------------------------------------------------------------------------------------------ distributions


def test_summary_stats_and_standard_error():
    s = summary_stats([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["n"], s["mean"], s["median"], s["min"], s["max"]) == (5, 3.0, 3.0, 1.0, 5.0)
    assert s["std"] == pytest.approx(math.sqrt(2))
    assert s["p25"] == 2.0 and s["p75"] == 4.0
    assert summary_stats([]) == {"n": 0, "mean": None, "std": None}
    mean, se = mean_and_se([1.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(math.sqrt(2) / math.sqrt(2))  # std 1.414 / sqrt 2
    assert mean_and_se([4.0]) == (4.0, None)


def test_mean_interval_by_hand():
    lo, hi = mean_interval([1.0, 3.0])  # mean 2, s = √2, se = s/√2 = 1
    assert (lo, hi) == pytest.approx((2 - 1.959964, 2 + 1.959964), abs=1e-6)
    assert mean_interval([5.0]) is None and mean_interval([]) is None


def test_paired_difference_by_hand():
    # d = [1, 0, 0, 0.5]: mean 0.375; s² = (0.625² + 0.375² + 0.375² + 0.125²)/3 = 0.6875/3; se = s/2
    got = paired_difference([1.0, 1.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0])
    half = 1.959964 * math.sqrt(0.6875 / 3) / 2
    assert got["n"] == 4 and got["difference"] == pytest.approx(0.375)
    assert got["ci"] == pytest.approx([0.375 - half, 0.375 + half], abs=1e-6) and got["differ"] is False
    # every post the same difference: no spread, the interval is the difference, and it excludes 0
    assert paired_difference([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == {"n": 3, "difference": 1.0, "ci": [1.0, 1.0],
                                                                  "differ": True}
    # a post that either lacks is left out; one pair has no interval
    assert paired_difference([1.0, None], [0.0, 0.0]) == {"n": 1, "difference": 1.0, "ci": None, "differ": None}
    assert paired_difference([None], [1.0])["difference"] is None
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def test_pareto_front_by_hand():
    # (tokens, score): (15, 0.5) is beaten by (10, 1.0), (30, 2.0) by (20, 2.0); equal points beat neither
    points = [(10, 1.0), (20, 2.0), (15, 0.5), (10, 1.0), (30, 2.0)]
    assert pareto_front(points) == [True, True, False, True, False]
    assert pareto_front([]) == [] and pareto_front([(5, 0.0)]) == [True]
