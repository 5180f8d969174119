"""The real RM run on CPU: train with configs/rm/cpu.yaml, evaluate on its dev split, record the result.

    python benchmarks/rm_cpu.py                                   # baseline: embedded model, pairwise loss
    python benchmarks/rm_cpu.py --model runs/sft/cpu              # from the SFT run
    python benchmarks/rm_cpu.py --name confidence loss=confidence # an idea to raise dev accuracy
    python benchmarks/rm_cpu.py --name 2ep epochs=2 --report-only # re-read finished runs, no training
    python benchmarks/rm_cpu.py --ensemble 2ep,confidence          # combine finished experiments' dev margins

Each named experiment trains into runs/rm/cpu-<name> and evaluates into runs/rm-eval/cpu-<name> (re-running resumes
an interrupted run; a finished one is only re-read). benchmarks/results/rm_cpu.json keeps every experiment under
"experiments" and repeats the one with the best dev accuracy at the top level: `dev_accuracy` (the RM on the dev
pairs), `length_baseline_accuracy` ("the longer summary wins" on the same pairs), `similar_length_accuracy` (the RM
on dev pairs whose lengths differ by ≤10%), `per_confidence`, and the exact commands.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from _machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "rm_cpu.json"
SHARED = REPO.parent / "shared" / "data"


def run(cmd: list[str]) -> None:
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def machine() -> dict:
    cpu = cpu_model()
    import os

    versions = {}
    for name in ("torch", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": None, "python": platform.python_version(), **versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="baseline", help="experiment name (run dirs and the results key)")
    parser.add_argument("--model", default=None, help="backbone: an SFT run directory (default: the profile's)")
    parser.add_argument("--report-only", action="store_true", help="do not train or evaluate; re-read the runs")
    parser.add_argument("--results", default=str(RESULTS), help="the results JSON to update")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for `rlhflab rm`")
    parser.add_argument("--ensemble", default=None, help="comma-separated finished experiments to combine (no "
                        "training): mean of their standardised dev margins")
    args = parser.parse_args()
    if args.ensemble:
        return ensemble(args.ensemble.split(","), Path(args.results))
    if not (SHARED / "comparisons" / "batch13.jsonl.gz").exists():
        sys.exit(f"real data not found at {SHARED} (the shared/ folder must sit beside the repository)")

    rm_dir, eval_dir = f"runs/rm/cpu-{args.name}", f"runs/rm-eval/cpu-{args.name}"
    overrides = ([f"model={args.model}"] if args.model else []) + list(args.overrides)
    rm_cmd = [sys.executable, "-m", "rlhflab", "rm", "--config", "configs/rm/cpu.yaml", "--out", rm_dir, *overrides]
    # rm-eval uses the RM run's own split and repeat settings, so it scores exactly the run's dev pairs
    shared = ("data.limit", "data.dev_fraction", "data.split_seed", "data.duplicates", "data.contradictions")
    split_keys = [o for o in overrides if o.split("=", 1)[0] in shared]
    eval_cmd = [sys.executable, "-m", "rlhflab", "rm-eval", "--config", "configs/rm-eval/cpu.yaml", "--out",
                eval_dir, f"model={rm_dir}", *[o.removeprefix("data.") for o in split_keys]]
    if not args.report_only:
        run(rm_cmd)
        run(eval_cmd)

    done = json.loads((REPO / rm_dir / "DONE.json").read_text())
    report = json.loads((REPO / eval_dir / "report.json").read_text())
    metrics = [json.loads(line) for line in (REPO / rm_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = sorted(r["train/pairs_per_s"] for r in metrics if "train/pairs_per_s" in r)
    toks = sorted(r["train/tokens_per_s"] for r in metrics if "train/tokens_per_s" in r)
    exp = {
        "dev_accuracy": report["accuracy"],
        "length_baseline_accuracy": report["length_baseline_accuracy"],
        "similar_length_accuracy": report["similar_length_accuracy"],
        "similar_length_n": report["similar_length_n"],
        "beats_length_baseline": report["accuracy"] > report["length_baseline_accuracy"],
        "per_confidence": report["per_confidence"],
        "n_dev_pairs": report["n_pairs"],
        "dev_accuracy_before_training": done.get("dev_accuracy_before"),
        "dev_accuracy_curve": [{"step": r["step"], "accuracy": r["eval/accuracy"]} for r in metrics
                               if "eval/accuracy" in r],
        "expected_calibration_error": report["calibration"]["expected_calibration_error"],
        "score_length_correlation": report["score_length_correlation"],
        "train_pairs": done["train_pairs"], "steps": done["step"], "wall_s": done["wall_s"],
        "median_train_pairs_per_s": speeds[len(speeds) // 2] if speeds else None,
        "median_train_tokens_per_s": toks[len(toks) // 2] if toks else None,
        "data_repeats": done.get("data"), "normalisation": done.get("normalisation"),
        "overrides": overrides,
        "command": f"python benchmarks/rm_cpu.py --name {args.name}"
                   + (f" --model {args.model}" if args.model else "")
                   + "".join(f" {shlex.quote(o)}" for o in args.overrides),
        "commands": [shlex.join(["rlhflab", *rm_cmd[3:]]), shlex.join(["rlhflab", *eval_cmd[3:]])],
        "run_dirs": {"rm": rm_dir, "rm_eval": eval_dir},
    }
    record(Path(args.results), args.name, exp)


def record(results_path: Path, name: str, exp: dict) -> None:
    """Add one experiment to the results file; the best dev accuracy becomes the headline."""
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    experiments = results.get("experiments", {})
    experiments[name] = exp
    best = max(experiments, key=lambda k: experiments[k]["dev_accuracy"])
    out = {**{k: v for k, v in experiments[best].items()}, "headline_experiment": best,
           "dev_set": "posts of batch13 with split_by_post bucket < 0.15 (seed 0); repeat policies of the run",
           "machine": machine(), "experiments": experiments}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: exp[k] for k in ("dev_accuracy", "length_baseline_accuracy", "similar_length_accuracy",
                                          "n_dev_pairs")}, indent=2))
    print(f"wrote {results_path} (headline: {best})")


def ensemble(names: list[str], results_path: Path) -> None:
    """An ensemble of finished experiments: each RM's dev margins divided by their standard deviation (so every
    RM weighs the same), averaged; the ensemble prefers the chosen summary when the mean margin is positive."""
    tables = []
    for name in names:
        path = REPO / f"runs/rm-eval/cpu-{name}/pairs.jsonl"
        if not path.exists():
            sys.exit(f"{path} missing: re-run `python benchmarks/rm_cpu.py --name {name} ...` (rm-eval writes it)")
        tables.append([json.loads(line) for line in path.read_text().splitlines()])
    ident = [[(r["post_id"], r["chosen"], r["rejected"]) for r in t] for t in tables]
    if any(i != ident[0] for i in ident):
        sys.exit("the experiments were evaluated on different dev pairs; an ensemble needs the same split")
    stds = [statistics.pstdev(r["margin"] for r in t) or 1.0 for t in tables]
    rows = [{**group[0], "margin": sum(r["margin"] / sd for r, sd in zip(group, stds)) / len(group)}
            for group in zip(*tables)]

    def acc(rs: list[dict]) -> float | None:
        return sum((r["margin"] > 0) + 0.5 * (r["margin"] == 0) for r in rs) / len(rs) if rs else None

    similar = [r for r in rows if r["similar_length"]]
    per_conf: dict[str, dict] = {}
    for d in sorted({r["confidence_distance"] for r in rows if r["confidence_distance"] is not None}):
        group = [r for r in rows if r["confidence_distance"] == d]
        per_conf[str(int(d))] = {"n": len(group), "accuracy": acc(group),
                                 "length_baseline_accuracy": sum(r["length_correct"] for r in group) / len(group)}
    length_acc = sum(r["length_correct"] for r in rows) / len(rows)
    exp = {"dev_accuracy": acc(rows), "length_baseline_accuracy": length_acc,
           "similar_length_accuracy": acc(similar), "similar_length_n": len(similar),
           "beats_length_baseline": acc(rows) > length_acc, "per_confidence": per_conf, "n_dev_pairs": len(rows),
           "members": names, "member_margin_std": stds,
           "command": "python benchmarks/rm_cpu.py --ensemble " + ",".join(names)}
    record(results_path, "ensemble-" + "+".join(names), exp)


if __name__ == "__main__":
    main()
