"""The evaluation's math as small pure functions (numpy and the standard library; no torch, no models).

- `win_outcome`, `win_rate`, `wilson_interval`: the win rate against the reference and its confidence interval.
  The CI is Wilson's score interval (closed form, sensible at rates near 0 or 1 and for small n); a tie counts
  as half a win, also inside the interval.
- `fit_logistic`, `length_controlled_win_rates`, `bootstrap_length_controlled`: the length-controlled win rate
  (DESIGN.md): a logistic regression of "policy preferred" on x = log(len(policy summary) / len(reference)) with
  one intercept per policy and one shared slope (the judge's taste for length is the judge's, not the policy's),
  read at x = 0, i.e. σ(intercept). Its CI is a percentile bootstrap over posts (all policies' rows of a post
  are resampled together, so the shared slope is refitted on each resample).
- `best_of_k_weights`, `expected_best_of_k`, `best_of_n_kl`: best-of-k from n >= k samples without sampling
  again, and the analytic KL of best-of-n from its base policy (Stiennon et al. 2020, appendix: log n − (n−1)/n).
- `split_sentences`, `lead_k`: the lead-3 baseline (the first three sentences of the article).
- `rouge`: mean ROUGE-1/2/L F1 from the `rouge-score` package (Porter stemming on, as in the usual setup).
- `summary_stats`, `mean_interval`: mean, spread and quantiles of a score distribution; the mean's interval.
- `paired_difference`: two policies judged on the same posts, mean(a − b) per post with its interval: "do they
  differ?" answered on the pairs, which is tighter and more honest than whether two intervals overlap.
- `pareto_front`: which (length, score) points no other point beats on both (the "more than length?" view).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# ---------------------------------------------------------------------------------------------- win rate


def win_outcome(p_preferred: float) -> float:
    """The judge's verdict as a number: 1 if it prefers the policy (P > 0.5), 0 if the reference, 0.5 on a tie."""
    if not 0.0 <= p_preferred <= 1.0 or math.isnan(p_preferred):
        raise ValueError(f"a preference probability must be in [0, 1], got {p_preferred}")
    return 1.0 if p_preferred > 0.5 else 0.0 if p_preferred < 0.5 else 0.5


def win_rate(outcomes: Sequence[float]) -> float | None:
    """Mean of outcomes in {0, 0.5, 1} (ties half); None for no outcomes."""
    return float(sum(outcomes) / len(outcomes)) if outcomes else None


def z_value(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Wilson's score interval for a binomial rate: successes (ties may make it fractional) out of n.

        centre = (p̂ + z²/2n) / (1 + z²/n),   half = z·sqrt(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n)

    None when n == 0.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return None
    z = z_value(level)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------- length control


def sigmoid(x):  # noqa: ANN001, ANN201 - a float or an array
    """σ(x) = 1 / (1 + e^−x), written with tanh so it never overflows."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def fit_logistic(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, *, ridge: float = 1e-4,
                 max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Maximum-likelihood logistic regression by Newton's method (IRLS): coefficients b of P(y=1) = σ(X b).

    y may be fractional (a tie is y = 0.5: the log-likelihood y·log p + (1 − y)·log(1 − p) stays proper).
    `weights` are row weights (bootstrap counts). `ridge` adds ½·ridge·|b|² to the loss: negligible on ordinary
    data, it keeps the fit finite when the data are separable (a policy that always wins) or a column is
    constant (all lengths equal), where the plain MLE does not exist.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=float)
    if X.ndim != 2 or X.shape[0] != len(y) or len(w) != len(y):
        raise ValueError(f"shapes do not match: X {X.shape}, y {y.shape}, weights {w.shape}")
    if len(y) and (y.min() < 0 or y.max() > 1):
        raise ValueError("y must be in [0, 1]")
    b = np.zeros(X.shape[1])
    eye = np.eye(X.shape[1])
    for _ in range(max_iter):
        p = sigmoid(X @ b)
        grad = X.T @ (w * (y - p)) - ridge * b
        hess = (X * (w * p * (1 - p))[:, None]).T @ X + ridge * eye
        step = np.linalg.solve(hess, grad)
        b = b + step
        if np.max(np.abs(step)) < tol:
            break
    return b


@dataclass(frozen=True)
class LengthControlFit:
    """σ(intercept) per group (the predicted win rate at equal length), the intercepts and the shared slope."""

    rates: dict[str, float]
    intercepts: dict[str, float]
    slope: float
    n: int


def length_design(log_ratios: Sequence[float], groups: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Rows [one-hot group ..., log ratio]: one intercept per group and one shared slope."""
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    X = np.zeros((len(groups), len(names) + 1))
    for r, g in enumerate(groups):
        X[r, index[g]] = 1.0
    X[:, -1] = np.asarray(log_ratios, dtype=float)
    return X, names


def length_controlled_win_rates(outcomes: Sequence[float], log_ratios: Sequence[float], groups: Sequence[str],
                                weights: Sequence[float] | None = None, ridge: float = 1e-4) -> LengthControlFit:
    """Fit P(policy preferred) = σ(a_group + b·log(len_policy / len_ref)); the rate of a group is σ(a_group).

    `outcomes` in {0, 0.5, 1} (or any value in [0, 1]), one row per (policy, post) comparison; `groups` names the
    policy of each row.
    """
    if not (len(outcomes) == len(log_ratios) == len(groups)):
        raise ValueError(f"{len(outcomes)} outcomes, {len(log_ratios)} log ratios, {len(groups)} groups")
    if not outcomes:
        raise ValueError("length control needs at least one comparison")
    X, names = length_design(log_ratios, groups)
    w = None if weights is None else np.asarray(weights, dtype=float)
    b = fit_logistic(X, np.asarray(outcomes, dtype=float), w, ridge=ridge)
    return LengthControlFit(rates={g: float(sigmoid(b[i])) for i, g in enumerate(names)},
                            intercepts={g: float(b[i]) for i, g in enumerate(names)}, slope=float(b[-1]),
                            n=len(outcomes))


def bootstrap_length_controlled(outcomes: Sequence[float], log_ratios: Sequence[float], groups: Sequence[str],
                                clusters: Sequence[str], *, n_boot: int = 1000, level: float = 0.95,
                                seed: int = 0, ridge: float = 1e-4) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of each group's length-controlled win rate, resampling clusters (posts).

    Each resample draws the posts with replacement (a post drawn twice weighs twice, with all its rows) and
    refits the joint model. Deterministic for a seed.
    """
    if n_boot < 1:
        return {}
    ids = sorted(set(clusters))
    index = {c: i for i, c in enumerate(ids)}
    row_cluster = np.array([index[c] for c in clusters])
    X, names = length_design(log_ratios, groups)
    y = np.asarray(outcomes, dtype=float)
    rng = np.random.default_rng(seed)
    rates = np.empty((n_boot, len(names)))
    for i in range(n_boot):
        counts = np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids)).astype(float)
        w = counts[row_cluster]
        b = fit_logistic(X, y, w, ridge=ridge)
        rates[i] = sigmoid(b[: len(names)])
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {g: (float(np.quantile(rates[:, j], lo)), float(np.quantile(rates[:, j], hi)))
            for j, g in enumerate(names)}


def log_length_ratio(len_policy: int, len_reference: int) -> float:
    """log(len_policy / len_reference), lengths floored at 1 (an empty summary is not infinitely short)."""
    return math.log(max(len_policy, 1) / max(len_reference, 1))


# ---------------------------------------------------------------------------------------------- best of n


def best_of_k_weights(n: int, k: int) -> list[float]:
    """P(the sample of rank i, 0 = lowest score, is the best of k drawn without replacement from n):
    comb(i, k − 1) / comb(n, k). Sums to 1."""
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in 1..{n}")
    total = math.comb(n, k)
    return [math.comb(i, k - 1) / total for i in range(n)]


def expected_best_of_k(values_by_rank: Sequence[float], k: int) -> float:
    """E[value of the best-of-k pick] where values_by_rank[i] belongs to the sample of rank i (ascending score).

    With values = the scores themselves this is E[max of k scores]; with values = judge outcomes it is the
    best-of-k win rate — both from one set of n >= k samples, without sampling again.
    """
    w = best_of_k_weights(len(values_by_rank), k)
    return float(sum(wi * v for wi, v in zip(w, values_by_rank)))


def rank_order(scores: Sequence[float]) -> list[int]:
    """Indices sorted by ascending score; among equal scores the earliest index ranks highest (best-of-n keeps
    the first of equal scores)."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], -i))


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ base policy) = log n − (n − 1)/n nats (an upper bound; exact for distinct scores)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------------------------- lead-3

# Words that end with a full stop without ending the sentence (compared lower-case, without the stop).
ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt gen gov sen rep lt col sgt capt cmdr adm maj rev hon pres supt insp det
no nos vs etc e.g i.e u.s u.k u.n u.s.a a.m p.m approx dept est fig inc ltd co corp bros jan feb mar apr
jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun ft
""".split())

_BOUNDARY = re.compile(r"""([.!?]+["'”’)\]]*)(\s+)(?=["'“‘(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Sentences of a news article or a post, by rule (no model, no download).

    A sentence ends at `.`, `!` or `?` (possibly repeated, possibly followed by closing quotes or brackets), then
    whitespace, then a capital letter or a digit (possibly after an opening quote). Not at an abbreviation
    (Mr., U.S., Jan.) or a single capital initial (J. K. Rowling). A line break always ends a sentence.
    Decimal numbers (3.5) and mid-word dots (example.com) have no whitespace after the dot, so never split.
    """
    out: list[str] = []
    for line in text.splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        start = 0
        for m in _BOUNDARY.finditer(line):
            end = m.end(1)
            word = line[start:m.start(1)].rsplit(" ", 1)[-1]
            if m.group(1)[0] == "." and len(m.group(1)) == 1 and (word.lower() in ABBREVIATIONS
                                                                  or _is_initial(word)):
                continue
            out.append(line[start:end].strip())
            start = m.end()
        tail = line[start:].strip()
        if tail:
            out.append(tail)
    return [s for s in out if s]


def _is_initial(word: str) -> bool:
    """A single capital letter ("J" of "J. K. Rowling") or dotted initials ("J.K")."""
    word = word.lstrip("(\"'“‘")
    return len(word) == 1 and word.isupper() or bool(re.fullmatch(r"(?:[A-Z]\.)+[A-Z]", word))


def lead_k(text: str, k: int = 3) -> str:
    """The first k sentences joined by single spaces (all of them when there are fewer)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return " ".join(split_sentences(text)[:k])


# ---------------------------------------------------------------------------------------------- ROUGE

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 (0..1) of predictions against references, pair by pair."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)  # rouge-score logs "Using default tokenizer" per scorer
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:  # pragma: no cover - installed with the train extra
        raise ImportError("ROUGE needs the rouge-score package: pip install 'rlhflab[train]'") from err
    if not predictions:
        return {t: float("nan") for t in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # score(target, prediction)
        for t in ROUGE_TYPES:
            totals[t] += scores[t].fmeasure
    return {t: totals[t] / len(predictions) for t in ROUGE_TYPES}


# ---------------------------------------------------------------------------------------------- distributions


def summary_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, std (population), min, 10/25/50/75/90th percentiles, max."""
    if not values:
        return {"n": 0, "mean": None, "std": None}
    a = np.asarray(values, dtype=float)
    q = np.quantile(a, [0.1, 0.25, 0.5, 0.75, 0.9])
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p10": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p90": float(q[4]), "max": float(a.max())}


def mean_and_se(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample std / sqrt(n)); SE None for n < 2."""
    if not values:
        return None, None
    a = np.asarray(values, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else None
    return float(a.mean()), se


def mean_interval(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """The normal-approximation interval of the mean, mean ± z·s/√n (s with ddof=1); None for n < 2."""
    mean, se = mean_and_se(values)
    if mean is None or se is None:
        return None
    z = z_value(level)
    return [mean - z * se, mean + z * se]


def paired_difference(a: Sequence[float | None], b: Sequence[float | None],
                      level: float = 0.95) -> dict[str, float | int | list[float] | bool | None]:
    """mean(a_i − b_i) over the posts where both have a value, its interval mean ± z·s_d/√n, and `differ`: the
    interval excludes 0. With every difference equal (s_d = 0) the interval is that difference itself."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b) if x is not None and y is not None]
    if not d:
        return {"n": 0, "difference": None, "ci": None, "differ": None}
    mean, se = mean_and_se(d)
    assert mean is not None
    half = z_value(level) * (se or 0.0)
    ci = [mean - half, mean + half] if len(d) > 1 else None
    return {"n": len(d), "difference": mean, "ci": ci,
            "differ": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """points: (length, score). True where no other point is at most as long and at least as good, and strictly
    better in one of the two: the policies that length alone does not explain away."""
    return [not any(l2 <= l1 and s2 >= s1 and (l2 < l1 or s2 > s1) for j, (l2, s2) in enumerate(points) if j != i)
            for i, (l1, s1) in enumerate(points)]
