"""The real evaluation report on CPU: SFT, PPO, best-of-N, lead-3 and the human references on TL;DR eval posts,
and the TL;DR policies zero-shot on CNN/DM, judged by two reward models.

    python benchmarks/report_cpu.py                                      # defaults below, ~25 min on 2 cores
    python benchmarks/report_cpu.py --ppo-run runs/ppo/cpu-snap          # a PPO run with snapshots: KL curve
    python benchmarks/report_cpu.py --quick                              # 2 posts, 1 article, N=2: plumbing only

1. If `--best-of-n-run` is not finished, runs `rlhflab best-of-n` into it first (configs/best-of-n/cpu.yaml: the
   SFT policy, N=`--n` samples at T=0.7 for the first `--limit` eval posts, scored by the RM that PPO optimised,
   `no_eos_penalty=-1`, every candidate kept for the win-rate-vs-N curve). Re-running resumes it.
2. Writes the eval config (configs/eval/cpu.yaml with the runs and sizes given here) next to the eval run and
   runs `rlhflab eval` into runs/eval/<name> (re-running resumes; a finished run is only re-read).
3. Writes benchmarks/results/report_cpu.json — per policy `win_rate`, `win_rate_ci`,
   `length_controlled_win_rate`(`_ci`), `mean_tokens`, `rouge`, `kl`, and the same per judge; the transfer
   section; the curves; the exact commands, machine and versions — and copies the plots to
   benchmarks/results/report_cpu_<plot>.png. With --quick, both go to the eval run directory instead.

The first judge (`rm-ppo`) is the reward model that PPO and best-of-N optimised against: its verdicts favour them
by construction. The second (`rm-other`, another RM run nothing was optimised against) is the less biased one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import yaml
from _machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path("../shared/data")  # relative to the repository root, where every command runs
POLICY_KEYS = ("win_rate", "win_rate_ci", "length_controlled_win_rate", "length_controlled_win_rate_ci",
               "mean_tokens", "rouge", "kl", "kl_se", "eos_rate", "kind", "source")


def run(cmd: list[str], commands: list[str]) -> float:
    commands.append(shlex.join(cmd))
    print("+", shlex.join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.time() - t0


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "rouge-score", "numpy", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def policy_summary(r: dict) -> dict:
    out = {k: r.get(k) for k in POLICY_KEYS}
    out["by_judge"] = {j: {k: v.get(k) for k in ("n", "win_rate", "win_rate_ci", "length_controlled_win_rate",
                                                  "length_controlled_win_rate_ci", "mean_preference")}
                       | ({"mean_score": v["score"]["mean"], "mean_score_margin": v["mean_score_margin"]}
                          if "score" in v else {})
                       for j, v in r["by_judge"].items()}
    if "likert" in r:
        out["likert"] = r["likert"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", default="runs/sft/cpu", help="the SFT run (a policy, the KL reference, BoN's base)")
    parser.add_argument("--ppo-run", default="runs/ppo/cpu-main", help="the PPO run (its snapshots give the curve)")
    parser.add_argument("--rm", default="runs/rm/cpu-lr1e4-2ep-f24", help="the RM that PPO optimised (judge 1)")
    parser.add_argument("--rm-other", default="runs/rm/cpu-sft-q256", help="another RM run (judge 2); '' for none")
    parser.add_argument("--best-of-n-run", default=None, help="default: runs/bo/eval-cpu-n<N>-l<limit>")
    parser.add_argument("--rm-eval-runs", default="runs/rm-eval/cpu-lr1e4-2ep-f24,runs/rm-eval/cpu-sft-q256")
    parser.add_argument("--limit", type=int, default=48, help="TL;DR eval posts")
    parser.add_argument("--curve-limit", type=int, default=24, help="posts per KL-curve point")
    parser.add_argument("--transfer-limit", type=int, default=24, help="CNN/DM articles")
    parser.add_argument("--n", type=int, default=8, help="best-of-N's N")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--name", default=None, help="the eval run: runs/eval/<name> (default from the sizes)")
    parser.add_argument("--quick", action="store_true",
                        help="2 posts, 1 article, N=2, 8 new tokens: checks the plumbing in about a minute; "
                             "results go to the eval run directory, not benchmarks/results")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for `rlhflab eval`")
    args = parser.parse_args()
    if args.quick:
        args.limit, args.curve_limit, args.transfer_limit, args.n, args.max_new_tokens = 2, 2, 1, 2, 8
    tag = f"{Path(args.ppo_run).name}-l{args.limit}" + ("-quick" if args.quick else "")
    name = args.name or f"report-{tag}"
    bo_run = args.best_of_n_run or f"runs/bo/eval-cpu-n{args.n}-l{args.limit}" + ("-quick" if args.quick else "")
    out = REPO / "runs" / "eval" / name
    commands: list[str] = []
    walls: dict[str, float] = {}
    py = [sys.executable, "-m", "rlhflab"]

    if not (REPO / bo_run / "DONE.json").exists():
        walls["best_of_n_s"] = run([*py, "best-of-n", "--config", "configs/best-of-n/cpu.yaml", "--out", bo_run,
                                    f"model={args.sft}", f"reward={args.rm}", f"posts={SHARED / 'tldr/eval.jsonl.gz'}",
                                    f"limit={args.limit}", f"n={args.n}", f"max_new_tokens={args.max_new_tokens}",
                                    "no_eos_penalty=-1", "write_all=true"], commands)
    else:
        print(f"best-of-n: {bo_run} is finished; reusing it", flush=True)

    cfg = yaml.safe_load((REPO / "configs/eval/cpu.yaml").read_text())
    cfg["policies"] = [{"name": "sft", "model": args.sft}, {"name": "ppo", "model": args.ppo_run},
                       {"name": f"best-of-{args.n}", "samples": bo_run}, {"name": "lead3", "builtin": "lead3"},
                       {"name": "reference", "builtin": "reference"}]
    cfg["judges"][0]["spec"] = args.rm
    if args.rm_other:
        cfg["judges"][1]["spec"] = args.rm_other
    else:
        cfg["judges"] = cfg["judges"][:1]
    cfg.update(posts=str(SHARED / "tldr/eval.jsonl.gz"), limit=args.limit, curve_limit=args.curve_limit,
               max_new_tokens=args.max_new_tokens, kl_reference=args.sft, ppo_run=args.ppo_run, best_of_n_run=bo_run,
               rm_eval_runs=[r for r in args.rm_eval_runs.split(",") if r])
    cfg["transfer"].update(posts=str(SHARED / "cnndm/validation.jsonl.gz"), limit=args.transfer_limit)
    if args.quick:
        cfg["bootstrap"] = 100
    config_path = REPO / "runs" / "eval" / f"{name}.yaml"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text("# written by benchmarks/report_cpu.py\n" + yaml.safe_dump(cfg, sort_keys=False))
    walls["eval_s"] = run([*py, "eval", "--config", str(config_path.relative_to(REPO)), "--out",
                           str(out.relative_to(REPO)), *args.overrides], commands)

    rep = json.loads((out / "report.json").read_text())
    done = json.loads((out / "DONE.json").read_text())
    dest = out if args.quick else RESULTS
    plots = {}
    for plot, file in rep.get("plots", {}).items():
        target = dest / f"report_cpu_{plot}.png"
        if target.resolve() != (out / file).resolve():
            shutil.copyfile(out / file, target)
        plots[plot] = str(target.relative_to(REPO))
    tr = rep.get("transfer")
    result = {
        "what": "policies against the human TL;DR references (greedy summaries), judged by reward models; "
                "zero-shot transfer to CNN/DM with lead-3",
        "primary_judge": rep["primary_judge"],
        "judges": [{k: j.get(k) for k in ("name", "kind", "spec", "note", "length_slope")} for j in rep["judges"]],
        "caveat": "judge rm-ppo is the reward model PPO and best-of-N optimised against, so its win rates favour "
                  "them by construction; rm-other is a different RM run that nothing was optimised against",
        "posts": rep["posts"], "reference_mean_tokens": rep["reference_mean_tokens"],
        "definitions": rep["definitions"], "settings": rep["settings"],
        "policies": {k: policy_summary(v) for k, v in rep["policies"].items()},
        "transfer": ({"posts": tr["posts"], "reference_mean_tokens": tr["reference_mean_tokens"],
                      "policies": {k: policy_summary(v) for k, v in tr["policies"].items()}} if tr else None),
        "kl_curve": rep.get("kl_curve") and {k: rep["kl_curve"][k] for k in ("ppo_run", "reward", "n_posts",
                                                                             "n_snapshots", "points", "note")},
        "best_of_n": rep.get("best_of_n"),
        "rm_accuracy_vs_confidence": rep.get("rm_accuracy_vs_confidence"),
        "plots": plots,
        "report_html": str((out / "report.html").relative_to(REPO)),
        "eval_run": str(out.relative_to(REPO)),
        "best_of_n_run": bo_run,
        "wall_s": {**walls, "eval_run_total_s": done.get("wall_s")},
        "commands": [shlex.join([sys.executable, "benchmarks/report_cpu.py", *sys.argv[1:]])] + commands,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": None,
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "versions": versions(),
    }
    path = dest / ("report_cpu.json" if not args.quick else "report_cpu_quick.json")
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    for pname, r in result["policies"].items():
        print(f"  {pname:12s} win {r['win_rate']:.3f} {r['win_rate_ci']}  length-controlled "
              f"{r['length_controlled_win_rate']:.3f}  {r['mean_tokens']:.1f} tokens  KL {r['kl']}")


if __name__ == "__main__":
    main()
