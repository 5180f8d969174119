"""Does the reward measure more than length? k-fold by post on batch13 for a single-head RM, the ODIN quality head
and a 3-member ensemble, each next to "the longer summary wins" on the same pairs (issue 16).

In fold k every RM trains on the other folds' comparisons and `rlhflab rm-eval` scores fold k's pairs; the folds'
dev pairs together are every batch13 pair once, so each arm is pooled over all of them (rm_more_labels.py's
definitions: accuracy, similar-length accuracy — lengths within 10% —, score–length Pearson correlation):

  single        heads=single, seed 1
  odin_quality  heads=odin, seed 1: scored by its quality head alone (the reward)
  ensemble      ensemble:mean of heads=single at seeds 1, 2, 3 (the single arm's RM is member 1)

    python benchmarks/rm_length.py [--folds 3] [--sft runs/sft/cpu] [overrides ...]
    python benchmarks/rm_length.py --profile tiny     # tiny random model: the plumbing

Results: benchmarks/results/rm_length.json (tiny: under --out only).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rm_more_labels import BATCH13, COMMANDS, CPU_RECIPE, REPO, pooled, rlhflab  # noqa: E402

OUT_JSON = REPO / "benchmarks" / "results" / "rm_length.json"
GOAL = ("the quality head's |correlation with length| <= 0.10 while its overall accuracy stays within 2 points of "
        "the single head's; similar-length accuracy >= 0.60")


def train(name: str, fold: int, extra: list[str], args: argparse.Namespace) -> Path:
    out = args.out / name / f"rm_fold{fold}"
    rlhflab("rm", "--config", f"configs/rm/{args.profile}.yaml", "--out", str(out), f"model={args.sft}",
            f"data.comparisons={BATCH13}", f"data.folds={args.folds}", f"data.fold={fold}", "eval_every=0",
            *extra, *args.overrides)
    return out


def score(arm: str, fold: int, model: str, args: argparse.Namespace) -> list[dict]:
    out = args.out / arm / f"eval_fold{fold}"
    rlhflab("rm-eval", "--config", f"configs/rm-eval/{args.profile}.yaml", "--out", str(out), f"model={model}",
            f"comparisons={BATCH13}", "split=dev", f"folds={args.folds}", f"fold={fold}", "duplicates=drop",
            "contradictions=majority", f"limit={args.limit}", "plot=false")
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]


def fold_rows(fold: int, args: argparse.Namespace) -> dict[str, list[dict]]:
    seed1 = train("single", fold, ["heads=single", "seed=1"], args)
    odin = train("odin", fold, ["heads=odin", "seed=1"], args)
    members = [seed1] + [train(f"single_seed{s}", fold, ["heads=single", f"seed={s}"], args) for s in (2, 3)]
    return {"single": score("single", fold, str(seed1), args),
            "odin_quality": score("odin_quality", fold, str(odin), args),
            "ensemble": score("ensemble", fold, "ensemble:mean:" + ",".join(map(str, members)), args)}


def arm_fields(p: dict) -> dict:
    return {"accuracy": p["accuracy"], "similar_length_accuracy": p["similar_length_accuracy"],
            "length_correlation": p["length_correlation"], "n_pairs": p["n_pairs"], "n_similar": p["n_similar_length"]}


def odin_heads(evals: Path, folds_done: int) -> dict:
    """All three of the ODIN RM's readings (quality, length, their sum) pooled over the folds from rm-eval's
    `per_head`: accuracies weighted by each fold's pairs (exact), the correlation as the folds' pair-weighted mean
    (a summary, not the pooled correlation the arms get)."""
    reports = [json.loads((evals / f"eval_fold{k}" / "report.json").read_text()) for k in range(folds_done)]
    if not reports or "per_head" not in reports[0]:
        return {}
    n = sum(r["n_pairs"] for r in reports)
    n_sim = sum(r["similar_length_n"] for r in reports)
    out = {}
    for head in reports[0]["per_head"]:
        heads = [(r, r["per_head"][head]) for r in reports]
        out[head] = {
            "accuracy": sum(h["accuracy"] * r["n_pairs"] for r, h in heads) / n,
            "similar_length_accuracy": (sum((h["similar_length_accuracy"] or 0) * r["similar_length_n"]
                                            for r, h in heads) / n_sim) if n_sim else None,
            "length_correlation_fold_mean": sum(h["score_length_correlation"] * r["n_pairs"] for r, h in heads) / n,
            "n_pairs": n}
    return out


def verdict(result: dict) -> dict:
    single, odin = result["single"], result["odin_quality"]
    decorrelated = abs(odin["length_correlation"] or 1.0) <= 0.10
    kept = odin["accuracy"] >= single["accuracy"] - 0.02
    similar = (odin["similar_length_accuracy"] or 0.0) >= 0.60
    return {"goal": GOAL, "goal_met": bool(decorrelated and kept and similar),
            "goal_parts": {"odin_abs_length_correlation_le_0.10": decorrelated,
                           "odin_accuracy_within_2_points": kept, "odin_similar_length_accuracy_ge_0.60": similar}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["tiny", "cpu", "gpu"], default="cpu")
    ap.add_argument("--sft", default=None, help="the SFT run the RMs start from (default: the embedded model)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "rm_length")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    ap.add_argument("overrides", nargs="*", help="extra `rlhflab rm` overrides for every RM")
    args = ap.parse_args()
    args.sft = args.sft or ("tiny" if args.profile == "tiny" else "smollm2-135m")
    args.limit = 96 if args.profile == "tiny" else "null"
    if args.profile == "tiny":
        args.overrides = [f"data.limit={args.limit}", "max_steps=2", "normalise_on=null", *args.overrides]
    elif args.profile == "cpu":
        args.overrides = [*CPU_RECIPE, *args.overrides]
    t0 = time.time()
    rows: dict[str, list[dict]] = {"single": [], "odin_quality": [], "ensemble": []}
    for fold in range(args.folds):  # the result is rewritten after every fold: an interrupted run says how far
        for arm, fold_arm_rows in fold_rows(fold, args).items():
            rows[arm] += fold_arm_rows
        write_result(rows, fold + 1, args, t0)
    return 0


def write_result(rows: dict[str, list[dict]], folds_done: int, args: argparse.Namespace, t0: float) -> None:
    pools = {arm: pooled(r) for arm, r in rows.items()}
    result = {arm: arm_fields(p) for arm, p in pools.items()}
    base = pools["single"]
    result["length_baseline"] = {"accuracy": base["length_baseline"],
                                 "similar_length_accuracy": base["similar_length_baseline"],
                                 "length_correlation": None, "n_pairs": base["n_pairs"],
                                 "n_similar": base["n_similar_length"]}
    result |= verdict(result)
    result["odin_heads"] = odin_heads(args.out / "odin_quality", folds_done)
    result |= {"folds": args.folds, "folds_completed": folds_done, "complete": folds_done == args.folds,
               "fold_by": "post (data.folds / rm-eval folds)", "profile": args.profile,
               "sft": args.sft, "overrides": args.overrides,
               "ensemble_members": "mean of heads=single at seeds 1, 2, 3",
               "length_unit": "characters of the stripped summary", "commands": COMMANDS,
               "wall_s": round(time.time() - t0),
               "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
               "note": args.note}
    target = OUT_JSON if args.profile != "tiny" else args.out / "rm_length.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({a: result[a] for a in ("single", "odin_quality", "ensemble", "length_baseline", "goal_met")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
