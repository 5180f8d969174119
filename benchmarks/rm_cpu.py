"""The real RM run on CPU: train with configs/rm/cpu.yaml, evaluate on its dev split, record the result.

    python benchmarks/rm_cpu.py                                   # baseline: embedded model, pairwise loss
    python benchmarks/rm_cpu.py --model runs/sft/cpu              # from the SFT run
    python benchmarks/rm_cpu.py --name confidence loss=confidence # an idea to raise dev accuracy
    python benchmarks/rm_cpu.py --name 2ep epochs=2 --report-only # re-read finished runs, no training

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
    args = parser.parse_args()
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
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    experiments = results.get("experiments", {})
    experiments[args.name] = exp
    best = max(experiments, key=lambda k: experiments[k]["dev_accuracy"])
    out = {**{k: v for k, v in experiments[best].items()}, "headline_experiment": best,
           "dev_set": "posts of batch13 with split_by_post bucket < 0.15 (seed 0); repeat policies of the run",
           "machine": machine(), "experiments": experiments}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: exp[k] for k in ("dev_accuracy", "length_baseline_accuracy", "similar_length_accuracy",
                                          "n_dev_pairs")}, indent=2))
    print(f"wrote {results_path} (headline: {best})")


if __name__ == "__main__":
    main()
