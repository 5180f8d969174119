"""Do 8,000 human comparisons that lost their posts make the reward model better on the data that has posts?

k-fold cross-validation by post on batch13 (`data.folds`, the same folds for every arm): in fold k the RM trains on
the other folds' comparisons — alone (`batch13_only`), after a pass over the post-less pairs (`postless_first`),
or with them shuffled in at half weight (`postless_mixed`) — and `rlhflab rm-eval` scores fold k's pairs. The
folds' dev pairs together are every batch13 pair once, so each arm's numbers are pooled over all of them:

  accuracy                 the RM picks the human's choice
  similar_length_accuracy  the same on pairs whose lengths differ by at most 10% (where "longer wins" is a coin)
  length_correlation       Pearson correlation of score and summary length (characters), over every summary
  length_baseline          "the longer summary wins" on the same pairs (the number to beat)

    python benchmarks/rm_more_labels.py [--folds 3] [--batch13-from runs/rm_length/single]
    python benchmarks/rm_more_labels.py --profile tiny     # tiny random model, 96 rows, 3 folds: the plumbing

The cpu profile trains every RM with rm_length.py's recipe (CPU_RECIPE: 28 of 30 layers frozen, 192-token queries,
one epoch over the comparisons) on the same folds, so `batch13_only` is rm_length.py's `single` arm:
`--batch13-from` links those finished runs instead of training them again.

Every step is an ordinary `rlhflab` command (printed, skipped when its run is done, so an interrupted benchmark
resumes). The cpu and gpu profiles write benchmarks/results/rm_more_labels.json; tiny writes under --out only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH13 = "../shared/data/comparisons/batch13.jsonl.gz"
POSTLESS = "../shared/data/comparisons/train_no_posts.jsonl.gz"
OUT_JSON = REPO / "benchmarks" / "results" / "rm_more_labels.json"
ARMS = {  # arm -> the overrides that make it
    "batch13_only": [],
    "postless_first": [f"data.postless={POSTLESS}", "data.postless_schedule=first", "data.postless_epochs=1"],
    "postless_mixed": [f"data.postless={POSTLESS}", "data.postless_schedule=mixed", "data.postless_weight=0.5"],
}
# the cheap recipe that fits the k folds' RMs on 2 cores (rm_length.py uses it too, so the two compare)
CPU_RECIPE = ["freeze_layers=28", "data.max_query_tokens=192", "optim.lr=1e-4", "epochs=1", "normalise_on=null",
              "eval_batch_size=32"]
GOAL = ("the best variant's similar-length accuracy >= 0.60 and its overall accuracy >= 3 points above "
        "batch13_only (pooled over the folds)")
COMMANDS: list[str] = []


def rlhflab(*args: str) -> None:
    COMMANDS.append(shlex.join(["rlhflab", *args]))
    print("+ " + COMMANDS[-1], flush=True)
    subprocess.run([sys.executable, "-m", "rlhflab", *args], cwd=REPO, check=True)


def run_fold(arm: str, fold: int, args: argparse.Namespace, out: Path) -> list[dict]:
    """Train the arm's RM without fold `fold`, score fold `fold`; returns rm-eval's per-pair rows."""
    rm_dir, eval_dir = out / arm / f"rm_fold{fold}", out / arm / f"eval_fold{fold}"
    extra = list(ARMS[arm])
    if args.profile == "tiny" and extra:  # a few post-less pairs: the tiny run is about plumbing, not numbers
        extra.append("data.postless_limit=64")
    rlhflab("rm", "--config", f"configs/rm/{args.profile}.yaml", "--out", str(rm_dir), f"model={args.sft}",
            f"data.comparisons={BATCH13}", f"data.folds={args.folds}", f"data.fold={fold}", "eval_every=0",
            *extra, *args.overrides)
    rlhflab("rm-eval", "--config", f"configs/rm-eval/{args.profile}.yaml", "--out", str(eval_dir),
            f"model={rm_dir}", f"comparisons={BATCH13}", "split=dev", f"folds={args.folds}", f"fold={fold}",
            "duplicates=drop", "contradictions=majority", f"limit={args.limit}", "plot=false")
    return [json.loads(line) for line in (eval_dir / "pairs.jsonl").read_text().splitlines()]


def pooled(rows: list[dict]) -> dict:
    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    similar = [r for r in rows if r["similar_length"]]
    scores = [r["r_chosen"] for r in rows] + [r["r_rejected"] for r in rows]
    lengths = [len(r["chosen"].strip()) for r in rows] + [len(r["rejected"].strip()) for r in rows]
    return {"accuracy": mean([float(r["correct"]) for r in rows]),
            "similar_length_accuracy": mean([float(r["correct"]) for r in similar]),
            "length_correlation": correlation(scores, lengths),
            "length_baseline": mean([float(r["length_correct"]) for r in rows]),
            "similar_length_baseline": mean([float(r["length_correct"]) for r in similar]),
            "n_pairs": len(rows), "n_similar_length": len(similar)}


def correlation(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / (sx * sy) if sx and sy else None


def verdict(result: dict) -> dict:
    base = result["batch13_only"]
    variants = {a: result[a] for a in ARMS if a != "batch13_only"}
    best = max(variants, key=lambda a: (variants[a]["accuracy"], variants[a]["similar_length_accuracy"] or 0))
    v = variants[best]
    gain = v["accuracy"] - base["accuracy"]
    return {"best_variant": best, "best_accuracy_gain_points": round(100 * gain, 2),
            "goal": GOAL, "goal_met": bool((v["similar_length_accuracy"] or 0) >= 0.60 and gain >= 0.03)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=["tiny", "cpu", "gpu"], default="cpu")
    ap.add_argument("--sft", default=None, help="the SFT run the RMs start from (tiny: the tiny model)")
    ap.add_argument("--folds", type=int, default=None, help="k of the k-fold by post (default 3, as rm_length.py)")
    ap.add_argument("--batch13-from", type=Path, default=None,
                    help="rm_length.py's single-arm runs (DIR/rm_fold<k>): batch13_only reuses them")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated, from " + ", ".join(ARMS))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "rm_more_labels")
    ap.add_argument("--note", default="", help="what else ran on the machine meanwhile")
    ap.add_argument("overrides", nargs="*", help="extra `rlhflab rm` overrides for every arm, e.g. epochs=2")
    args = ap.parse_args()
    args.folds = args.folds or 3
    args.sft = args.sft or ("tiny" if args.profile == "tiny" else "smollm2-135m")
    args.limit = 96 if args.profile == "tiny" else "null"  # rm-eval must see the rows the RMs were split from
    if args.profile == "tiny":
        args.overrides = [f"data.limit={args.limit}", "max_steps=2", "normalise_on=null", *args.overrides]
    elif args.profile == "cpu":
        args.overrides = [*CPU_RECIPE, *args.overrides]
    arms = args.arms.split(",")
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or "batch13_only" not in arms:
        ap.error(f"--arms: {', '.join(unknown) or 'batch13_only is required (the baseline)'}")
    t0 = time.time()
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    for fold in range(args.folds):  # fold by fold, the result rewritten after each: an interrupted run says how far
        if args.batch13_from:
            link_finished(args.batch13_from / f"rm_fold{fold}", args.out / "batch13_only" / f"rm_fold{fold}")
        for arm in arms:
            rows[arm] += run_fold(arm, fold, args, args.out)
        write_result(rows, fold + 1, args, t0)
    return 0


def link_finished(source: Path, target: Path) -> None:
    """Use a finished RM run (same recipe, same fold) as this arm's: `rlhflab rm` then skips it as done."""
    if (source / "DONE.json").is_file() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve(), target_is_directory=True)


def write_result(rows: dict[str, list[dict]], folds_done: int, args: argparse.Namespace, t0: float) -> None:
    arms = list(rows)
    result: dict = {arm: pooled(r) for arm, r in rows.items()}
    result |= verdict(result) if len(arms) > 1 else {}
    result |= {"folds": args.folds, "folds_completed": folds_done, "complete": folds_done == args.folds,
               "fold_by": "post (data.folds / rm-eval folds: the post-id hash split_by_post uses)",
               "arms": {a: ARMS[a] for a in arms}, "profile": args.profile, "sft": args.sft,
               "overrides": args.overrides, "commands": COMMANDS,
               "batch13_from": str(args.batch13_from) if args.batch13_from else None,
               "wall_s": round(time.time() - t0),
               "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
               "note": args.note}
    target = OUT_JSON if args.profile != "tiny" else args.out / "rm_more_labels.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({a: result[a] for a in arms} | {k: result.get(k) for k in ("best_variant", "goal_met")},
                     indent=2))


if __name__ == "__main__":
    sys.exit(main())
