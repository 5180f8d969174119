"""`rlhflab rm-eval`: how well a reward model agrees with people, and whether it only measures length.

Writes `<out>/report.json` (and `<out>/reliability.png`):
  - accuracy overall, per confidence distance |c − 5|, per policy pair, per split and per batch;
  - ALWAYS next to it: `length_baseline_accuracy` — "the longer summary wins" on the same pairs (in batch13
    people chose the longer one 69–71% of the time, so an RM that only measures length looks good) — and
    `similar_length_accuracy`, the RM's accuracy on pairs whose lengths differ by at most 10%;
  - calibration: pairs binned by the RM's confidence in its own pick, max(σ(Δ), 1 − σ(Δ)) with Δ = r_0 − r_1,
    against how often that pick was the human's (a reliability diagram; the folded form does not depend on which
    summary is listed first), and the expected calibration error;
  - the worst errors: pairs the RM got wrong with the highest confidence (ids and summaries, never post text).

Best-of-N labels (a file of {"query","samples","best"} rows) get `kind: best_of_n`: `top1_accuracy` (how often the
RM's highest score is the labeler's pick) against `chance` (1/N) and `longest_wins_accuracy` (the longest
continuation as the pick), the softmax loss, and the same per-batch breakdown.

Length is counted in characters of the stripped summary (tokenizer-independent). Ties (equal scores, equal
lengths) count as half right.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlhflab.core.config import require, setting
from rlhflab.core.log import get_logger
from rlhflab.core.rundir import RunDir, atomic_write_text
from rlhflab.data.loaders import labels_kind, load_best_of_n, load_comparisons
from rlhflab.data.records import BestOfN, Comparison
from rlhflab.data.repeats import resolve_repeats
from rlhflab.data.splits import fold_by_post, split_by_post
from rlhflab.eval.models import load_scorer
from rlhflab.models.device import Bf16
from rlhflab.models.reward import length_head_scores

log = get_logger(__name__)


@dataclass
class RMEvalConfig:
    model: str = setting("runs/rm/cpu", "an `rlhflab rm` run directory (or a saved reward-model directory)")
    allow_partial: bool = setting(False, "accept an unfinished RM run (its latest checkpoint)")
    comparisons: str = setting(
        "../shared/data/comparisons/batch13.jsonl.gz",
        "the comparisons to score: OpenAI schema or plain pairs, local path or hub")
    split: Literal["all", "dev", "train"] = setting("all", "which pairs: all, or the RM stage's split (dev: held out, train: trained on)")
    dev_fraction: float = setting(0.15, "share of posts in the dev split (must match the RM run's data.dev_fraction)")
    split_seed: int = setting(0, "seed of the split by post (must match the RM run's data.split_seed for split=dev)")
    folds: int = setting(0, "k-fold by post, as the RM run's data.folds (0: dev_fraction decides the split)")
    fold: int = setting(0, "the dev fold, as the RM run's data.fold")
    # repeated labels of one pair: every row counts by default; set both as in the RM run to match its dev set
    duplicates: Literal["drop", "keep"] = setting("keep", "a pair labelled twice the same way: score every copy "
                                                  "(keep) or one (drop)")
    contradictions: Literal["majority", "drop", "keep"] = setting(
        "keep", "a pair labelled both ways: keep every label, drop the pair, or the majority answer")
    limit: int | None = setting(None, "use only the first N comparisons (None: all)")
    skip_bad: bool = setting(False, "skip malformed rows with a count instead of stopping at the first")
    batch_size: int = setting(16, "sequences per forward")
    bf16: Bf16 = setting(False, "bf16 autocast (weights stay fp32); auto: bf16 only where native")
    device: str = setting("auto", "auto (the first CUDA GPU if any, else the CPU) or a torch device: cpu, cuda:1")
    similar_length_tolerance: float = setting(
        0.10, "pairs count as similar-length when |len a − len b| / max(len a, len b) ≤ this (in characters)")
    calibration_bins: int = setting(5, "bins of the calibration table (predicted vs observed P(chosen))")
    n_worst: int = setting(20, "how many of the most confidently wrong pairs to list")
    plot: bool = setting(True, "write the PNG plots beside report.json")

    def __post_init__(self) -> None:
        require(self.folds == 0 or (self.folds >= 2 and 0 <= self.fold < self.folds), "fold",
                f"k-fold needs folds >= 2 and 0 <= fold < folds, got folds={self.folds}, fold={self.fold}")


PAIR_KEYS = ("index", "post_id", "r_chosen", "r_rejected", "margin", "correct", "length_correct", "similar_length",
             "confidence", "confidence_distance", "policy_pair", "split", "batch", "chosen", "rejected")


def text_length(text: str) -> int:
    return len(text.strip())


def similar_length(a: str, b: str, tolerance: float) -> bool:
    la, lb = text_length(a), text_length(b)
    return abs(la - lb) <= tolerance * max(la, lb, 1)


def length_baseline_correct(c: Comparison) -> float:
    """1 if the chosen summary is the longer one, 0 if shorter, 0.5 on a tie."""
    lc, lr = text_length(c.chosen.text), text_length(c.rejected.text)
    return 1.0 if lc > lr else 0.5 if lc == lr else 0.0


def rm_correct(margin: float) -> float:
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def group_accuracy(rows: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[str(r[key])].append(r)
    return {k: accuracy_block(v) for k, v in sorted(groups.items())}


def accuracy_block(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)
    if n == 0:
        return {"n": 0, "accuracy": None, "length_baseline_accuracy": None}
    return {"n": n, "accuracy": sum(r["correct"] for r in rows) / n,
            "length_baseline_accuracy": sum(r["length_correct"] for r in rows) / n}


def calibration(rows: list[dict[str, Any]], n_bins: int) -> dict[str, Any]:
    """Bins of the RM's confidence in its pick (0.5..1) -> observed accuracy of that pick; ECE."""
    edges = [0.5 + 0.5 * i / n_bins for i in range(n_bins + 1)]
    bins = []
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = [r for r in rows if lo <= r["pick_confidence"] < hi or (hi == 1.0 and r["pick_confidence"] == 1.0)]
        if inside:
            pred = sum(r["pick_confidence"] for r in inside) / len(inside)
            obs = sum(r["correct"] for r in inside) / len(inside)
            ece += len(inside) / len(rows) * abs(pred - obs)
        else:
            pred = obs = None
        bins.append({"lo": lo, "hi": hi, "n": len(inside), "mean_predicted": pred, "observed": obs})
    return {"bins": bins, "expected_calibration_error": ece if rows else None,
            "definition": "predicted = max(σ(r0 − r1), 1 − σ(r0 − r1)), the RM's probability that its pick is "
                          "the human's; observed = how often it was"}


def reliability_plot(cal: dict[str, Any], path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'rlhflab[train]'): no reliability plot")
        return False
    pts = [b for b in cal["bins"] if b["n"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0.5, 1.0], [0.5, 1.0], "--", color="grey", label="perfectly calibrated")
    ax.plot([b["mean_predicted"] for b in pts], [b["observed"] for b in pts], "o-", label="reward model")
    for b in pts:
        ax.annotate(str(b["n"]), (b["mean_predicted"], b["observed"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7)
    ax.set_xlim(0.45, 1.02)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("predicted P(RM's pick is the human's)")
    ax.set_ylabel("observed accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def select_split(rows: list[Comparison], cfg: RMEvalConfig) -> tuple[list[Comparison], dict[str, int]]:
    """The split's rows, with the repeat policies applied (and their counts)."""
    if cfg.split != "all":
        train, dev = (fold_by_post(rows, cfg.folds, cfg.fold, seed=cfg.split_seed) if cfg.folds else
                      split_by_post(rows, cfg.dev_fraction, seed=cfg.split_seed))
        rows = dev if cfg.split == "dev" else train
    return resolve_repeats(rows, cfg.duplicates, cfg.contradictions)


def evaluate(cfg: RMEvalConfig, out: str) -> dict:
    run = RunDir(out)
    if (done := run.open("rm-eval", cfg)) is not None:
        return done
    t_start = time.time()
    rm = load_scorer(cfg.model, cfg.device, cfg.allow_partial)
    if labels_kind(cfg.comparisons) == "best_of_n":
        return evaluate_best_of_n(cfg, run, rm, t_start)
    loaded = list(load_comparisons(cfg.comparisons, limit=cfg.limit, skip_bad=cfg.skip_bad))
    comparisons, repeat_counts = select_split(loaded, cfg)
    if not comparisons:
        raise ValueError(f"no comparisons to evaluate in {cfg.comparisons} (split={cfg.split})")
    log.info("rm-eval: %d pairs from %s (split %s)", len(comparisons), cfg.comparisons, cfg.split)

    # Score both summaries of every pair (each distinct (post, text) once).
    keys: dict[tuple[str, str], int] = {}
    posts, texts = [], []
    for c in comparisons:
        for s in c.summaries:
            k = (c.post.id, s.text)
            if k not in keys:
                keys[k] = len(texts)
                posts.append(c.post)
                texts.append(s.text)
    q_ids = [rm.encode_query(p) for p in posts]
    r_ids = [rm.encode_response(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(q_ids[i]) + len(r_ids[i]))
    scores_sorted = rm.score_ids([q_ids[i] for i in order], [r_ids[i] for i in order],
                                 batch_size=cfg.batch_size, bf16=cfg.bf16)
    scores = torch.empty(len(texts))
    scores[torch.tensor(order)] = scores_sorted
    length_scores = None
    if getattr(rm, "length_head", None) is not None:  # ODIN: the length head too, to report each head apart
        length_scores = torch.empty(len(texts))
        length_scores[torch.tensor(order)] = length_head_scores(
            rm, [q_ids[i] for i in order], [r_ids[i] for i in order], batch_size=cfg.batch_size, bf16=cfg.bf16)

    rows = []
    for i, c in enumerate(comparisons):
        s0, s1 = (float(scores[keys[(c.post.id, s.text)]]) for s in c.summaries)
        rc, rr = (s0, s1) if c.choice == 0 else (s1, s0)
        margin = rc - rr
        if length_scores is not None:
            lc, lr = (float(length_scores[keys[(c.post.id, x.text)]]) for x in (c.chosen, c.rejected))
        p0 = 1.0 / (1.0 + math.exp(-(s0 - s1)))
        rows.append({
            "index": i, "post_id": c.post.id, "r_chosen": rc, "r_rejected": rr, "margin": margin,
            "p_chosen": 1.0 / (1.0 + math.exp(-margin)), "pick_confidence": max(p0, 1.0 - p0),
            "correct": rm_correct(margin), "length_correct": length_baseline_correct(c),
            "similar_length": similar_length(c.chosen.text, c.rejected.text, cfg.similar_length_tolerance),
            "confidence": c.confidence, "confidence_distance": c.confidence_distance,
            "policy_pair": " vs ".join(sorted((c.summaries[0].policy or "?", c.summaries[1].policy or "?"))),
            "split": c.split or "?", "batch": c.batch or "?",
            "chosen": c.chosen.text, "rejected": c.rejected.text,
            **({"l_chosen": lc, "l_rejected": lr} if length_scores is not None else {}),
        })

    overall = accuracy_block(rows)
    similar = [r for r in rows if r["similar_length"]]
    cal = calibration(rows, cfg.calibration_bins)
    plot_path = run.path / "reliability.png"
    plotted = cfg.plot and reliability_plot(cal, plot_path, f"{cfg.model} on {len(rows)} pairs ({cfg.split})")
    worst = sorted((r for r in rows if r["correct"] < 1.0), key=lambda r: r["margin"])[: cfg.n_worst]
    report = {
        "model": cfg.model, "comparisons": cfg.comparisons, "split": cfg.split, "n_pairs": len(rows),
        "accuracy": overall["accuracy"],
        "length_baseline_accuracy": overall["length_baseline_accuracy"],
        "similar_length_accuracy": accuracy_block(similar)["accuracy"],
        "similar_length_n": len(similar),
        "similar_length_tolerance": cfg.similar_length_tolerance,
        "length_unit": "characters of the stripped summary",
        "loss": sum(-math.log(max(r["p_chosen"], 1e-12)) for r in rows) / len(rows),
        "mean_margin": sum(r["margin"] for r in rows) / len(rows),
        "mean_score_chosen": sum(r["r_chosen"] for r in rows) / len(rows),
        "mean_score_rejected": sum(r["r_rejected"] for r in rows) / len(rows),
        "score_length_correlation": _correlation(
            [r["r_chosen"] for r in rows] + [r["r_rejected"] for r in rows],
            [text_length(r["chosen"]) for r in rows] + [text_length(r["rejected"]) for r in rows]),
        "per_confidence": group_accuracy([r for r in rows if r["confidence_distance"] is not None],
                                         "confidence_distance"),
        "per_policy_pair": group_accuracy(rows, "policy_pair"),
        "per_split": group_accuracy(rows, "split"),
        "per_batch": group_accuracy(rows, "batch"),
        "calibration": cal,
        "reliability_plot": str(plot_path) if plotted else None,
        "worst_errors": [{k: r[k] for k in ("post_id", "confidence", "p_chosen", "r_chosen", "r_rejected",
                                            "chosen", "rejected")} for r in worst],
        "normalisation": rm.normalisation,
        "heads": getattr(rm, "heads", "single"),
        **({"per_head": per_head(rows)} if length_scores is not None else {}),
        "repeats": {"duplicates": cfg.duplicates, "contradictions": cfg.contradictions, **repeat_counts},
    }
    from rlhflab.core.rundir import atomic_write_json

    atomic_write_json(run.path / "report.json", report)
    # every pair's scores, for inspection and for combining RMs (e.g. an ensemble's mean margin)
    atomic_write_text(run.path / "pairs.jsonl", "".join(json.dumps({k: r[k] for k in PAIR_KEYS}) + "\n" for r in rows))
    summary = {"stage": "rm-eval", "wall_s": time.time() - t_start, "report": str(run.path / "report.json"),
               **{k: report[k] for k in ("n_pairs", "accuracy", "length_baseline_accuracy",
                                         "similar_length_accuracy", "similar_length_n")}}
    run.write_done(summary)
    log.info("rm-eval: accuracy %.3f (length baseline %.3f, similar-length %s on %d pairs)", report["accuracy"],
             report["length_baseline_accuracy"], report["similar_length_accuracy"], len(similar))
    return summary


def per_head(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """An ODIN RM's heads apart: quality (the reward), length, and their sum (what training fitted), each with
    accuracy, similar-length accuracy and score-length correlation."""
    heads = {"quality": lambda r, k: r[f"r_{k}"], "length": lambda r, k: r[f"l_{k}"],
             "sum": lambda r, k: r[f"r_{k}"] + r[f"l_{k}"]}
    out = {}
    for name, score in heads.items():
        def accuracy(subset: list[dict[str, Any]]) -> float | None:
            return (sum(rm_correct(score(r, "chosen") - score(r, "rejected")) for r in subset) / len(subset)
                    if subset else None)
        out[name] = {"accuracy": accuracy(rows), "similar_length_accuracy": accuracy([r for r in rows
                                                                                      if r["similar_length"]]),
                     "score_length_correlation": _correlation(
                         [score(r, "chosen") for r in rows] + [score(r, "rejected") for r in rows],
                         [text_length(r["chosen"]) for r in rows] + [text_length(r["rejected"]) for r in rows])}
    return out


def longest_index(b: BestOfN) -> list[int]:
    """The indices of the longest continuations (ties: all of them)."""
    lengths = [text_length(c.text) for c in b.samples]
    return [i for i, n in enumerate(lengths) if n == max(lengths)]


def top1_credit(winners: list[int], best: int) -> float:
    """1/len(winners) if the pick is among the tied winners, else 0 (a tie at the top shares the credit)."""
    return 1.0 / len(winners) if best in winners else 0.0


def evaluate_best_of_n(cfg: RMEvalConfig, run: RunDir, rm, t_start: float) -> dict:
    """Top-1 accuracy of the RM on best-of-N labels, against chance and against "the longest wins"."""
    labels = list(load_best_of_n(cfg.comparisons, limit=cfg.limit, skip_bad=cfg.skip_bad))
    if cfg.split != "all":
        train, dev = split_by_post(labels, cfg.dev_fraction, seed=cfg.split_seed)  # type: ignore[arg-type]
        labels = dev if cfg.split == "dev" else train
    if not labels:
        raise ValueError(f"no best-of-N labels to evaluate in {cfg.comparisons} (split={cfg.split})")
    k = len(labels[0].samples)
    q_ids = [rm.encode_query(b.post) for b in labels]
    r_ids = [rm.encode_response(c.text, c.eos) for b in labels for c in b.samples]
    scores = rm.score_groups(q_ids, r_ids, k, batch_size=cfg.batch_size, bf16=cfg.bf16)  # (m, k)
    rows = []
    for b, s in zip(labels, scores.tolist()):
        top = [i for i, v in enumerate(s) if v == max(s)]
        rows.append({"post_id": b.post.id, "best": b.best, "scores": s, "batch": b.batch or "?",
                     "correct": top1_credit(top, b.best), "length_correct": top1_credit(longest_index(b), b.best),
                     "loss": math.log(sum(math.exp(v - max(s)) for v in s)) + max(s) - s[b.best]})
    n = len(rows)
    report = {"model": cfg.model, "comparisons": cfg.comparisons, "split": cfg.split, "kind": "best_of_n",
              "n_labels": n, "n_pairs": n, "samples_per_label": k, "chance": 1.0 / k,
              "top1_accuracy": sum(r["correct"] for r in rows) / n,
              "longest_wins_accuracy": sum(r["length_correct"] for r in rows) / n,
              "loss": sum(r["loss"] for r in rows) / n, "per_batch": group_accuracy(rows, "batch"),
              "length_unit": "characters of the stripped continuation", "normalisation": rm.normalisation}
    report["accuracy"], report["length_baseline_accuracy"] = report["top1_accuracy"], report["longest_wins_accuracy"]
    from rlhflab.core.rundir import atomic_write_json

    atomic_write_json(run.path / "report.json", report)
    atomic_write_text(run.path / "labels.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    summary = {"stage": "rm-eval", "wall_s": time.time() - t_start, "report": str(run.path / "report.json"),
               **{k: report[k] for k in ("kind", "n_labels", "top1_accuracy", "chance", "longest_wins_accuracy")}}
    run.write_done(summary)
    log.info("rm-eval: top-1 %.3f on %d best-of-%d labels (chance %.3f, longest wins %.3f)",
             report["top1_accuracy"], n, k, report["chance"], report["longest_wins_accuracy"])
    return summary


def _correlation(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else None
