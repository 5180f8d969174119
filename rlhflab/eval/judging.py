"""Every judge on every policy of one post set, and what the report says about it.

`judge_set` asks one judge about each policy's summaries against the human reference (`Verdicts`);
`summarise_judge` turns the verdicts into the report's numbers per policy (win rate with a Wilson interval,
the length-controlled win rate with a bootstrap interval over posts, the score distribution) and the judge's own
fit (`JudgeSummary`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhflab.data.records import Post
from rlhflab.eval import metrics
from rlhflab.eval.judges import Judge, Text, normalise_text

REFERENCE_KIND = "reference"  # the policy that is the human reference: a tie with itself by definition


def reference_text(post: Post) -> str:
    """The human reference as a judge sees it (CNN/DM highlights are one bullet a line: joined by spaces)."""
    text = post.reference or ""
    return " ".join(text.split()) if post.source == "cnndm" else text.strip()


def references(posts: Sequence[Post]) -> list[Text]:
    return [Text(reference_text(p)) for p in posts]


def judge_pairs(judge: Judge, posts: Sequence[Post], a: Sequence[Text], b: Sequence[Text]) -> list[float | None]:
    """P(a preferred) per pair; identical summaries are a tie (0.5) without asking the judge."""
    out: list[float | None] = [None] * len(posts)
    ask = []
    for i, (x, y) in enumerate(zip(a, b)):
        if normalise_text(x.text) == normalise_text(y.text):
            out[i] = 0.5
        else:
            ask.append(i)
    if ask:
        got = judge.prefer([posts[i] for i in ask], [a[i] for i in ask], [b[i] for i in ask])
        for i, v in zip(ask, got):
            out[i] = v
    return out


@dataclass
class Verdicts:
    """One judge on one post set."""

    prefs: dict[str, list[float | None]]  # policy -> P(its summary preferred to the reference) per post
    scores: dict[str, list[float]] | None  # policy -> the judge's score per post; None: the judge does not score
    reference_scores: list[float] | None  # the reference's score per post (scoring judges)


def judge_set(judge: Judge, posts: list[Post], refs: list[Text], texts: dict[str, list[Text]],
              progress: str) -> Verdicts:
    # Every summary of the set in one call first: a scoring judge (an RM) then runs each post's query once for
    # the reference and all the policies' summaries, and the calls below are answered from its cache.
    everything = [refs, *texts.values()]
    scoring = judge.scores([p for _ in everything for p in posts], [t for ts in everything for t in ts],
                           progress=progress) is not None
    prefs: dict[str, list[float | None]] = {}
    scores: dict[str, list[float]] = {}
    for name, ts in texts.items():
        prefs[name] = judge_pairs(judge, posts, ts, refs)
        if scoring:
            scores[name] = judge.scores(posts, ts, progress=name) or []
    return Verdicts(prefs, scores if scoring else None, judge.scores(posts, refs) if scoring else None)


@dataclass
class JudgeSummary:
    per_policy: dict[str, dict[str, Any]]  # policy -> the report's `by_judge` entry for this judge
    fit: dict[str, Any]  # the judge's block: kind, spec, note, the length slope, reference score


def pair(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


def win_counts(prefs: list[float | None], ci_level: float) -> dict[str, Any]:
    """n, wins, ties, losses, the win rate and its Wilson interval, the mean preference (no-verdicts left out)."""
    ps = [v for v in prefs if v is not None]
    outcomes = [metrics.win_outcome(v) for v in ps]
    return {"n": len(ps), "wins": sum(o == 1.0 for o in outcomes), "ties": sum(o == 0.5 for o in outcomes),
            "losses": sum(o == 0.0 for o in outcomes), "win_rate": metrics.win_rate(outcomes),
            "win_rate_ci": pair(metrics.wilson_interval(sum(outcomes), len(ps), ci_level)),
            "mean_preference": sum(ps) / len(ps) if ps else None}


@dataclass(frozen=True)
class LengthControl:
    rates: dict[str, float]  # policy -> σ(a_policy): the predicted win rate at equal length
    cis: dict[str, tuple[float, float]]  # policy -> bootstrap interval
    slope: float | None
    n_comparisons: int


def length_control(verdicts: Verdicts, kinds: dict[str, str], lengths: dict[str, list[int]], ref_len: list[int],
                   posts: list[Post], n_boot: int, level: float, seed: int) -> LengthControl:
    """The logistic regression P(policy preferred) = σ(a_policy + b·log(len policy / len reference)), fitted
    jointly over the policies (the reference left out), with a percentile bootstrap over posts."""
    ys, xs, groups, clusters = [], [], [], []
    for name, prefs in verdicts.prefs.items():
        if kinds[name] == REFERENCE_KIND:
            continue
        for i, p in enumerate(posts):
            if prefs[i] is not None:
                ys.append(metrics.win_outcome(prefs[i]))
                xs.append(metrics.log_length_ratio(lengths[name][i], ref_len[i]))
                groups.append(name)
                clusters.append(p.id)
    if not ys:
        return LengthControl({}, {}, None, 0)
    fit = metrics.length_controlled_win_rates(ys, xs, groups)
    cis = metrics.bootstrap_length_controlled(ys, xs, groups, clusters, n_boot=n_boot, level=level, seed=seed)
    return LengthControl(fit.rates, cis, fit.slope, len(ys))


def policy_entry(name: str, kind: str, verdicts: Verdicts, lc: LengthControl, ci_level: float) -> dict[str, Any]:
    """One policy's numbers under one judge."""
    r = win_counts(verdicts.prefs[name], ci_level)
    if kind == REFERENCE_KIND:
        r.update(win_rate_ci=[0.5, 0.5], length_controlled_win_rate=0.5, length_controlled_win_rate_ci=[0.5, 0.5],
                 note="the reference itself: a tie by definition")
    else:
        r["length_controlled_win_rate"] = lc.rates.get(name)
        r["length_controlled_win_rate_ci"] = pair(lc.cis.get(name))
    if verdicts.scores is not None and verdicts.reference_scores is not None:
        s, ref = verdicts.scores[name], verdicts.reference_scores
        r["score"] = metrics.summary_stats(s)
        r["mean_score_ci"] = metrics.mean_interval(s, ci_level)
        r["mean_score_margin"] = sum(a - b for a, b in zip(s, ref)) / len(s)
    else:
        r["preference_distribution"] = metrics.summary_stats([v for v in verdicts.prefs[name] if v is not None])
    return r


def policy_differences(verdicts: Verdicts, kinds: dict[str, str], ci_level: float) -> list[dict[str, Any]]:
    """Every two policies (the reference left out) on the same posts: the paired difference of their win
    outcomes against the reference and, for a scoring judge, of their scores, each with its interval and
    whether it excludes 0 (`differ`)."""
    names = [n for n in verdicts.prefs if kinds[n] != REFERENCE_KIND]
    wins = {n: [None if p is None else metrics.win_outcome(p) for p in verdicts.prefs[n]] for n in names}
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            w = metrics.paired_difference(wins[a], wins[b], ci_level)
            row = {"a": a, "b": b, "n": w["n"], "win_rate_difference": w["difference"],
                   "win_rate_difference_ci": w["ci"], "differ": w["differ"]}
            if verdicts.scores is not None:
                s = metrics.paired_difference(verdicts.scores[a], verdicts.scores[b], ci_level)
                row |= {"score_difference": s["difference"], "score_difference_ci": s["ci"],
                        "score_differ": s["differ"]}
            out.append(row)
    return out


def summarise_judge(judge: Judge, verdicts: Verdicts, kinds: dict[str, str], lc: LengthControl,
                    ci_level: float) -> JudgeSummary:
    per_policy = {name: policy_entry(name, kinds[name], verdicts, lc, ci_level) for name in verdicts.prefs}
    fit: dict[str, Any] = {"kind": judge.kind, "spec": judge.spec, "note": judge.note, "length_slope": lc.slope,
                           "n_comparisons": lc.n_comparisons,
                           "differences": policy_differences(verdicts, kinds, ci_level)}
    if verdicts.reference_scores is not None:
        fit["reference_score"] = metrics.summary_stats(verdicts.reference_scores)
        fit["reference_score_ci"] = metrics.mean_interval(verdicts.reference_scores, ci_level)
    return JudgeSummary(per_policy, fit)


def pareto_view(policies: dict[str, dict[str, Any]], judge: str) -> dict[str, Any]:
    """Every policy (the reference included) as a point (mean tokens, the judge's mean score — its win rate for a
    judge that does not score), its length-controlled win rate beside it, and whether it is on the Pareto front:
    no policy is at most as long and at least as good. A point off the front is explained by length."""
    scored = all(r["by_judge"][judge].get("score") for r in policies.values())
    points = []
    for name, r in policies.items():
        j = r["by_judge"][judge]
        y, y_ci = ((j["score"]["mean"], j.get("mean_score_ci")) if scored else (j["win_rate"], j["win_rate_ci"]))
        points.append({"policy": name, "kind": r["kind"], "mean_tokens": r["mean_tokens"], "y": y, "y_ci": y_ci,
                       "length_controlled_win_rate": j["length_controlled_win_rate"],
                       "length_controlled_win_rate_ci": j["length_controlled_win_rate_ci"]})
    valid = [p for p in points if p["y"] is not None]
    for p, front in zip(valid, metrics.pareto_front([(p["mean_tokens"], p["y"]) for p in valid])):
        p["on_front"] = front
    return {"y": "mean score" if scored else "win rate against the reference", "points": points}
